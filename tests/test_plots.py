"""Plots from real run directories: the committed example runs, copied, reported and
overlaid (no training: their rows are real results of real CompressAI models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from PIL import Image

from qbench.cli import main
from qbench.registry import QbenchError
from qbench.report import write_report
from qbench.report.overlay import overlay, read_run
from qbench.report.plots import LEGEND_PT, rd_figure, schedule_figure, variable_rate_figure
from qbench.report.tables import (
    BITSTREAM,
    DISTORTION,
    LIKELIHOOD,
    USABLE,
    load_results,
    rd_keys,
    rd_points,
)
from qbench.report.variable_rate import methods

from .test_paired import by_hand

RESULTS = Path(__file__).resolve().parents[1] / "results"
LIKELIHOOD_AXIS = "rate [bpp, likelihood estimate]"
BITSTREAM_AXIS = "rate [bpp, bitstream]"


def copy_run(name: str, tmp_path: Path, as_name: str | None = None) -> Path:
    """A committed run directory copied under ``tmp_path`` (its plots and report removed)."""
    dst = tmp_path / (as_name or name)
    shutil.copytree(RESULTS / name, dst, ignore=shutil.ignore_patterns("*.png", "report.md"))
    return dst


def test_report_of_a_copied_run_draws_the_schedule_as_a_grid(tmp_path):
    run = copy_run("quick", tmp_path)
    report = write_report(run)
    names = {p.name for p in report.plots}
    assert names == {"rd_mbt2018-mean_embedded.png", "bd_mbt2018-mean_embedded.png", "schedule.png"}
    text = (run / "report.md").read_text()
    assert all(f"]({n})" in text for n in names)
    # the saved grid: about 11 in wide at 120 dpi, a block, not a strip (it was 5.6 : 1)
    height, width = mpimg.imread(run / "schedule.png").shape[:2]
    assert 10 * 120 <= width <= 12 * 120 and 1.2 <= width / height <= 2.4, (width, height)
    # the figure: a panel per statistic on two rows, one shared progress axis, a legend cell
    h = pd.read_csv(run / "schedule.csv")
    stats = [c for c in h.columns if f"{c}_exact" in h.columns]
    fig = schedule_figure(h)
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == stats and len(stats) == 6
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2
    assert all(ax.get_shared_x_axes().joined(panels[0], ax) for ax in panels)
    assert {ax.get_xlabel() for ax in panels} == {"training progress t", ""}
    legends = [leg for ax in fig.axes if not ax.axison for leg in [ax.get_legend(), *ax.artists]]
    texts = [t for leg in legends if leg is not None for t in leg.get_texts()]
    assert {t.get_text() for t in texts} >= {"noise", "ste", "mixed", "sua", "95 % interval"}
    assert min(t.get_fontsize() for t in texts) >= 8 and LEGEND_PT >= 8
    plt.close(fig)


def test_every_quantizer_of_the_schedule_is_in_its_legend(tmp_path):
    # stanh-interp was trained at lambdas between the others' only; it has its colour too
    h = pd.read_csv(RESULTS / "stanh-vr" / "schedule.csv")
    fig = schedule_figure(h)
    key = next(ax for ax in fig.axes if not ax.axison and ax.get_legend() is not None)
    shown = {t.get_text() for leg in [key.get_legend(), *key.artists] for t in leg.get_texts()}
    assert set(h["quantizer"]) <= shown
    plt.close(fig)


def test_rate_axes_say_which_rate_they_carry():
    ok = load_results(RESULTS / "stanh-vr")
    ok = ok[ok["status"].isin(USABLE)]
    keys = rd_keys(ok)
    assert "interp_weight" in keys  # the run has blends
    rd = rd_points(ok.assign(interp_weight=ok["interp_weight"].fillna(-1.0)), keys)
    grp = rd[rd["dataset"] == "kodak"]
    kodak = ok[ok["dataset"] == "kodak"]
    for rate, axis, other, title in (
        (BITSTREAM, BITSTREAM_AXIS, LIKELIHOOD, "t (rate: bitstream)"),  # the report's default
        (LIKELIHOOD, LIKELIHOOD_AXIS, BITSTREAM, "t (rate: likelihood estimate)"),
    ):
        fig = rd_figure(grp, "t", rate=rate)
        ax = fig.axes[0]
        assert ax.get_xlabel() == axis and ax.get_title() == title
        # and it is that rate that is drawn, not the other one
        drawn = {round(x, 6) for line in ax.get_lines() for x in line.get_xdata()}
        assert drawn >= {round(x, 6) for x in grp[rate]}
        assert not drawn >= {round(x, 6) for x in grp[other]}
        plt.close(fig)
        fig = variable_rate_figure(kodak, methods(kodak), "noise", "t", rate)
        assert fig.axes[0].get_xlabel() == axis
        plt.close(fig)


def test_plot_overlays_two_runs_one_png_per_backbone_and_dataset(tmp_path, capsys):
    a, b = copy_run("quick", tmp_path), copy_run("stanh-vr", tmp_path)
    out = tmp_path / "overlays"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["overlay_mbt2018-mean_embedded.png", "overlay_mbt2018-mean_kodak.png"]
    assert all(mpimg.imread(out / n).shape[1] > 600 for n in pngs) and str(out) in printed
    figures = {f.dataset: f for f in overlay([a, b], tmp_path / "again")}
    both = figures["embedded"]
    assert both.runs == ["quick", "stanh-vr"] and both.xlabel == BITSTREAM_AXIS
    assert {"quick: noise", "quick: sua", "stanh-vr: noise", "stanh-vr: stanh"} <= set(both.labels)
    assert figures["kodak"].runs == ["stanh-vr"]  # only one run has Kodak
    # the points are the runs' bitstream rates, mean over seeds
    run = read_run(b, "stanh-vr", dataset="kodak")
    pts = run.points(BITSTREAM)
    rows = pd.read_csv(b / "results.csv")
    rows = rows[rows["dataset"] == "kodak"]
    noise = rows[rows["quantizer"] == "noise"].groupby("lambda")[BITSTREAM].mean()
    mine = pts[pts["quantizer"] == "noise"].set_index("lambda")[BITSTREAM]
    assert mine.sort_index().tolist() == pytest.approx(noise.sort_index().tolist())
    assert {f"{BITSTREAM}_std", DISTORTION} <= set(pts.columns)


def test_plot_one_figure_to_a_file_and_the_filters(tmp_path, capsys):
    a, b = copy_run("quick", tmp_path), copy_run("stanh-vr", tmp_path)
    target = tmp_path / "fig.png"
    assert main(["plot", str(a), str(b), "--out", str(target)]) == 2
    assert "give a folder" in capsys.readouterr().err and not target.exists()
    assert main(["plot", str(a), str(b), "--out", str(target), "--dataset", "embedded"]) == 0
    assert target.exists()
    assert main(["plot", str(a), "--dataset", "kodak", "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and "'kodak'" in err and "embedded" in err


def test_plot_never_mixes_bitstream_and_likelihood_rates(tmp_path, capsys):
    coded = copy_run("quick", tmp_path)
    estimated = copy_run("quick", tmp_path, "estimated")  # as if bpp_bitstream was not evaluated
    rows = pd.read_csv(estimated / "results.csv")
    rows.drop(columns=[BITSTREAM]).to_csv(estimated / "results.csv", index=False)
    out = tmp_path / "o"
    assert main(["plot", str(coded), str(estimated), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "quick" in err and "estimated" in err and "--rate likelihood" in err
    assert not out.exists()  # refused before anything was written
    assert main(["plot", str(coded), str(estimated), "--rate", "bitstream", "--out", str(out)]) == 2
    assert "estimated evaluated no bpp_bitstream" in capsys.readouterr().err
    [fig] = overlay([coded, estimated], out, rate="likelihood")
    assert fig.xlabel == LIKELIHOOD_AXIS and fig.runs == ["quick", "estimated"]
    [alone] = overlay([estimated], tmp_path / "alone")  # no run has the bitstream: likelihood
    assert alone.xlabel == LIKELIHOOD_AXIS


def test_plot_bad_input_names_the_path_exit_2(tmp_path, capsys):
    good = copy_run("quick", tmp_path)
    failed = copy_run("quick", tmp_path, "failed")
    rows = pd.read_csv(failed / "results.csv")
    rows.assign(status="failed").to_csv(failed / "results.csv", index=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad, why in (
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "file.txt", "not a folder"),
        (tmp_path / "empty", "no results.csv"),
        (failed, "no finished job"),
    ):
        assert main(["plot", str(good), str(bad), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"{bad}: " in err and why in err, err
    assert main(["plot", str(good), str(good)]) == 2
    assert "given twice" in capsys.readouterr().err


def drawn_on(png: Path) -> str:
    """What a written plot says of its axes (the text :func:`qbench.report.plots.save` keeps)."""
    return Image.open(png).text["Description"] + " | " + Image.open(png).text["Title"]


def test_report_rate_switches_every_axis_and_table(tmp_path):
    run = copy_run("stanh-vr", tmp_path)
    report = write_report(run)  # the default: the real bitstream
    assert report.rate == BITSTREAM and {r["rate"] for r in report.bd_rows} == {"bitstream"}
    rd = next(p for p in report.plots if p.name == "rd_mbt2018-mean_kodak.png")
    vr = next(p for p in report.plots if p.name == "vr_mbt2018-mean_kodak.png")
    bd = next(p for p in report.plots if p.name == "bd_mbt2018-mean_kodak.png")
    for png in (rd, vr):
        assert f"x: {BITSTREAM_AXIS}" in drawn_on(png) and "(rate: bitstream)" in drawn_on(png)
    assert "(rate: bitstream; lower is better)" in drawn_on(bd)
    text = (run / "report.md").read_text()
    assert "## BD-rate against the anchor (rate: bitstream, `bpp_bitstream`)" in text
    assert "bd_rate_bitstream_%" in text and "bd_rate_likelihood_%" in text
    coded = {(r["dataset"], r["quantizer"]): r["bd_rate_%"] for r in report.bd_rows}
    # [report] rate = "likelihood" in the run's matrix: every axis and table on the likelihood
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["matrix"]["report"]["rate"] = "likelihood"
    (run / "manifest.json").write_text(json.dumps(manifest))
    report = write_report(run)
    assert report.rate == LIKELIHOOD and {r["rate"] for r in report.bd_rows} == {"likelihood"}
    for png in (rd, vr):
        assert f"x: {LIKELIHOOD_AXIS}" in drawn_on(png)
        assert "(rate: likelihood estimate)" in drawn_on(png)
    text = (run / "report.md").read_text()
    assert "## BD-rate against the anchor (rate: likelihood, `bpp`)" in text
    assert "bd_rate_bitstream_%" not in text and "`bpp_bitstream_min`" not in text
    estimated = {(r["dataset"], r["quantizer"]): r["bd_rate_%"] for r in report.bd_rows}
    # the committed report's figures (built on the likelihood rate)
    assert estimated["kodak", "stanh"] == pytest.approx(4.78, abs=5e-3)
    assert estimated["embedded", "stanh"] == pytest.approx(0.18, abs=5e-3)
    beside = {(r["dataset"], r["quantizer"]): r["bd_rate_likelihood_%"] for r in report.bd_rows}
    assert beside == estimated
    assert all(estimated[k] != coded[k] for k in coded if k[1] != "noise")
    # qbench report --rate overrides the matrix
    assert write_report(run, rate="bitstream", write=False).rate == BITSTREAM
    manifest["matrix"]["report"]["rate"] = "file"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QbenchError, match=r"manifest\.json: matrix\.report\.rate: expected one"):
        write_report(run, write=False)


def test_a_run_without_bitstream_falls_back_to_the_likelihood_and_says_so(tmp_path):
    run = copy_run("quick", tmp_path)
    rows = pd.read_csv(run / "results.csv")
    rows.drop(columns=[BITSTREAM]).to_csv(run / "results.csv", index=False)
    report = write_report(run)
    assert report.rate == LIKELIHOOD
    said = [n for n in report.notes if n.startswith("rate: ")]
    assert len(said) == 1 and "no bpp_bitstream value" in said[0] and "likelihood" in said[0]
    text = (run / "report.md").read_text()
    assert said[0] in text and "## BD-rate against the anchor (rate: likelihood, `bpp`)" in text
    rd = next(p for p in report.plots if p.name.startswith("rd_"))
    assert f"x: {LIKELIHOOD_AXIS}" in drawn_on(rd)
    ste = next(r for r in report.bd_rows if r["quantizer"] == "ste")
    per_seed = by_hand(run, "ste", "noise", LIKELIHOOD)
    assert ste["bd_rate_%"] == pytest.approx(sum(per_seed) / len(per_seed), abs=1e-9)
