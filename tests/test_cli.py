"""The command line as a user meets it."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

from qbench import __version__


def qbench(*args, **kw):
    """``python -m qbench.cli ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "qbench.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def cli(*args):
    """``qbench ARGS`` run by the command's own ``main`` in this process (no second import
    of torch): ``returncode``, ``stdout`` and ``stderr`` as the process would have them
    (argparse's exits included); the environment and warning filters it sets are put back."""
    from qbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("PYTHONWARNINGS")
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            if saved is None:
                os.environ.pop("PYTHONWARNINGS", None)
            else:
                os.environ["PYTHONWARNINGS"] = saved
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_version_and_help():
    out = qbench("--version")  # the module runs as a program
    assert out.returncode == 0 and __version__ in out.stdout
    out = cli("--help")
    assert out.returncode == 0
    for word in ("run", "list", "validate", "report", "--disable-plugin"):
        assert word in out.stdout


def test_validate_prints_jobs_of_embedded_matrix():
    out = cli("validate")
    assert out.returncode == 0, out.stderr
    assert "noise" in out.stdout and "sua" in out.stdout and "jobs" in out.stdout


def test_validate_reports_bad_matrix(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(
        '[matrix]\nbackbones = ["bmshj2018-factorised"]\nquantizers = ["noise"]\n'
        'lambdas = [0.01]\ndatasets = ["embedded"]\n'
    )
    out = cli("validate", str(p))
    assert out.returncode == 2
    assert str(p) in out.stderr and "bmshj2018-factorized" in out.stderr
    assert "Traceback" not in out.stderr


def test_report_unknown_anchor(tmp_path):
    (tmp_path / "results.csv").write_text(
        "backbone,quantizer,lambda,dataset,seed,job_id,status,bpp,psnr\n"
        "b,noise,0.01,d,0,a,ok,0.5,30\nb,ste,0.01,d,0,b,ok,0.5,30\n"
    )
    out = cli("report", str(tmp_path), "--anchor", "nois")
    assert out.returncode == 2 and "'noise'" in out.stderr
    out = cli("report", str(tmp_path), "--anchor", "noise")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "report.md").read_text()
    # a results.csv without a manifest: its numeric columns are shown, what is missing is said
    assert "at least 4 points" in text and "### `other`" in text
