"""Probes change nothing: statistics and evaluations leave the training and each other alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qbench.plan.matrix import load_matrix
from qbench.run.runner import run_matrix

from .test_runner import read_csv, tiny


def quiet(m, out):
    return run_matrix(m, out, workers=0, device="cpu", show_progress=False, echo=lambda *_: None)


def test_probes_do_not_change_the_trained_weights(tmp_path, registry):
    """log_every 0 vs 7, and no schedule statistics vs mismatch and gradients at every
    schedule point: bit-identical weights (the probes draw from their own RNG stream,
    restore every weight and mode, and STanH anneals only in end_step)."""
    p = tiny(tmp_path, '["noise", "sua", { name = "stanh", levels = 21 }]', steps=30)
    runs = {}
    settings = {
        "bare": ["train.log_every=0", 'eval.metrics=["bpp"]'],
        "probed": [
            "train.log_every=7",
            'eval.metrics=["bpp", "mismatch", "gradients"]',
            "eval.probe_batches=2",
            "eval.probe_crops=1",
            "eval.draws=2",
        ],
    }
    for name, sets in settings.items():
        m = load_matrix(p, registry, sets)
        out = tmp_path / name
        quiet(m, out)
        runs[name] = {
            j.quantizer.label: torch.load(
                out / "checkpoints" / f"{j.train_id}.pt", weights_only=True
            )
            for j in m.jobs
        }
    assert len(read_csv(tmp_path / "probed" / "history.csv")) >= 3 * 5  # the log did run
    schedule = read_csv(tmp_path / "probed" / "schedule.csv")
    assert len(schedule) == 3 * 5 and {r["progress"] for r in schedule} == {
        "0.1",
        "0.26666666666666666",  # round(7.5) = 8 of 30 steps
        "0.5",
        "0.7333333333333333",  # round(22.5) = 22
        "1.0",
    }  # the schedule's points at the nearest of 30 steps
    for label, state in runs["bare"].items():
        other = runs["probed"][label]
        assert state.keys() == other.keys()
        for k, v in state.items():
            assert torch.equal(v, other[k]), (label, k)


def test_a_dataset_is_evaluated_as_if_alone(tmp_path, registry):
    folder = tmp_path / "b"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    p = tiny(tmp_path, '[{ name = "stanh", levels = 21 }]', steps=5)
    text = p.read_text().replace(
        'metrics = ["bpp", "bpp_bitstream", "psnr"]',
        'metrics = ["bpp", "psnr", "mismatch", "gradients"]\nprobe_batches = 2\ndraws = 2',
    )
    both = text.replace(
        'datasets = [{ name = "embedded", split = "eval" }]',
        f'datasets = [{{ name = "embedded", split = "eval" }}, {{ name = "folder", label = "b", path = "{folder}" }}]',
    )
    alone = text.replace(
        'datasets = [{ name = "embedded", split = "eval" }]',
        f'datasets = [{{ name = "folder", label = "b", path = "{folder}" }}]',
    )
    rows = {}
    for name, body in (("both", both), ("alone", alone)):
        p.write_text(body)
        quiet(load_matrix(p, registry), tmp_path / name)
        rows[name] = {r["dataset"]: r for r in read_csv(tmp_path / name / "results.csv")}
    for col in ("bpp", "psnr", "mismatch_rate", "mismatch_dist", "grad_var", "grad_slope_ratio"):
        # before the fixes, the gradients metric's forward passes moved STanH's beta and
        # its finite differences left rounding residue in the weights
        assert rows["both"]["b"][col] == rows["alone"]["b"][col], col
    assert rows["both"]["b"]["status"] == "ok"


@pytest.mark.parametrize("name", ["stanh", "sga", "sua", "noise"])
def test_forward_changes_no_quantizer_state(registry, name):
    q = registry.build("quantizer", name).train()
    q.set_progress(0.3)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    y = (torch.randn(2, 4, 8, 8) * 3).requires_grad_()
    for _ in range(3):
        q(y, torch.zeros_like(y))
        with torch.no_grad():
            q(y)
    after = q.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_report_shows_schedule_statistics_as_measured(tmp_path, registry):
    """A run with mismatch and gradients: the report has each statistic's table (training
    average and final state with intervals) and the metric's note on how to read it, an
    exact zero says why instead of standing as a finding, and every statistic is plotted."""
    from qbench.report import write_report

    p = tiny(tmp_path, '["noise", "ste", "mixed"]', steps=4)
    sets = [
        'eval.metrics=["bpp", "mismatch", "gradients"]',
        "eval.schedule=[0.5, 1.0]",
        "eval.probe_batches=3",
        "eval.probe_crops=1",
        "eval.draws=2",
    ]
    out = tmp_path / "run"
    quiet(load_matrix(p, registry, sets), out)
    rep = write_report(out, anchor="noise")
    text = (out / "report.md").read_text()
    section = text.split("## Statistics over the training schedule")[1]
    assert "### `grad_slope_ratio` (gradients)\n\nAlong the mean surrogate gradient" in section
    assert "### `mismatch_latent` (mismatch)\n\nMean squared difference" in section
    grad_var = section.split("### `grad_var`")[1].split("###")[0]
    ste_row = next(line for line in grad_var.splitlines() if "| ste " in line)
    assert "0 (exact: deterministic surrogate)" in ste_row
    noise_row = next(line for line in grad_var.splitlines() if "| noise " in line)
    assert "[" in noise_row and "exact" not in noise_row  # an estimate with its interval
    assert any(p.name == "schedule.png" for p in rep.plots)
    # mixed's distortion path is STE: its distortion columns are exact, each on its own
    rows = {r["quantizer"]: r for r in read_csv(out / "results.csv")}
    exact = "exact: distortion path equals rounding here"
    for col in ("mismatch_dist", "mismatch_latent"):
        assert rows["mixed"][f"{col}_note"] == exact, col
        assert rows["mixed"][f"{col}_avg_note"] == f"exact: at every point ({exact[7:]})", col
    for col in ("mismatch_rate", "mismatch_latent_rate"):
        assert not rows["mixed"][f"{col}_note"].startswith("exact"), col
    dist = section.split("### `mismatch_dist`")[1].split("###")[0]
    mixed_row = next(line for line in dist.splitlines() if "| mixed " in line)
    assert f"0 ({exact})" in mixed_row
    # the probe set's shape: 3 batches of one 64 px crop; grad_var is stated for a
    # training batch of 2 crops
    for r in rows.values():
        assert (r["probe_batches"], r["probe_pixels"], r["train_pixels"]) == ("3", "4096", "8192")
        assert 1 <= int(r["probe_images"]) <= 3


def test_a_surrogate_that_has_reduced_to_another_at_the_end_is_said_so(tmp_path, registry):
    """SUA's final state (t = 1) is STE with its routing and bound: the row records it
    (``final_form``) and the report says that its final statistics describe that
    surrogate; noise, which is itself to the end, gets no such line."""
    from qbench.report import write_report

    p = tiny(tmp_path, '["noise", "sua"]', steps=2)
    p.write_text(p.read_text().replace("bmshj2018-factorized", "mbt2018-mean"))
    out = tmp_path / "run"
    quiet(load_matrix(p, registry), out)
    rows = {r["quantizer"]: r for r in read_csv(out / "results.csv")}
    assert rows["sua"]["final_form"].startswith("ste (hard rounding, straight-through")
    assert "stop_gradient = partial" in rows["sua"]["final_form"]
    assert rows["noise"]["final_form"] == ""
    text = write_report(out, anchor="noise").notes
    said = [n for n in text if "at the end of training (t = 1) the surrogate is" in n]
    assert len(said) == 1 and said[0].startswith("`sua` on "), said
    assert "at the end of training (t = 1) it is ste" in (out / "report.md").read_text()


def test_a_probe_batch_is_a_training_batch_by_default(tmp_path, registry):
    """probe_crops = 0 (the default) is [train] batch_size: the probe is the training
    batch, and the job ids hold the resolved number (the same ids as spelling it out)."""
    p = tiny(tmp_path, '["noise"]', steps=4)
    default = load_matrix(p, registry)
    spelled = load_matrix(p, registry, ["eval.probe_crops=2"])
    other = load_matrix(p, registry, ["eval.probe_crops=1"])
    assert {j.eval.probe_crops for j in default.jobs} == {2}  # tiny's batch_size
    assert [j.job_id for j in default.jobs] == [j.job_id for j in spelled.jobs]
    assert not {j.job_id for j in default.jobs} & {j.job_id for j in other.jobs}
    assert default.jobs[0].eval.probe_settings()["probe_crops"] == 2
