"""Live monitoring: the qbench_train_step hook, loggers, the TensorBoard event file."""

from __future__ import annotations

import json
import sys

import pytest

import qbench.plugins
from qbench.plan.matrix import load_matrix
from qbench.plan.preflight import PreflightError
from qbench.run.runner import run_matrix

from .test_runner import read_csv, tiny

WATCHER = '''
import json, os
import qbench

class BadLogger(qbench.Logger):
    """A logger with a bug: it must not fail the job."""
    def log(self, step, stats):
        raise RuntimeError("logger bug")

@qbench.hookimpl
def qbench_register_loggers(register):
    register("badlog", BadLogger)

@qbench.hookimpl
def qbench_train_step(job, step, stats):
    with open(os.environ["WATCH_FILE"], "a") as f:
        f.write(json.dumps({"job": job.job_id, "step": step, **stats}) + "\\n")
'''


def monitored(tmp_path, loggers, quantizers='["sua"]', steps=6):
    p = tiny(tmp_path, quantizers, steps=steps)
    text = p.read_text().replace("lr = 1e-3", "lr = 1e-3\nlog_every = 2")
    p.write_text(text + f"\n[monitor]\nloggers = {loggers}\n")
    return p


def test_tensorboard_event_file_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    qbench.plugins.reset()
    registry = qbench.plugins.get_plugins().registry
    m = load_matrix(monitored(tmp_path, '["tensorboard"]'), registry)
    out = tmp_path / "run"
    s = run_matrix(m, out, workers=0, device="cpu", show_progress=False, echo=lambda *_: None)
    assert s.statuses == {"ok": 1}
    (folder,) = (out / "monitor" / "tensorboard").glob("*/sua/lambda=0.01/seed=0")
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in (
        "train/loss",
        "train/bpp",
        "train/mse",
        "train/psnr",
        "train/progress",
        "train/y/T",
    ):
        assert tag in tags, tags
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 3, 5, 6]
    temperature = [e.value for e in events.Scalars("train/y/T")]
    assert temperature == sorted(temperature, reverse=True) and temperature[0] > temperature[-1]
    (row,) = read_csv(out / "results.csv")
    (bpp,) = events.Scalars("eval/bpp")
    assert bpp.value == pytest.approx(float(row["bpp"]), rel=1e-6) and bpp.step == 6
    history = read_csv(out / "history.csv")
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx([float(h["loss"]) for h in history], rel=1e-6)


def test_hook_gets_every_record_and_a_failing_logger_fails_no_job(
    tmp_path, install_plugin, monkeypatch, capfd
):
    install_plugin("qbench-watch", {"watch_plugin": WATCHER}, {"watch": "watch_plugin"})
    watch = tmp_path / "watch.jsonl"
    monkeypatch.setenv("WATCH_FILE", str(watch))
    registry = qbench.plugins.get_plugins().registry
    m = load_matrix(monitored(tmp_path, '["badlog"]'), registry)
    s = run_matrix(
        m, tmp_path / "run", workers=0, device="cpu", show_progress=False, echo=lambda *_: None
    )
    assert s.statuses == {"ok": 1}
    assert "logger 'badlog': log raised RuntimeError: logger bug" in capfd.readouterr().err
    records = [json.loads(line) for line in watch.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 5, 6]
    assert {"loss", "bpp", "mse", "psnr", "progress", "y/T"} <= set(records[0])
    assert records[-1]["progress"] == 1.0


def test_missing_tensorboard_is_refused_before_any_job(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    registry = qbench.plugins.get_plugins().registry
    m = load_matrix(monitored(tmp_path, '["tensorboard"]'), registry)
    with pytest.raises(
        PreflightError, match=r"monitor\.loggers.*pip install 'qbench-lic\[tensorboard\]'"
    ):
        run_matrix(m, tmp_path / "run", device="cpu", echo=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_unknown_logger_names_the_key(tmp_path, registry):
    from qbench.plan.matrix import MatrixError

    with pytest.raises(MatrixError, match=r"monitor\.loggers\[0\]: unknown logger 'tensorbord'"):
        load_matrix(monitored(tmp_path, '["tensorbord"]'), registry)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_runs_and_is_part_of_the_job_id(tmp_path, registry, amp):
    plain = load_matrix(tiny(tmp_path, steps=3), registry)
    p = tiny(tmp_path, steps=3, name="amp.toml")
    p.write_text(p.read_text().replace("lr = 1e-3", f'lr = 1e-3\namp = "{amp}"'))
    m = load_matrix(p, registry)
    assert m.jobs[0].job_id != plain.jobs[0].job_id
    s = run_matrix(
        m, tmp_path / "run", workers=0, device="cpu", show_progress=False, echo=lambda *_: None
    )
    assert s.statuses == {"ok": 1}
    (row,) = read_csv(tmp_path / "run" / "results.csv")
    assert float(row["bpp"]) > 0 and row["bitexact"] == "1.0"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["matrix"]["train"]["amp"] == amp


def test_bad_amp_is_refused(tmp_path, registry):
    from qbench.plan.matrix import MatrixError

    p = tiny(tmp_path)
    p.write_text(p.read_text().replace("lr = 1e-3", 'lr = 1e-3\namp = "fp8"'))
    with pytest.raises(MatrixError, match=r"train\.amp: expected one of '', 'bf16', 'fp16'"):
        load_matrix(p, registry)
