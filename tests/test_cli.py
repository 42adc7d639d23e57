"""The command line as a user meets it."""

from __future__ import annotations

import subprocess
import sys

from qbench import __version__


def qbench(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "qbench.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def test_version_and_help():
    out = qbench("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    out = qbench("--help")
    assert out.returncode == 0
    for word in ("run", "list", "validate", "report", "--disable-plugin"):
        assert word in out.stdout


def test_validate_prints_jobs_of_embedded_matrix():
    out = qbench("validate")
    assert out.returncode == 0, out.stderr
    assert "noise" in out.stdout and "sua" in out.stdout and "jobs" in out.stdout


def test_validate_reports_bad_matrix(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(
        '[matrix]\nbackbones = ["bmshj2018-factorised"]\nquantizers = ["noise"]\n'
        'lambdas = [0.01]\ndatasets = ["embedded"]\n'
    )
    out = qbench("validate", str(p))
    assert out.returncode == 2
    assert str(p) in out.stderr and "bmshj2018-factorized" in out.stderr
    assert "Traceback" not in out.stderr


def test_report_unknown_anchor(tmp_path):
    (tmp_path / "results.csv").write_text(
        "backbone,quantizer,lambda,dataset,seed,job_id,status,bpp,psnr\n"
        "b,noise,0.01,d,0,a,ok,0.5,30\nb,ste,0.01,d,0,b,ok,0.5,30\n"
    )
    out = qbench("report", str(tmp_path), "--anchor", "nois")
    assert out.returncode == 2 and "'noise'" in out.stderr
    out = qbench("report", str(tmp_path), "--anchor", "noise")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "report.md").read_text()
    # a results.csv without a manifest: its numeric columns are shown, what is missing is said
    assert "at least 4 points" in text and "### `other`" in text
