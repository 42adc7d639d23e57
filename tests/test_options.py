"""The surrogate options from a matrix: run and recorded where they act, refused where
they cannot, noted where a default cannot (issue: faithful surrogates)."""

from __future__ import annotations

import csv

import pytest

import qbench.plugins
from qbench.plan.matrix import load_matrix
from qbench.plan.preflight import PreflightError, preflight
from qbench.report import write_report
from qbench.run.runner import run_matrix

MATRIX = """
name = "options"
[matrix]
backbones = [{{ name = "{backbone}", N = 8, M = 8 }}]
quantizers = {quantizers}
lambdas = [0.01]
datasets = [{{ name = "embedded", split = "eval" }}]
[train]
steps = 2
batch_size = 2
crop = 64
log_every = 0
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
max_images = 1
"""


def load(tmp_path, backbone, quantizers):
    p = tmp_path / "m.toml"
    p.write_text(MATRIX.format(backbone=backbone, quantizers=quantizers))
    registry = qbench.plugins.get_plugins().registry
    return load_matrix(p, registry), registry


def run(tmp_path, backbone, quantizers):
    m, _ = load(tmp_path, backbone, quantizers)
    out = tmp_path / "run"
    run_matrix(m, out, workers=0, device="cpu", show_progress=False, echo=lambda *_: None)
    write_report(out)
    with open(out / "results.csv") as f:
        return {r["quantizer"]: r for r in csv.DictReader(f)}, out


def test_tricks_on_noise_run_and_are_recorded(tmp_path):
    rows, out = run(
        tmp_path,
        "mbt2018-mean",
        '[{ name = "noise", scale_bound = 0.2, zero_center = true }, '
        '{ name = "noise", label = "plain" }]',
    )
    tricks, plain = rows["noise"], rows["plain"]
    assert tricks["status"] == plain["status"] == "ok" and tricks["bitexact"] == "1.0"
    assert "scale_bound=0.2" in tricks["settings"] and "zero_center=True" in tricks["settings"]
    assert float(tricks["scale_bound"]) == 0.2 and float(plain["scale_bound"]) == 0.11
    assert tricks["idle"] == plain["idle"] == ""
    assert "scale bound in training and coding: 0.2" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "entry, option",
    [
        ('{ name = "noise", scale_bound = 0.2 }', "scale_bound"),
        ('{ name = "sua", scale_bound = 0.3 }', "scale_bound"),
        ('{ name = "ste", zero_center = true, stop_gradient = "partial" }', "stop_gradient"),
    ],
)
def test_explicit_option_with_nothing_to_act_on_is_refused(tmp_path, entry, option):
    m, registry = load(tmp_path, "bmshj2018-factorized", f"[{entry}]")
    with pytest.raises(PreflightError) as err:
        preflight(m, registry)
    msg = str(err.value)
    assert str(tmp_path / "m.toml") in msg and f".{option}:" in msg
    assert "nothing to act on" in msg and "bmshj2018-factorized" in msg
    # the whole run is refused before any job starts: nothing is written
    with pytest.raises(PreflightError):
        run(tmp_path, "bmshj2018-factorized", f"[{entry}]")
    assert not (tmp_path / "run").exists()


def test_zero_center_is_refused_where_there_are_no_means(tmp_path):
    # y of the scale hyperprior has no means (z, around its medians, has): refused on y only
    entry = '[{ name = "ste", zero_center = true, latents = ["y"] }]'
    m, registry = load(tmp_path, "bmshj2018-hyperprior", entry)
    with pytest.raises(PreflightError, match="y: the latent has no means"):
        preflight(m, registry)
    m, registry = load(tmp_path, "bmshj2018-hyperprior", '[{ name = "ste", zero_center = true }]')
    preflight(m, registry)


def test_plain_sua_runs_on_a_factorized_model_and_its_idle_defaults_are_noted(tmp_path):
    rows, out = run(tmp_path, "bmshj2018-factorized", '["sua"]')
    row = rows["sua"]
    assert row["status"] == "ok" and not row.get("scale_bound")  # no Gaussian conditional
    assert "scale_bound (y: the latent has no Gaussian conditional)" in row["idle"]
    assert "stop_gradient (y: the latent has no learned means)" in row["idle"]
    report = (out / "report.md").read_text()
    assert "## Quantizers" in report and "nothing to act on here" in report
