"""`qbench new-plugin`: the package it writes installs, passes conformance and runs in a matrix.

The four kinds are written by the command, installed by one pip command into one
folder and their own tests run by one pytest (each of those tests runs qbench's
conformance suite in its own pytest process, as the package's author would);
then each kind's matrix runs in a fresh qbench process.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from qbench.registry import QbenchError
from qbench.scaffold import KINDS, write_plugin

from .conftest import pip_install_target, pythonpath_with


def name_of(kind: str) -> str:
    return f"my-{kind}"


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory):
    """``(folder, site, env, conformance)``: the four packages written by ``qbench
    new-plugin`` in ``folder``, pip-installed into ``site``, the environment that sees
    them, and each package's test outcome (``{kind: [(test name, outcome)]}``)."""
    from qbench.cli import main

    folder = tmp_path_factory.mktemp("scaffold")
    roots = {}
    for kind in KINDS:
        name = name_of(kind)
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
            mp.chdir(folder)  # the command writes ./qbench-NAME
            code = main(["new-plugin", name, "--kind", kind])
        assert code == 0, out.getvalue()
        roots[kind] = folder / f"qbench-{name}"
        assert f"wrote qbench-{name}" in out.getvalue()
    site = pip_install_target(list(roots.values()), folder / "site")
    env = {**os.environ, "PYTHONPATH": pythonpath_with(site)}
    # each package's own test runs the conformance suite on the installed plugin
    report = folder / "tests.xml"
    test = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            f"--junitxml={report}",
            *(str(root / "tests") for root in roots.values()),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes: dict[str, list[tuple[str, str]]] = {kind: [] for kind in KINDS}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = [k for k in KINDS if name_of(k).replace("-", "_") in case.get("classname", "")]
            failed = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
            for kind in kinds:
                outcomes[kind].append((case.get("name"), failed[0] if failed else "passed"))
    return folder, env, outcomes, test.stdout + test.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_new_plugin_installs_passes_conformance_and_runs(scaffolded, kind):
    folder, env, conformance, log = scaffolded
    name = name_of(kind)
    root = folder / f"qbench-{name}"
    # the package's one test (the conformance suite on the installed plugin) passed
    assert conformance[kind] == [("test_conformance", "passed")], log
    out = folder / f"run-{kind}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "qbench.cli",
            "run",
            str(root / "matrix.toml"),
            "--out",
            str(out),
            "--no-progress",
            "--workers",
            "1",
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
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows and all(r["status"] == "ok" for r in rows)
    text = (out / "results.csv").read_text()
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
