"""Schedule a matrix's jobs on worker processes, resume, and survive faults.

Jobs that differ only in the evaluation dataset share one trained model
(a *train group*); a group is the unit a worker runs. Workers are long-lived
``spawn`` processes; each takes one group at a time. ``--device auto`` runs
one worker per visible CUDA GPU (``CUDA_VISIBLE_DEVICES`` set per worker),
else CPU workers with torch threads split so that they do not oversubscribe
the cores (``QBENCH_THREADS`` sets the threads per worker instead). A worker
that dies (segfault, OOM kill) gets its unfinished jobs marked ``failed`` with
the exit reason, is replaced, and the run goes on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qbench import __version__
from qbench.jobs import Job
from qbench.matrix import Matrix
from qbench.plugins import DISABLE_ENV, PluginSet, get_plugins
from qbench.preflight import preflight
from qbench.rd import LOSS
from qbench.registry import QbenchError
from qbench.results import RunDir
from qbench.schedule import AVERAGE_SUFFIXES, FINAL_SUFFIXES
from qbench.worker import DatasetCache, failure_row, run_group


class RunError(QbenchError):
    """A run that cannot start (bad dataset, bad device)."""


@dataclass
class RunSummary:
    out: Path
    total: int
    skipped: int
    ran: int
    statuses: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# workers (parent side)
# ---------------------------------------------------------------------------


#: Exit signals of a worker that mean "interrupted", not "the job failed".
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _die_with_parent(parent: int) -> None:
    """End this worker when the qbench process that started it ends, however it ends.

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``);
    elsewhere, and as a second line, a thread watches the parent's pid.
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="qbench-parent-watch").start()


def _worker_main(
    conn, index: int, device: str, threads: int, out: str, show: bool, parent: int, sigint
) -> None:
    """Entry point of a spawned worker: run groups until told to stop.

    The worker takes SIGINT as its parent does (a parent that ignores it, as a
    background job of a script does, has workers that ignore it too).
    """
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == signal.SIG_IGN else signal.SIG_DFL)
    torch.set_num_threads(threads)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    plugins = get_plugins()
    run_dir = RunDir(out)
    datasets = DatasetCache(plugins.registry)
    dev = torch.device(device)
    while True:
        jobs = conn.recv()
        if jobs is None:
            break
        run_group(jobs, run_dir, plugins, dev, datasets, position=index, show_progress=show)
        conn.send(("done", [j.job_id for _, j in jobs]))


@dataclass
class _Worker:
    index: int
    device: str
    cuda_visible: str | None
    proc: Any = None
    conn: Any = None
    group: list[tuple[int, Job]] | None = None


def plan_devices(device: str, workers: int | None) -> list[tuple[str, str | None]]:
    """``[(torch device, CUDA_VISIBLE_DEVICES or None), ...]``, one entry per worker."""
    if workers is not None and workers < 1:
        raise RunError(f"--workers must be >= 1, got {workers}")
    if device not in ("auto", "cpu", "cuda"):
        raise RunError(f"--device must be auto, cpu or cuda, got {device!r}")
    n_gpu = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and n_gpu == 0:
        raise RunError("--device cuda: no CUDA GPU is visible")
    if n_gpu:
        n = workers or n_gpu
        return [("cuda", str(i % n_gpu)) for i in range(n)]
    return [("cpu", None)] * (workers or 1)


def run_matrix(
    matrix: Matrix,
    out: str | Path,
    *,
    workers: int | None = None,
    device: str = "auto",
    force: bool = False,
    append: bool = False,
    rerun_failed: bool = False,
    disable: tuple[str, ...] = (),
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    """Run (or resume) every job of ``matrix`` into the run directory ``out``.

    Everything knowable before the first job is checked first
    (:func:`qbench.preflight.preflight`); then the directory is locked for
    this run and claimed for this matrix (:meth:`RunDir.claim`: ``force``
    sets another matrix's run aside, ``append`` adds to it).
    """
    plugins = get_plugins(disable)
    plan_devices(device, workers)  # a bad --device is known now
    for line in preflight(matrix, plugins.registry):
        echo(f"warning: {line}")
    run_dir = RunDir(out)
    run_dir.ensure()
    with run_dir.lock():
        for p in run_dir.clean_leftovers():
            echo(f"removed {p.name}, left by a run that was killed while writing")
        said = run_dir.claim(matrix.identity(), force=force, append=append)
        if said:
            echo(said)
        return _run_locked(
            matrix,
            run_dir,
            plugins,
            workers,
            device,
            force,
            rerun_failed,
            disable,
            show_progress,
            echo,
        )


def _run_locked(
    matrix, run_dir, plugins, workers, device, force, rerun_failed, disable, show_progress, echo
) -> RunSummary:
    out = run_dir.root
    done = set() if force else run_dir.finished(rerun_failed=rerun_failed)
    ordered = list(enumerate(matrix.jobs))
    pending = [(o, j) for o, j in ordered if j.job_id not in done]
    groups: dict[str, list[tuple[int, Job]]] = {}
    for o, j in pending:
        groups.setdefault(j.train_id, []).append((o, j))
    if force:  # re-train too: forget the checkpoints of the jobs that will run again
        for train_id in groups:
            for suffix in (".pt", ".json"):
                (run_dir.ckpt_dir / f"{train_id}{suffix}").unlink(missing_ok=True)
    plan = plan_devices(device, workers)
    if len(plan) > max(1, len(groups)):
        plan = plan[: max(1, len(groups))]
    manifest = _manifest(matrix, plugins, plan, disable)
    run_dir.write_manifest(manifest)
    metric_cols = [
        c + suffix
        for name, cols in manifest["metric_columns"].items()
        for c in cols
        for suffix in (
            FINAL_SUFFIXES + AVERAGE_SUFFIXES if name in manifest["schedule_metrics"] else ("",)
        )
    ]
    echo(
        f"qbench {__version__}: {matrix.name}: {len(matrix.jobs)} jobs, "
        f"{len(matrix.jobs) - len(pending)} already finished, {len(pending)} to run on "
        f"{len(plan)} worker(s) ({plan[0][0]})"
    )
    for p in plugins.problems:
        echo(f"warning: plugin {p.plugin} ({p.distribution}): {p.reason}")
    if groups:
        _dispatch(list(groups.values()), plan, run_dir, show_progress, disable, echo, metric_cols)
    try:
        run_dir.write_tables(metric_cols)
    except OSError as exc:
        raise RunError(
            f"{out}: could not write results.csv ({exc.strerror or exc}); every finished job's "
            "row is kept in rows/, run `qbench report` once there is room"
        ) from exc
    rows = {r["job_id"]: r for r in run_dir.rows()}
    statuses: dict[str, int] = {}
    for j in matrix.jobs:
        s = rows.get(j.job_id, {}).get("status", "missing")
        statuses[s] = statuses.get(s, 0) + 1
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest["statuses"] = statuses
    run_dir.write_manifest(manifest)
    return RunSummary(
        Path(out), len(matrix.jobs), len(matrix.jobs) - len(pending), len(pending), statuses
    )


def _schedule_metrics(matrix: Matrix, plugins: PluginSet) -> list[str]:
    """The matrix's metrics that are measured over the training schedule (``per_probe``)."""
    return [
        name
        for name in matrix.eval.metrics
        if plugins.registry.build("metric", name).measures_schedule()
    ]


def _metric_columns(matrix: Matrix, plugins: PluginSet) -> dict[str, list[str]]:
    """``{metric name: its declared columns}``, in the matrix's order."""
    return {
        name: list(plugins.registry.build("metric", name).columns) for name in matrix.eval.metrics
    }


def worker_threads(workers: int) -> int:
    """Torch threads per worker: ``$QBENCH_THREADS``, else the cores split between workers.

    Recorded in the manifest: on CPU a run is bit-reproducible with the same
    threads per worker (another count sums floats in another order, which a
    training amplifies; set ``QBENCH_THREADS`` to match a manifest).
    """
    return int(os.environ.get("QBENCH_THREADS", "0") or 0) or max(
        1, (os.cpu_count() or 1) // workers
    )


def _dispatch(groups, plan, run_dir: RunDir, show: bool, disable, echo, metric_cols) -> None:
    ctx = mp.get_context("spawn")
    threads = worker_threads(len(plan))
    env_disable = ",".join(
        sorted(set(disable) | set(n for n in os.environ.get(DISABLE_ENV, "").split(",") if n))
    )
    queue = list(groups)
    total = len(queue)
    workers = [_Worker(i, dev, vis) for i, (dev, vis) in enumerate(plan)]
    finished_groups = 0
    interrupted: dict[str, int] = {}

    def merge() -> None:
        """Merge the rows so far; a failure (a full disk) is said and the run goes on."""
        try:
            run_dir.write_tables(metric_cols)
        except OSError as exc:
            echo(
                f"warning: could not merge results.csv ({exc.strerror or exc}); the rows are "
                "kept and merged again after the next job"
            )

    def start(w: _Worker) -> None:
        parent, child = ctx.Pipe()
        saved = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", DISABLE_ENV)}
        if w.cuda_visible is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = w.cuda_visible
        os.environ[DISABLE_ENV] = env_disable
        try:
            w.proc = ctx.Process(
                target=_worker_main,
                args=(
                    child,
                    w.index,
                    w.device,
                    threads,
                    str(run_dir.root),
                    show,
                    os.getpid(),
                    signal.getsignal(signal.SIGINT),
                ),
                daemon=True,
            )
            w.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        w.conn = parent

    def unfinished() -> set[str]:
        ids = {g[0][1].train_id for g in queue}
        return ids | {w.group[0][1].train_id for w in workers if w.group is not None}

    def assign(w: _Worker) -> None:
        w.group = None
        blocked = unfinished()
        for k, group in enumerate(queue):
            if not set(group[0][1].recipe.sources) & blocked:
                w.group = queue.pop(k)
                break
        if w.group is None:
            return
        names = ", ".join(j.describe() for _, j in w.group[:1])
        echo(
            f"[worker {w.index}] start {names}"
            + (f" (+{len(w.group) - 1} eval sets)" if len(w.group) > 1 else "")
        )
        w.conn.send(w.group)

    try:
        for w in workers:
            start(w)
            assign(w)
        while any(w.group is not None for w in workers):
            for w in workers:
                if w.group is None and queue:
                    assign(w)
            busy = [w for w in workers if w.group is not None]
            ready = mp.connection.wait(
                [w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0
            )
            for w in busy:
                if w.conn in ready:
                    try:
                        w.conn.recv()
                    except (EOFError, OSError):
                        ready.append(w.proc.sentinel)
                    else:
                        finished_groups += 1
                        _echo_rows(run_dir, w.group, echo, finished_groups, total)
                        merge()
                        assign(w)
                        continue
                if w.proc.sentinel in ready or not w.proc.is_alive():
                    w.proc.join(timeout=5)
                    reason = _exit_reason(w.proc.exitcode)
                    done = run_dir.finished()
                    code = w.proc.exitcode or 0
                    if code < 0 and -code in INTERRUPTS:
                        # an interrupted job is not a failed job: no row, it runs again
                        train_id = w.group[0][1].train_id
                        interrupted[train_id] = interrupted.get(train_id, 0) + 1
                        if interrupted[train_id] <= 2:
                            queue.append(w.group)
                            echo(f"[worker {w.index}] {reason}; its jobs are queued again")
                        else:
                            echo(
                                f"[worker {w.index}] {reason} again; its jobs are left for the "
                                "next run (no row is written)"
                            )
                    else:
                        for order, job in w.group:
                            if job.job_id not in done:
                                run_dir.write_row(failure_row(job, "failed", reason, order))
                        finished_groups += 1
                        echo(f"[worker {w.index}] {reason}; its unfinished jobs are marked failed")
                        merge()
                    start(w)
                    assign(w)
    finally:
        for w in workers:
            if w.proc is not None and w.proc.is_alive():
                with contextlib.suppress(OSError, BrokenPipeError):
                    w.conn.send(None)
        deadline = time.time() + 5
        for w in workers:
            if w.proc is not None:
                w.proc.join(timeout=max(0.1, deadline - time.time()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "worker did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"worker process died ({name})"
    return f"worker process exited with code {code}"


def _echo_rows(run_dir: RunDir, group, echo, n: int, total: int) -> None:
    rows = {r["job_id"]: r for r in run_dir.rows()}
    for _, job in group:
        r = rows.get(job.job_id, {})
        status = r.get("status", "missing")
        if status == "ok":
            echo(
                f"[{n}/{total}] {job.describe()}: bpp={r.get('bpp', float('nan')):.4f} "
                f"psnr={r.get('psnr', float('nan')):.2f} dB "
                f"({r.get('train_seconds', 0):.0f}s train, {r.get('eval_seconds', 0):.1f}s eval)"
            )
        else:
            echo(f"[{n}/{total}] {job.describe()}: {status}: {r.get('reason', '')}")


def _git_commit() -> str:
    import subprocess

    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _manifest(matrix: Matrix, plugins: PluginSet, plan, disable) -> dict[str, Any]:
    import platform

    import compressai

    return {
        "qbench": __version__,
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": [d for d, _ in plan],
        "cuda_devices": [v for _, v in plan if v is not None],
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "workers": len(plan),
        "threads_per_worker": worker_threads(len(plan)),
        "loss": LOSS,
        "seeds": sorted({j.seed for j in matrix.jobs}),
        "matrix": matrix.resolved(),
        "metric_columns": _metric_columns(matrix, plugins),
        "schedule_metrics": _schedule_metrics(matrix, plugins),
        "matrix_file": matrix.raw,
        "jobs": [
            {"job_id": j.job_id, "train_id": j.train_id, "describe": j.describe()}
            for j in matrix.jobs
        ],
        "plugins": [
            {"plugin": p.name, "distribution": p.distribution, "version": p.version}
            for p in plugins.plugins
        ],
        "plugin_problems": [vars(p) for p in plugins.problems],
        "disabled_plugins": list(disable),
        "quantizers": {
            j.quantizer.label: {
                "name": j.quantizer.name,
                "description": plugins.registry.get("quantizer", j.quantizer.name).description,
            }
            for j in matrix.jobs
        },
    }
