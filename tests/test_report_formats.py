"""report --format csv|json: a header always, the cells not computed with their reason, strict
JSON; validate says beforehand what the report will not be able to compute."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from qbench.cli import main
from qbench.plan.matrix import load_matrix
from qbench.plan.preflight import report_warnings
from qbench.report.tables import BD_COLUMNS, strict_json

from .test_paired import by_hand

QUICK = Path(__file__).resolve().parents[1] / "results" / "quick"


def _strict(text: str):
    """Parse as JSON that other tools read: NaN and Infinity are refused."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _copy(tmp_path, drop_lambda: float | None = None, seed: int | None = None) -> Path:
    run = tmp_path / "quick"
    shutil.copytree(QUICK, run)
    if seed is not None:  # a one-seed run, from the real rows
        rows = pd.read_csv(run / "results.csv")
        rows[rows["seed"] == seed].to_csv(run / "results.csv", index=False)
    if drop_lambda is not None:  # a matrix of three lambdas, from the real rows
        with open(run / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if float(r["lambda"]) != drop_lambda]
        assert len(kept) < len(rows)
        with open(run / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(kept)
    return run


def test_json_is_strict_and_says_what_one_seed_cannot(tmp_path, capsys):
    run = _copy(tmp_path, seed=0)
    assert main(["report", str(run), "--format", "json"]) == 0
    cells = _strict(capsys.readouterr().out)
    assert [c["quantizer"] for c in cells] == ["noise", "ste", "mixed", "sua"]
    assert all(list(c) == list(BD_COLUMNS) for c in cells)
    # one seed: no interval over seeds, on either rate
    assert all(c["seeds"] == 1 and c["ci95_seeds_%"] is None for c in cells)
    assert all(c["ci95_seeds_likelihood_%"] is None for c in cells)
    # the real bitstream's rate by default, the likelihood's beside it (bjontegaard directly)
    assert {c["rate"] for c in cells} == {"bitstream"}
    (coded,) = by_hand(run, "ste", "noise", "bpp_bitstream")
    (estimated,) = by_hand(run, "ste", "noise", "bpp")
    assert cells[1]["bd_rate_%"] == pytest.approx(coded, abs=1e-9)
    assert cells[1]["bd_rate_likelihood_%"] == pytest.approx(estimated, abs=1e-9)
    assert main(["report", str(run), "--format", "json", "--rate", "likelihood"]) == 0
    cells = _strict(capsys.readouterr().out)
    assert {c["rate"] for c in cells} == {"likelihood"}
    assert cells[1]["bd_rate_%"] == cells[1]["bd_rate_likelihood_%"]
    assert cells[1]["bd_rate_%"] == pytest.approx(estimated, abs=1e-9)


def test_three_lambdas_print_a_header_and_the_reasons(tmp_path, capsys):
    run = _copy(tmp_path, drop_lambda=0.018)
    assert main(["report", str(run), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    table = list(csv.DictReader(io.StringIO(out)))
    assert out.splitlines()[0] == ",".join(BD_COLUMNS)
    assert len(table) == 4 and all(r["bd_rate_%"] == "" for r in table)
    assert all("at least 4 points, got 3" in r["reason"] for r in table)
    assert main(["report", str(run), "--format", "json"]) == 0
    cells = _strict(capsys.readouterr().out)
    assert all(c["bd_rate_%"] is None and c["reason"] for c in cells)


def test_strict_json_replaces_every_non_finite_number():
    import numpy as np

    value = {"a": float("nan"), "b": [float("inf"), 1.5, np.float64("nan")], "c": np.int64(3)}
    assert strict_json(value) == {"a": None, "b": [None, 1.5, None], "c": 3}
    _strict(json.dumps(strict_json(value), allow_nan=False))


def test_validate_warns_before_running(tmp_path, registry, monkeypatch, capsys):
    m = tmp_path / "three.toml"
    m.write_text(
        'name = "three"\n[matrix]\n'
        'backbones = [{ name = "bmshj2018-factorized", N = 16, M = 16 }]\n'
        'quantizers = ["noise", "ste"]\nlambdas = [0.001, 0.01, 0.1]\n'
        'datasets = [{ name = "embedded", split = "eval" }]\nseeds = [0, 1]\n'
        '[report]\nreference_curves = ["vtm"]\n'
    )
    monkeypatch.setenv("QBENCH_REFERENCE_CURVES", str(tmp_path / "no-curves"))
    said = report_warnings(load_matrix(m, registry))
    assert len(said) == 2
    assert "3 point(s) per curve (noise on bmshj2018-factorized, ste on" in said[0]
    assert "at least 4" in said[0]
    assert "vtm not downloaded" in said[1] and str(tmp_path / "no-curves") in said[1]
    assert "qbench reference-curves --download vtm" in said[1]
    # four lambdas and the curve at hand: nothing to say
    m.write_text(m.read_text().replace("0.001, 0.01, 0.1", "0.001, 0.003, 0.01, 0.1"))
    (tmp_path / "no-curves").mkdir()
    from qbench import reference

    _, curves = reference.catalogue()
    (tmp_path / "no-curves" / curves["vtm"].file).write_text("{}")
    assert report_warnings(load_matrix(m, registry)) == []
    # the command prints them
    m.write_text(m.read_text().replace("0.001, 0.003, 0.01, 0.1", "0.01"))
    assert main(["validate", str(m)]) == 0
    assert "warning:" in capsys.readouterr().err


def test_missing_images_say_how_to_point_at_them(tmp_path, registry):
    from qbench.plan.preflight import PreflightError, preflight

    m = tmp_path / "m.toml"
    m.write_text(
        'name = "m"\n[matrix]\n'
        'backbones = [{ name = "bmshj2018-factorized", N = 16, M = 16 }]\n'
        'quantizers = ["noise"]\nlambdas = [0.01]\n'
        f'datasets = [{{ name = "folder", path = "{tmp_path / "kodak"}" }}]\n'
        f'[train]\ndataset = {{ name = "folder", path = "{tmp_path / "photos"}" }}\n'
    )
    with pytest.raises(PreflightError, match=r"train\.dataset .*--set train\.dataset\.path="):
        preflight(load_matrix(m, registry), registry)
    (tmp_path / "photos").mkdir()
    shutil.copy(
        QUICK.parents[1] / "qbench" / "data" / "images" / "train-kodim03.png", tmp_path / "photos"
    )
    with pytest.raises(PreflightError, match=r"matrix\.datasets .*--set 'matrix\.datasets=\["):
        preflight(load_matrix(m, registry), registry)
