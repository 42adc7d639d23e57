"""Snapshots during training: a job killed mid-training continues bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from qbench.results import RunDir
from qbench.snapshots import SnapshotPolicy, Snapshots

from .conftest import run_command

#: one train group: mbt2018-mean with STanH in the authors' preset (its beta is drawn
#: from torch's RNG after each step) on y, SUA on z, schedule statistics on the way
MATRIX = """
name = "resume"
[matrix]
backbones = [{{ name = "mbt2018-mean", N = 16, M = 16 }}]
quantizers = [{{ name = "stanh", preset = "authors", latents = ["y"] }}]
unlisted_latents = "sua"
lambdas = [0.01]
datasets = [{{ name = "embedded", split = "eval" }}]
[train]
steps = {steps}
batch_size = 2
crop = 64
lr = 1e-3
log_every = 7
checkpoint_every = {every}
checkpoint_minutes = 0
[eval]
metrics = ["bpp", "psnr", "mismatch"]
max_images = 1
schedule = [0.25, 0.5]
probe_batches = 2
probe_crops = 1
draws = 2
"""


def write_matrix(path, steps, every):
    path.write_text(MATRIX.format(steps=steps, every=every))
    return path


def start_run(matrix, out, *extra):
    return subprocess.Popen(
        run_command(matrix, out, *extra),
        env={**os.environ, "QBENCH_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run(matrix, out, *extra):
    proc = start_run(matrix, out, *extra)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    return text


def newest_snapshot(out):
    """``(step, path of its .pt)`` of the newest snapshot on record, or ``(None, None)``."""
    best = (None, None)
    for p in (out / "checkpoints").glob("*.snap-*.json"):
        try:
            step = json.loads(p.read_text())["step"]
        except (OSError, ValueError):
            continue
        if best[0] is None or step > best[0]:
            best = (step, p.with_suffix(".pt"))
    return best


def snapshot_step(out):
    return newest_snapshot(out)[0]


def kill_after_snapshot(matrix, out, *extra, after=0, timeout=300):
    """Start the run, SIGKILL its whole process group once a snapshot of a step past
    ``after`` exists; return that step."""
    proc = start_run(matrix, out, *extra)
    deadline = time.time() + timeout
    step = None
    while time.time() < deadline and proc.poll() is None:
        step = snapshot_step(out)
        if step is not None and step > after:
            break
        time.sleep(0.02)
    assert step is not None and step > after, f"no new snapshot: {proc.communicate()[0]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _until_dead(out)
    return step


def _until_dead(out, timeout=10.0):
    """Wait until the processes of the run's heartbeats are gone (SIGKILL is delivered
    asynchronously: a worker may run on for a moment after ``killpg`` returns)."""
    from qbench.report.status import _alive

    deadline = time.time() + timeout
    for beat in (out / "running").glob("*.json"):
        pid = json.loads(beat.read_text()).get("pid")
        while isinstance(pid, int) and _alive(pid) and time.time() < deadline:
            time.sleep(0.05)


def final_state(out):
    (ckpt,) = [p for p in (out / "checkpoints").glob("*.pt") if ".snap" not in p.name]
    return torch.load(ckpt, weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_kill_9_mid_training_resumes_bit_for_bit(tmp_path):
    """The training runs in the qbench process (``--workers 0``): a kill -9 of a worker is
    the same cut (test_runner's and test_executors' kills have worker processes)."""
    steps = 120
    inline = ("--workers", "0")
    plain = run(write_matrix(tmp_path / "plain.toml", steps, 0), tmp_path / "plain", *inline)
    assert "1 ok" in plain
    m = write_matrix(tmp_path / "m.toml", steps, 10)
    out = tmp_path / "cut"
    step = kill_after_snapshot(m, out, *inline)
    assert 0 < step < steps
    # qbench status reads the files alone: the job is interrupted, resumable from its snapshot
    status = subprocess.run(
        [sys.executable, "-m", "qbench.cli", "status", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "interrupted" in status and "resumes from step" in status, status
    # kill it a second time, later, and corrupt the newest snapshot: the previous one is used
    step2 = kill_after_snapshot(m, out, *inline, after=step)
    _, snap = newest_snapshot(out)
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    run(m, out, *inline)
    row = json.loads(next((out / "rows").glob("*.json")).read_text())
    assert row["status"] == "ok"
    assert "older snapshot" in row["resumed"] and "SHA-256" in row["resumed"], row["resumed"]
    assert row["steps"] == steps
    assert_same_weights(final_state(tmp_path / "plain"), final_state(out))
    # every record of the history and the schedule is there once, as in the plain run
    plain_row = json.loads(next((tmp_path / "plain" / "rows").glob("*.json")).read_text())
    assert row["history"] == plain_row["history"]
    assert [r["step"] for r in row["schedule"]] == [r["step"] for r in plain_row["schedule"]]
    assert row["bpp"] == plain_row["bpp"] and row["psnr"] == plain_row["psnr"]
    assert not list((out / "checkpoints").glob("*.snap*")), "snapshots are removed at the end"
    assert step2 > step


def test_snapshots_fall_back_to_the_older_one_then_to_a_fresh_start(tmp_path):
    snaps = Snapshots(tmp_path, "abc", SnapshotPolicy(every_steps=5))
    snaps.save(5, {"steps": 20, "x": torch.ones(3)})
    snaps.save(10, {"steps": 20, "x": torch.full((3,), 2.0)})
    assert snaps.latest_step() == 10
    state = Snapshots(tmp_path, "abc", SnapshotPolicy()).load(20)
    assert torch.equal(state["x"], torch.full((3,), 2.0))
    # the third snapshot overwrites the oldest slot; killed before its record was written
    snaps.save(15, {"steps": 20, "x": torch.full((3,), 3.0)})
    (newest,) = [
        p for p in tmp_path.glob("abc.snap-*.json") if json.loads(p.read_text())["step"] == 15
    ]
    newest.unlink()
    again = Snapshots(tmp_path, "abc", SnapshotPolicy())
    assert torch.equal(again.load(20)["x"], torch.full((3,), 2.0))
    assert again.resumed == "step 10"
    # a snapshot whose bytes were damaged: the older one is used, and the row says why
    resumed = Snapshots(tmp_path, "abc", SnapshotPolicy(every_steps=5))  # a resumed process
    resumed.save(19, {"steps": 20, "x": torch.full((3,), 4.0)})  # writes the slot without record
    _, pt = max(
        (json.loads(p.read_text())["step"], p.with_suffix(".pt"))
        for p in tmp_path.glob("abc.snap-*.json")
    )
    pt.write_bytes(pt.read_bytes()[:-1] + b"x")
    hurt = Snapshots(tmp_path, "abc", SnapshotPolicy())
    assert torch.equal(hurt.load(20)["x"], torch.full((3,), 2.0))
    assert hurt.resumed.startswith("step 10 (older snapshot; the snapshot of step 19 is unusable")
    assert "SHA-256" in hurt.resumed
    # a snapshot of another training length is not used
    other = Snapshots(tmp_path, "abc", SnapshotPolicy())
    assert other.load(30) is None
    assert other.resumed.startswith("fresh start (") and "not 30" in other.resumed
    snaps.clear()
    assert not list(tmp_path.iterdir())


def test_a_kill_at_any_instant_of_a_save_leaves_a_usable_snapshot(tmp_path, monkeypatch):
    """A save killed after the slot's .pt but before its record: the other slot stands."""
    from qbench import snapshots as resume

    snaps = Snapshots(tmp_path, "abc", SnapshotPolicy(every_steps=5))
    snaps.save(5, {"steps": 20, "x": torch.ones(3)})
    snaps.save(10, {"steps": 20, "x": torch.full((3,), 2.0)})

    def killed(path, text):
        raise KeyboardInterrupt  # as a kill between the two writes

    monkeypatch.setattr(resume, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        snaps.save(15, {"steps": 20, "x": torch.full((3,), 3.0)})
    monkeypatch.undo()
    after = Snapshots(tmp_path, "abc", SnapshotPolicy())
    assert torch.equal(after.load(20)["x"], torch.full((3,), 2.0))
    assert after.resumed == "step 10"


def test_snapshot_policy():
    by_steps = SnapshotPolicy(every_steps=10)
    assert by_steps.due(10, 100, 0.0) and not by_steps.due(11, 100, 1e9)
    assert not by_steps.due(100, 100, 0.0), "never after the last step"
    by_time = SnapshotPolicy(minutes=1.0)
    assert by_time.due(3, 100, 61.0) and not by_time.due(3, 100, 59.0)
    assert not SnapshotPolicy().due(10, 100, 1e9)


def test_running_record_and_status_of_a_fresh_run_dir(tmp_path):
    from qbench.report.status import run_status

    rd = RunDir(tmp_path)
    rd.ensure()
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "jobs": [
                    {"job_id": "000000000001", "train_id": "00000000000a", "describe": "a"},
                    {"job_id": "000000000002", "train_id": "00000000000b", "describe": "b"},
                    {"job_id": "000000000003", "train_id": "00000000000c", "describe": "c"},
                ]
            }
        )
    )
    rd.mark_running("00000000000a", {"step": 3, "steps": 10})  # this live process
    rd.record_submission(
        "00000000000b", {"scheduler_job_id": "77_1", "stderr": "x.err", "attempt": 1}
    )
    states = {s.job_id: s for s in run_status(tmp_path)}
    assert (
        states["000000000001"].state == "running" and "step 3/10" in states["000000000001"].detail
    )
    assert (
        states["000000000002"].state == "queued"
        and states["000000000002"].scheduler_job_id == "77_1"
    )
    assert states["000000000003"].state == "pending"
    # a heartbeat of a dead process is an interrupted job
    record = json.loads((tmp_path / "running" / "00000000000a.json").read_text())
    record["pid"] = 2**22 + 12345
    (tmp_path / "running" / "00000000000a.json").write_text(json.dumps(record))
    assert {s.job_id: s for s in run_status(tmp_path)}["000000000001"].state == "interrupted"


def test_an_unreadable_trained_checkpoint_is_never_loaded(tmp_path, registry):
    from qbench.plan.matrix import load_matrix
    from qbench.run.runner import run_matrix

    from .test_runner import tiny

    m = load_matrix(tiny(tmp_path, steps=3), registry)
    kw = {"workers": 0, "device": "cpu", "show_progress": False, "echo": lambda *_: None}
    run_matrix(m, tmp_path / "run", **kw)
    (row_file,) = (tmp_path / "run" / "rows").glob("*.json")
    first = json.loads(row_file.read_text())
    ckpt = tmp_path / "run" / "checkpoints" / f"{first['train_id']}.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a disk that failed under it
    row_file.unlink()  # the job runs again and finds the broken checkpoint
    run_matrix(m, tmp_path / "run", **kw)
    again = json.loads(row_file.read_text())
    assert again["status"] == "ok"
    assert again["resumed"].startswith("the trained checkpoint was unreadable"), again["resumed"]
    assert again["bpp"] == first["bpp"], "produced again, the same"
