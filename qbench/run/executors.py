"""Where do the jobs run? Executors: this machine's worker pool, submitit, Slurm.

An executor takes the train groups of a run (a *group* is the jobs that share
one trained model: ``[(order, Job), ...]``) and runs each to completion; the
group's own code (:func:`qbench.run.worker.run_group`) writes one atomic row per
job into the run directory, so the runner never knows where a job ran and
merging ``results.csv`` stays idempotent. Executors:

* ``local`` (:class:`LocalExecutor`): long-lived ``spawn`` worker processes on
  this machine, one per GPU (times ``--jobs-per-gpu``), else CPU workers with
  the cores split between them (:func:`plan_devices`).
* ``submitit-local`` and ``slurm`` (:class:`SubmititExecutor`): each group is a
  submitit job (``submitit.AutoExecutor``; extra ``qbench[cluster]``); the
  groups that are ready go out together as one job array, a group that starts
  from other groups' models (a derived or interpolated quantizer) once those
  finished. Jobs are ``Checkpointable``: on preemption or time limit Slurm
  requeues them and the training continues from its last snapshot
  (:mod:`qbench.run.resume`). The scheduler job id of every submission is
  recorded in ``submitted/<train_id>.json`` (``qbench status`` shows it with
  the log paths).

A group whose process dies (a crash, an OOM kill, a node failure) is tried
again, at most :data:`MAX_ATTEMPTS` times in all; then its jobs get ``failed``
rows naming the log of the last attempt, and the rest of the run goes on. An
interrupted group (SIGINT, SIGTERM) is not a failure: it is queued again, or
left for the next run.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qbench.plan.jobs import Job
from qbench.plugins import DISABLE_ENV, get_plugins
from qbench.registry import QbenchError
from qbench.results import RunDir
from qbench.run.worker import DatasetCache, failure_row, run_group

#: ``--executor`` / ``[executor] kind`` values
#: attempts of a group whose process dies before it is marked failed
MAX_ATTEMPTS = 3

Group = list[tuple[int, Job]]


class ExecutorError(QbenchError):
    """An executor that cannot run here (a missing extra, bad settings)."""


@dataclass
class Dispatch:
    """What every executor is given by the runner.

    Attributes:
        run_dir: the run directory (rows, checkpoints, logs).
        device: ``auto``, ``cpu`` or ``cuda`` (``--device``).
        workers: ``--workers`` (None: the executor's default).
        jobs_per_gpu: groups that share one GPU at a time.
        show_progress: progress bars (local workers only).
        disable: plugins disabled for this run (passed to every job's process).
        echo: where progress lines go.
        merged: called after each finished group (merges ``results.csv``).
    """

    run_dir: RunDir
    device: str = "auto"
    workers: int | None = None
    jobs_per_gpu: int = 1
    show_progress: bool = True
    disable: tuple[str, ...] = ()
    echo: Callable[[str], None] = print
    merged: Callable[[], None] = lambda: None
    attempts: dict[str, int] = field(default_factory=dict)

    def disabled_env(self) -> str:
        names = set(self.disable) | {n for n in os.environ.get(DISABLE_ENV, "").split(",") if n}
        return ",".join(sorted(names))

    def finished_group(self, group: Group, n: int, total: int) -> None:
        """Say what a finished group's rows hold and merge them."""
        rows = {r["job_id"]: r for r in self.run_dir.rows()}
        for _, job in group:
            r = rows.get(job.job_id, {})
            status = r.get("status", "missing")
            if status == "ok":
                self.echo(
                    f"[{n}/{total}] {job.describe()}: bpp={r.get('bpp', float('nan')):.4f} "
                    f"psnr={r.get('psnr', float('nan')):.2f} dB "
                    f"({r.get('train_seconds', 0):.0f}s train, "
                    f"{r.get('eval_seconds', 0):.1f}s eval)"
                )
            else:
                self.echo(f"[{n}/{total}] {job.describe()}: {status}: {r.get('reason', '')}")
        self.merged()

    def crashed(self, group: Group, reason: str, log_text: str) -> bool:
        """Count one more died attempt of ``group``; True when it may run again.

        After :data:`MAX_ATTEMPTS`, the group's jobs without a row get a
        ``failed`` row naming the log of the last attempt.
        """
        train_id = group[0][1].train_id
        n = self.attempts[train_id] = self.attempts.get(train_id, 0) + 1
        log = self.run_dir.logs_dir / f"{train_id}.attempt-{n}.log"
        with contextlib.suppress(OSError):
            log.write_text(f"{reason}\n\n{log_text}")
        if n < MAX_ATTEMPTS:
            self.echo(f"{group[0][1].describe()}: {reason}; attempt {n + 1} of {MAX_ATTEMPTS}")
            return True
        done = self.run_dir.finished()
        for order, job in group:
            if job.job_id not in done:
                self.run_dir.write_row(
                    failure_row(job, "failed", f"{reason} ({n} attempts; last log: {log})", order)
                )
        self.echo(f"{group[0][1].describe()}: {reason} ({n} attempts): marked failed; see {log}")
        return False


def ready(queue: list[Group], running: list[Group]) -> list[int]:
    """Indices in ``queue`` of the groups whose source models are all finished."""
    blocked = {g[0][1].train_id for g in queue} | {g[0][1].train_id for g in running}
    return [k for k, g in enumerate(queue) if not set(g[0][1].recipe.sources) & blocked]


class Executor:
    """Runs train groups to completion (see the module docstring)."""

    #: the ``--executor`` name
    kind: str = ""

    def plan(self, dispatch: Dispatch, groups: int) -> list[str]:
        """The devices its workers or jobs use, for the manifest and the first log line."""
        raise NotImplementedError

    def threads(self, dispatch: Dispatch, groups: int) -> int:
        """Torch threads per job process (recorded: CPU results depend on it)."""
        raise NotImplementedError

    def run(self, groups: list[Group], dispatch: Dispatch) -> None:
        """Run every group; each writes its jobs' rows. Returns when all are done or given up."""
        raise NotImplementedError


def build_executor(settings: dict[str, Any]) -> Executor:
    """The executor of an ``[executor]`` table (after the command line's overrides)."""
    if settings["kind"] == "local":
        return LocalExecutor()
    return SubmititExecutor(settings)


# ---------------------------------------------------------------------------
# local: long-lived spawn workers
# ---------------------------------------------------------------------------


def plan_devices(
    device: str, workers: int | None, groups: int = 1, jobs_per_gpu: int = 1
) -> list[tuple[str, str | None]]:
    """``[(torch device, CUDA_VISIBLE_DEVICES or None), ...]``, one entry per local worker.

    GPUs: ``jobs_per_gpu`` workers per visible GPU (or ``workers``, spread
    round-robin). CPU: ``workers``, else as many one-core workers as there
    are cores and groups to run (two one-thread workers finished a 4-job
    matrix 1.33-1.41x sooner than one two-thread worker on 2 cores: small
    convolutions gain little from torch's intra-op threads).
    """
    if workers is not None and workers < 1:
        raise ExecutorError(f"--workers must be >= 1, got {workers}")
    if jobs_per_gpu < 1:
        raise ExecutorError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    if device not in ("auto", "cpu", "cuda"):
        raise ExecutorError(f"--device must be auto, cpu or cuda, got {device!r}")
    n_gpu = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and n_gpu == 0:
        raise ExecutorError("--device cuda: no CUDA GPU is visible")
    if n_gpu:
        n = workers or n_gpu * jobs_per_gpu
        return [("cuda", str(i % n_gpu)) for i in range(n)]
    return [("cpu", None)] * (workers or max(1, min(os.cpu_count() or 1, groups)))


def worker_threads() -> int:
    """Torch threads per CPU worker: ``$QBENCH_THREADS``, else 1.

    One thread per worker and one worker per core (:func:`plan_devices`):
    on CPU a training is bit-reproducible only with the same threads (another
    count sums floats in another order, which a training amplifies), so a
    fixed default makes a job's numbers independent of the matrix it is part
    of and of the machine's core count. Recorded in the manifest;
    ``QBENCH_THREADS`` trades that for intra-op threads.
    """
    return int(os.environ.get("QBENCH_THREADS", "0") or 0) or 1


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
    group: Group | None = None


class LocalExecutor(Executor):
    """Worker processes on this machine (see :func:`plan_devices`).

    A worker that dies (segfault, OOM kill) is replaced and its group tried
    again (:meth:`Dispatch.crashed`); workers die with the qbench process.
    """

    kind = "local"

    def plan(self, dispatch: Dispatch, groups: int) -> list[str]:
        return [d for d, _ in self._plan(dispatch, groups)]

    def threads(self, dispatch: Dispatch, groups: int) -> int:
        return worker_threads()

    @staticmethod
    def _plan(dispatch: Dispatch, groups: int) -> list[tuple[str, str | None]]:
        plan = plan_devices(dispatch.device, dispatch.workers, groups, dispatch.jobs_per_gpu)
        return plan[: max(1, groups)]

    def run(self, groups: list[Group], dispatch: Dispatch) -> None:
        ctx = mp.get_context("spawn")
        plan = self._plan(dispatch, len(groups))
        threads = worker_threads()
        env_disable = dispatch.disabled_env()
        run_dir = dispatch.run_dir
        queue = list(groups)
        total = len(queue)
        workers = [_Worker(i, dev, vis) for i, (dev, vis) in enumerate(plan)]
        finished = 0
        interrupted: dict[str, int] = {}

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
                        dispatch.show_progress,
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

        def assign(w: _Worker) -> None:
            w.group = None
            running = [x.group for x in workers if x.group is not None]
            for k in ready(queue, running)[:1]:
                w.group = queue.pop(k)
            if w.group is None:
                return
            extra = f" (+{len(w.group) - 1} eval sets)" if len(w.group) > 1 else ""
            dispatch.echo(f"[worker {w.index}] start {w.group[0][1].describe()}{extra}")
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
                got = mp.connection.wait(
                    [w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0
                )
                for w in busy:
                    if w.conn in got:
                        try:
                            w.conn.recv()
                        except (EOFError, OSError):
                            got.append(w.proc.sentinel)
                        else:
                            finished += 1
                            dispatch.finished_group(w.group, finished, total)
                            assign(w)
                            continue
                    if w.proc.sentinel in got or not w.proc.is_alive():
                        w.proc.join(timeout=5)
                        reason = _exit_reason(w.proc.exitcode)
                        code = w.proc.exitcode or 0
                        train_id = w.group[0][1].train_id
                        if code < 0 and -code in INTERRUPTS:
                            # an interrupted job is not a failed job: no row, it runs again
                            interrupted[train_id] = interrupted.get(train_id, 0) + 1
                            if interrupted[train_id] <= 2:
                                queue.append(w.group)
                                dispatch.echo(
                                    f"[worker {w.index}] {reason}; its jobs are queued again"
                                )
                            else:
                                dispatch.echo(
                                    f"[worker {w.index}] {reason} again; its jobs are left for "
                                    "the next run (no row is written)"
                                )
                        elif dispatch.crashed(w.group, f"worker process {reason}", ""):
                            queue.append(w.group)
                        else:
                            finished += 1
                            dispatch.merged()
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
        return "did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"died ({name})"
    return f"exited with code {code}"


# ---------------------------------------------------------------------------
# submitit: its LocalExecutor, or Slurm job arrays
# ---------------------------------------------------------------------------


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ExecutorError(
            "the submitit-local and slurm executors need submitit: pip install 'qbench[cluster]'"
        ) from None
    return submitit


def _task_base():
    """``submitit.helpers.Checkpointable`` when submitit is installed (requeue on preemption)."""
    try:
        import submitit
    except ImportError:
        return object
    return submitit.helpers.Checkpointable


class GroupTask(_task_base()):
    """One submitted train group: run it in the job's process, as a local worker would.

    Checkpointable: when Slurm preempts the job or its time runs out, submitit
    requeues this same call, and the training continues from its snapshot.
    """

    def __call__(self, run_root: str, group: Group, threads: int, disable: str) -> list[str]:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.set_num_threads(threads)
        os.environ[DISABLE_ENV] = disable
        plugins = get_plugins()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        run_group(
            group,
            RunDir(run_root),
            plugins,
            device,
            DatasetCache(plugins.registry),
            show_progress=False,
        )
        return [job.job_id for _, job in group]


#: Slurm states of a job that is still on its way (re-attached, not resubmitted)
_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


class SubmititExecutor(Executor):
    """Each group a submitit job; ready groups go out together as one job array.

    ``settings`` is the ``[executor]`` table: ``kind`` (``submitit-local`` or
    ``slurm``), ``partition``, ``gpus_per_job``, ``cpus_per_job``, ``mem_gb``,
    ``time_min``, ``array_parallelism`` and ``additional`` (extra sbatch
    options). ``submitit-local`` runs as many jobs at once, with as many
    threads each, as the local executor's workers (:func:`plan_devices`), so
    that both give identical rows; the cluster keys apply to Slurm only.
    """

    def __init__(self, settings: dict[str, Any], poll_seconds: float = 1.0) -> None:
        self.submitit = _submitit()
        self.settings = dict(settings)
        self.kind = settings["kind"]
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if self.kind == "slurm" and missing:
            raise ExecutorError(
                f"--executor slurm: {' and '.join(missing)} not found on PATH: this machine is "
                "not a Slurm login node (run qbench there, or use --executor submitit-local)"
            )
        self.poll_seconds = poll_seconds if self.kind != "slurm" else max(poll_seconds, 30.0)

    def plan(self, dispatch: Dispatch, groups: int) -> list[str]:
        if self.kind == "slurm":
            return ["cuda" if self.settings["gpus_per_job"] else "cpu"] * min(
                groups or 1, int(self.settings["array_parallelism"])
            )
        return LocalExecutor().plan(dispatch, groups)

    def threads(self, dispatch: Dispatch, groups: int) -> int:
        if self.kind == "slurm":
            return int(self.settings["cpus_per_job"])
        return LocalExecutor().threads(dispatch, groups)

    def executor(self, folder: Path):
        """The submitit executor with this table's resources."""
        s = self.settings
        cluster = "slurm" if self.kind == "slurm" else "local"
        ex = self.submitit.AutoExecutor(folder=folder, cluster=cluster)
        params: dict[str, Any] = {
            "timeout_min": int(s["time_min"]),
            "cpus_per_task": int(s["cpus_per_job"]),
            "mem_gb": float(s["mem_gb"]),
            "name": "qbench",
        }
        if s["gpus_per_job"]:
            params["gpus_per_node"] = int(s["gpus_per_job"])
        if cluster == "slurm":
            params["slurm_array_parallelism"] = int(s["array_parallelism"])
            if s["partition"]:
                params["slurm_partition"] = s["partition"]
            if s["additional"]:
                params["slurm_additional_parameters"] = dict(s["additional"])
        ex.update_parameters(**params)
        return ex

    def submit(self, groups: list[Group], dispatch: Dispatch, threads: int) -> list[Any]:
        """Submit ``groups`` as one job array; record each scheduler job id."""
        run_dir = dispatch.run_dir
        ex = self.executor(run_dir.root / "submitit")
        task, disable = GroupTask(), dispatch.disabled_env()
        with ex.batch():
            jobs = [ex.submit(task, str(run_dir.root), g, threads, disable) for g in groups]
        for g, job in zip(groups, jobs):
            train_id = g[0][1].train_id
            run_dir.record_submission(
                train_id,
                {
                    "executor": self.kind,
                    "scheduler_job_id": str(job.job_id),
                    "attempt": dispatch.attempts.get(train_id, 0) + 1,
                    "stdout": str(job.paths.stdout),
                    "stderr": str(job.paths.stderr),
                    "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        return jobs

    def _reattach(self, group: Group, dispatch: Dispatch) -> Any | None:
        """The Slurm job still on its way for ``group`` from an earlier ``qbench run``, or None."""
        if self.kind != "slurm":
            return None
        record = dispatch.run_dir.submission(group[0][1].train_id)
        if not record or record.get("executor") != "slurm":
            return None
        try:
            job = self.submitit.SlurmJob(
                folder=dispatch.run_dir.root / "submitit", job_id=record["scheduler_job_id"]
            )
            return job if job.state in _ALIVE else None
        except Exception:
            return None

    def run(self, groups: list[Group], dispatch: Dispatch) -> None:
        threads = self.threads(dispatch, len(groups))
        # Slurm throttles its arrays itself; this machine runs what the local plan would
        parallel = len(groups) if self.kind == "slurm" else len(self.plan(dispatch, len(groups)))
        queue, running = list(groups), []  # running: [(group, submitit job)]
        total, finished = len(queue), 0
        for group in list(queue):
            job = self._reattach(group, dispatch)
            if job is not None:
                queue.remove(group)
                running.append((group, job))
                dispatch.echo(f"{group[0][1].describe()}: still queued as job {job.job_id}")
        try:
            while queue or running:
                room = parallel - len(running)
                picks = ready(queue, [g for g, _ in running])[: max(0, room)]
                if picks:
                    batch = [queue[k] for k in picks]
                    for k in sorted(picks, reverse=True):
                        queue.pop(k)
                    jobs = self.submit(batch, dispatch, threads)
                    for g, job in zip(batch, jobs):
                        running.append((g, job))
                        dispatch.echo(f"{g[0][1].describe()}: submitted as job {job.job_id}")
                if not running:  # nothing can start: a source group failed for good
                    break
                time.sleep(self.poll_seconds)
                for g, job in list(running):
                    if not job.done():
                        continue
                    running.remove((g, job))
                    try:
                        job.result()
                    except Exception as exc:
                        text = "".join(str(exc).splitlines(True)[-40:])
                        reason = f"job {job.job_id} {type(exc).__name__}"
                        if dispatch.crashed(g, reason, text):
                            queue.append(g)
                            continue
                    finished += 1
                    dispatch.finished_group(g, finished, total)
        except BaseException:
            if self.kind == "submitit-local":  # this machine's jobs end with the run
                for _, job in running:
                    with contextlib.suppress(Exception):
                        job.cancel(check=False)
            else:  # Slurm's go on; the same `qbench run` re-attaches to them
                dispatch.echo(
                    f"{len(running)} Slurm job(s) keep running; run the same command again to "
                    "watch them and submit the rest"
                )
            raise
        for g in queue:  # sources that failed for good: these cannot start
            for order, job in g:
                dispatch.run_dir.write_row(
                    failure_row(job, "failed", "the model it starts from did not finish", order)
                )
        if queue:
            dispatch.merged()
