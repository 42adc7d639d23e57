"""Executors: submitit's real LocalExecutor end to end, the Slurm script, retries, extras."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import qbench.plugins
from qbench.plan.configs import EXECUTOR_KINDS, ExecutorConfig
from qbench.plan.matrix import defaults, load_matrix
from qbench.results import RunDir
from qbench.run.executors import (
    EXECUTORS,
    MAX_ATTEMPTS,
    Dispatch,
    ExecutorError,
    SlurmExecutor,
    SubmititExecutor,
    build_executor,
    plan_devices,
    worker_threads,
)
from qbench.run.runner import RunError, run_matrix

from .test_resume import kill_after_snapshot, run
from .test_runner import FAULTY, read_csv, tiny

pytest.importorskip("submitit")

SETTINGS = {**defaults()["executor"]}
COLUMNS = ("job_id", "status", "bpp", "bpp_bitstream", "psnr", "bitexact", "steps")


def rows_by_job(out):
    return {r["job_id"]: {c: r[c] for c in COLUMNS} for r in read_csv(out / "results.csv")}


@pytest.mark.slow
def test_submitit_local_killed_mid_training_resubmitted_gives_the_local_rows(tmp_path):
    m = tiny(tmp_path, '["noise", "sua"]', steps=100)
    text = m.read_text().replace("lr = 1e-3", "lr = 1e-3\ncheckpoint_every = 10")
    m.write_text(text.replace("bmshj2018-factorized", "mbt2018-mean"))
    run(m, tmp_path / "local", "--workers", "0")  # the rows a local run gives (in-process)
    out = tmp_path / "sub"
    kill_after_snapshot(m, out, "--executor", "submitit-local")
    log = run(m, out, "--executor", "submitit-local")
    assert "submitted as job" in log
    assert rows_by_job(out) == rows_by_job(tmp_path / "local")
    resumed = [json.loads(p.read_text())["resumed"] for p in (out / "rows").glob("*.json")]
    assert any(r.startswith("step ") for r in resumed), resumed
    # the scheduler ids and the log paths are on record, and status shows them
    records = RunDir(out).submissions()
    assert len(records) == 2
    for record in records.values():
        assert record["executor"] == "submitit-local" and record["scheduler_job_id"]
        assert os.path.exists(record["stderr"])
    status = subprocess.run(
        [sys.executable, "-m", "qbench.cli", "status", str(out), "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "2 jobs: 2 ok" in status
    assert all(r["scheduler_job_id"] in status for r in records.values())


@pytest.mark.slow
def test_a_job_that_dies_three_times_is_marked_failed_with_its_log(tmp_path, install_plugin):
    install_plugin("qbench-faulty", {"faulty_plugin": FAULTY}, {"faulty": "faulty_plugin"})
    plugins = qbench.plugins.get_plugins()
    m = load_matrix(tiny(tmp_path, '["noise", "crashq"]', steps=2), plugins.registry)
    out = tmp_path / "run"
    lines: list[str] = []
    s = run_matrix(
        m,
        out,
        device="cpu",
        show_progress=False,
        echo=lines.append,
        executor={"kind": "submitit-local"},
    )
    assert s.statuses == {"ok": 1, "failed": 1}
    rows = {r["quantizer"]: r for r in read_csv(out / "results.csv")}
    reason = rows["crashq"]["reason"]
    assert f"({MAX_ATTEMPTS} attempts; last log: " in reason
    log = reason.split("last log: ")[1].rstrip(")")
    assert os.path.exists(log) and f"attempt-{MAX_ATTEMPTS}.log" in log
    assert sum("attempt 2 of 3" in line or "attempt 3 of 3" in line for line in lines) == 2
    assert RunDir(out).submission(rows["crashq"]["train_id"])["attempt"] == MAX_ATTEMPTS


@pytest.mark.slow
def test_the_local_executor_retries_a_dead_worker_too(tmp_path, install_plugin):
    install_plugin("qbench-faulty", {"faulty_plugin": FAULTY}, {"faulty": "faulty_plugin"})
    plugins = qbench.plugins.get_plugins()
    m = load_matrix(tiny(tmp_path, '["crashq"]', steps=2), plugins.registry)
    lines: list[str] = []
    run_matrix(m, tmp_path / "run", device="cpu", show_progress=False, echo=lines.append)
    (row,) = read_csv(tmp_path / "run" / "results.csv")
    assert (
        row["status"] == "failed" and "SIGKILL" in row["reason"] and "3 attempts" in row["reason"]
    )


def test_workers_0_runs_in_this_process_and_gives_the_workers_rows(tmp_path, registry):
    """``--workers 0`` (a debugger's or profiler's run): no process is started, and every
    row is the one a worker process writes, value for value."""
    import multiprocessing

    m = load_matrix(tiny(tmp_path, '["noise", "sua"]', steps=3), registry)
    run_matrix(m, tmp_path / "workers", device="cpu", show_progress=False, echo=lambda *_: 0)
    before = multiprocessing.active_children()
    lines: list[str] = []
    s = run_matrix(
        m, tmp_path / "inline", workers=0, device="cpu", show_progress=False, echo=lines.append
    )
    assert s.statuses == {"ok": 2} and multiprocessing.active_children() == before
    assert rows_by_job(tmp_path / "inline") == rows_by_job(tmp_path / "workers")
    assert sum("[1/2]" in line or "[2/2]" in line for line in lines) == 2, lines
    with pytest.raises(ExecutorError, match="--workers must be >= 0"):
        run_matrix(m, tmp_path / "bad", workers=-1, device="cpu", echo=lambda *_: 0)


def fake_sbatch(folder):
    """Stand-ins for Slurm's sbatch and srun (no cluster here): sbatch keeps the script it is
    given and answers a job id, as Slurm's does."""
    folder.mkdir()
    script = folder / "sbatch"
    script.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do last="$a"; done\ncp "$last" {folder}/submitted.sh\n'
        'echo "Submitted batch job 4242"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    srun = folder / "srun"  # submitit looks for it to tell that it is on a cluster
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_job_array_script(tmp_path, monkeypatch):
    """The real submitit Slurm executor writes the sbatch script of one job array."""
    bin_dir = fake_sbatch(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    plugins = qbench.plugins.get_plugins()
    m = load_matrix(tiny(tmp_path, '["noise", "ste"]', steps=2), plugins.registry)
    settings = {
        **SETTINGS,
        "kind": "slurm",
        "partition": "gpu",
        "gpus_per_job": 1,
        "cpus_per_job": 4,
        "mem_gb": 32.0,
        "time_min": 720,
        "array_parallelism": 32,
        "additional": {"account": "lic", "qos": "preemptible"},
    }
    executor = build_executor(ExecutorConfig(**settings))
    assert isinstance(executor, SubmititExecutor)
    assert isinstance(executor, SlurmExecutor)
    run_dir = RunDir(tmp_path / "run")
    run_dir.ensure()
    groups = [[(i, job)] for i, job in enumerate(m.jobs)]
    jobs = executor.submit(groups, Dispatch(run_dir), threads=4)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1"]
    script = (bin_dir / "submitted.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=720",
        "#SBATCH --array=0-1%2",  # the parallelism (32) capped by the array size
        "#SBATCH --account=lic",
        "#SBATCH --qos=preemptible",
        "#SBATCH --signal=USR2@",  # submitit's preemption / time-limit signal: requeue
    ):
        assert line in script, (line, script)
    assert "submitit.core._submit" in script
    records = run_dir.submissions()
    assert {r["scheduler_job_id"] for r in records.values()} == {"4242_0", "4242_1"}
    assert all(r["executor"] == "slurm" for r in records.values())


def test_missing_submitit_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    with pytest.raises(ExecutorError, match=r"pip install 'qbench-lic\[cluster\]'"):
        build_executor(ExecutorConfig(**{**SETTINGS, "kind": "slurm"}))
    plugins = qbench.plugins.get_plugins()
    m = load_matrix(tiny(tmp_path), plugins.registry)
    with pytest.raises(ExecutorError, match=r"qbench-lic\[cluster\]"):
        run_matrix(m, tmp_path / "run", executor={"kind": "submitit-local"}, echo=lambda *_: 0)
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def test_bad_executor_settings_are_refused_naming_the_key(tmp_path, registry):
    p = tiny(tmp_path)
    p.write_text(p.read_text() + '\n[executor]\nkind = "pbs"\n')
    from qbench.plan.matrix import MatrixError

    with pytest.raises(MatrixError, match=r"executor\.kind: expected one of local, submitit"):
        load_matrix(p, registry)
    m = load_matrix(tiny(tmp_path), registry)
    with pytest.raises(RunError, match="'time_min': must be >= 1"):
        run_matrix(m, tmp_path / "run", executor={"time_min": 0}, echo=lambda *_: 0)


def test_cpu_plan_uses_one_single_thread_worker_per_core(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("QBENCH_THREADS", raising=False)
    assert plan_devices("cpu", None, groups=4) == [("cpu", None)] * 2
    assert worker_threads() == 1
    assert plan_devices("cpu", None, groups=1) == [("cpu", None)]
    assert worker_threads() == 1, "one thread whatever the matrix: the same numbers"
    monkeypatch.setenv("QBENCH_THREADS", "2")
    assert worker_threads() == 2
    assert len(plan_devices("cpu", 3, groups=4)) == 3
    with pytest.raises(ExecutorError, match="--jobs-per-gpu"):
        plan_devices("cpu", None, jobs_per_gpu=0)


def test_slurm_without_slurm_is_refused_before_anything_is_written(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(ExecutorError, match="sbatch and srun not found on PATH"):
        build_executor(ExecutorConfig(**{**SETTINGS, "kind": "slurm"}))
    m = load_matrix(tiny(tmp_path), registry)
    with pytest.raises(ExecutorError, match="not a Slurm login node"):
        run_matrix(m, tmp_path / "run", executor={"kind": "slurm"}, echo=lambda *_: 0)
    assert not (tmp_path / "run").exists()


def test_every_executor_kind_has_its_class():
    assert tuple(EXECUTORS) == EXECUTOR_KINDS
    for kind, cls in EXECUTORS.items():
        assert cls.kind == kind


@pytest.mark.slow
def test_a_submitit_local_job_ends_with_a_killed_qbench(tmp_path):
    """kill -9 of qbench alone: its submitit-local job stops too (no orphan training on
    beside the next run, no row written after the run is gone)."""
    import signal
    import time

    from qbench.report.status import _alive

    from .test_resume import start_run

    m = tiny(tmp_path, '["noise"]', steps=3000)
    out = tmp_path / "run"
    proc = start_run(m, out, "--executor", "submitit-local")
    deadline, pid = time.time() + 300, None
    while time.time() < deadline and pid is None and proc.poll() is None:
        for beat in (out / "running").glob("*.json") if (out / "running").is_dir() else ():
            record = json.loads(beat.read_text())
            if record.get("step", 0) >= 1:  # training, in the job's own process
                pid = record["pid"]
        time.sleep(0.1)
    assert pid is not None and pid != proc.pid, proc.communicate()[0]
    os.kill(proc.pid, signal.SIGKILL)  # qbench only, not its process group
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the job trained on after qbench was killed"
    assert not list((out / "rows").glob("*.json"))
