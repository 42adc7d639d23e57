"""`qbench new-plugin`: the package it writes installs, passes conformance and runs in a matrix."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from qbench.registry import QbenchError
from qbench.scaffold import write_plugin

from .conftest import pip_install_target, pythonpath_with


@pytest.mark.parametrize("kind", ["quantizer", "backbone", "dataset", "metric"])
def test_new_plugin_installs_passes_conformance_and_runs(tmp_path, kind):
    name = f"my-{kind}"
    out = subprocess.run(
        [sys.executable, "-m", "qbench.cli", "new-plugin", name, "--kind", kind],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    root = tmp_path / f"qbench-{name}"
    target = pip_install_target(root, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": pythonpath_with(target)}
    # the package's own test runs the conformance suite on the installed plugin
    test = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert test.returncode == 0 and "1 passed" in test.stdout, test.stdout + test.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "qbench.cli",
            "run",
            str(root / "matrix.toml"),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "train.steps=3",
            "--set",
            "eval.max_images=1",
            "--set",
            "matrix.lambdas=[0.01]",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    assert rows and all(r["status"] == "ok" for r in rows)
    text = (tmp_path / "run" / "results.csv").read_text()
    if kind == "metric":
        assert "my_metric" in rows[0] and float(rows[0]["my_metric"]) > 0
    else:
        assert name in text


def test_new_plugin_refuses_bad_names_and_non_empty_folders(tmp_path):
    with pytest.raises(QbenchError, match="lower-case"):
        write_plugin("My Quant", "quantizer", tmp_path / "a")
    with pytest.raises(QbenchError, match="--kind"):
        write_plugin("ok", "sampler", tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(QbenchError, match="not empty"):
        write_plugin("ok", "quantizer", tmp_path / "c")
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"
