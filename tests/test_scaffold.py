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
from pathlib import Path

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


def _run_matrix_of(folder, env, kind) -> str:
    """Run the scaffolded package's own matrix (shortened) in a fresh qbench process;
    what went wrong, or ''."""
    name = name_of(kind)
    out = folder / f"run-{kind}"
    sets = ["train.steps=3", "eval.max_images=1", "matrix.lambdas=[0.01]"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "qbench.cli",
            "run",
            str(folder / f"qbench-{name}" / "matrix.toml"),
            "--out",
            str(out),
            "--no-progress",
            "--workers",
            "0",
            *(arg for s in sets for arg in ("--set", s)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        return f"{kind}: qbench run failed:\n{run.stdout}{run.stderr}"
    rows = list(csv.DictReader((out / "results.csv").open()))
    if not rows or any(r["status"] != "ok" for r in rows):
        return f"{kind}: rows not ok: {rows}"
    if kind == "metric":
        ok = "my_metric" in rows[0] and float(rows[0]["my_metric"]) > 0
    else:
        ok = name in (out / "results.csv").read_text()
    return "" if ok else f"{kind}: the plugin's {name!r} is not in the results"


@pytest.mark.slow
def test_new_plugin_installs_passes_conformance_and_runs(scaffolded):
    """Every kind, in one test (the four packages are installed and tested together): its
    one test, the conformance suite on the installed plugin, passed, and its matrix runs."""
    folder, env, conformance, log = scaffolded
    for kind in KINDS:
        assert conformance[kind] == [("test_conformance", "passed")], (kind, log)
    problems = [p for p in (_run_matrix_of(folder, env, kind) for kind in KINDS) if p]
    assert not problems, "\n".join(problems)


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


def _fresh_venv(folder):
    """A new virtual environment that sees the packages of this one (qbench-lic, torch,
    pytest...) as a site directory, the way a user's environment has qbench installed,
    and nothing of the plugin under test. It has no pip of its own (the pip of this
    environment runs in it as ``python -m pip``): a new venv's bundled setuptools would
    shadow the newer one CompressAI requires."""
    import sysconfig

    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "qbench-env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "VIRTUAL"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_NO_INDEX="1",  # offline: everything the plugin needs is already installed
        PIP_NO_BUILD_ISOLATION="0",  # pip's spelling of --no-build-isolation
    )
    return python, env


@pytest.mark.slow
def test_the_documented_plugin_commands_pass_in_a_fresh_venv(tmp_path):
    """docs/plugins.md and the scaffold's README, as written: new-plugin, then
    ``pip install -e "qbench-NAME[test]"`` and ``python -m pytest qbench-NAME``, from a
    folder that holds other test files too, in a new virtual environment."""
    python, env = _fresh_venv(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "test_unrelated.py").write_text("def test_not_mine():\n    assert False\n")

    def sh(*argv):
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    said = sh(python, "-m", "qbench.cli", "new-plugin", "halfnoise", "--kind", "quantizer")
    install = 'pip install -e "qbench-halfnoise[test]"'
    assert install in said and "python -m pytest qbench-halfnoise" in said
    pip = sh(python, "-m", "pip", "install", "-e", "qbench-halfnoise[test]")
    assert "pytest-xdist" in pip and "pytest>=" in pip  # the [test] extra brings them
    tests = sh(python, "-m", "pytest", "qbench-halfnoise")
    assert "1 passed" in tests and "test_not_mine" not in tests
    # the conformance command of docs/plugins.md, from the same folder: its items only
    conformance = sh(
        python, "-m", "pytest", "-q", "--qbench-conformance", "--qbench-quantizer", "halfnoise"
    )
    assert "passed" in conformance and "test_not_mine" not in conformance
