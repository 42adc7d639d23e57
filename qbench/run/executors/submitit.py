"""The submitit executors: each group a submitit job (extra ``qbench-lic[cluster]``).

The groups that are ready go out together as one job array, a group that
starts from other groups' models (a derived or interpolated quantizer) once
those finished. Jobs are ``Checkpointable``: on preemption or time limit Slurm
requeues them and the training continues from its last snapshot
(:mod:`qbench.snapshots`). The scheduler job id of every submission is
recorded in ``submitted/<train_id>.json`` (``qbench status`` shows it with the
log paths).

:class:`SubmititExecutor` holds what both share; :class:`SubmititLocalExecutor`
(``submitit-local``) runs the jobs on this machine as the local pool would,
:class:`SlurmExecutor` (``slurm``) as Slurm job arrays.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qbench.plan.configs import ExecutorConfig
from qbench.plugins import DISABLE_ENV, get_plugins
from qbench.results import RunDir
from qbench.run.executors.base import Dispatch, Executor, ExecutorError, Group, ready
from qbench.run.executors.devices import local_plan, worker_threads
from qbench.run.worker import DatasetCache, failure_row, run_group


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ExecutorError(
            "the submitit-local and slurm executors need submitit: "
            "pip install 'qbench-lic[cluster]'"
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

    #: the pid of the qbench process that submitted the task, when the task runs on its
    #: machine (submitit-local): the task ends when that process does, however it ends
    watch: int | None = None

    def __call__(self, run_root: str, group: Group, threads: int, disable: str) -> list[str]:
        import warnings

        if self.watch is not None:
            _end_with(self.watch)

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
        )
        return [job.job_id for _, job in group]


def _end_with(pid: int) -> None:
    """End this process when process ``pid`` is gone (a thread polls it twice a second).

    submitit's local jobs are children of its controller process, not of qbench, so the
    kernel's parent-death signal cannot reach them; without this a job went on training
    after a ``kill -9`` of qbench, and a re-run trained the same group beside it."""
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except OSError:
                continue

    threading.Thread(target=watch, daemon=True, name="qbench-watch").start()


@dataclass
class _Submissions:
    """One run of a submitit executor: the groups to submit, the jobs out, the count done."""

    queue: list[Group]
    total: int
    running: list[tuple[Group, Any]] = field(default_factory=list)  # (group, submitit job)
    finished: int = 0


class SubmititExecutor(Executor):
    """Each group a submitit job; ready groups go out together as one job array.

    The config's ``time_min``, ``cpus_per_job``, ``mem_gb`` and ``gpus_per_job``
    are every job's resources. Subclasses say where the jobs run
    (:attr:`cluster`), how many may be out at once (:meth:`parallel`) and what
    becomes of those out when the run is interrupted (:meth:`abandon`).
    """

    #: submitit's ``cluster``
    cluster: str = ""

    def __init__(self, config: ExecutorConfig, poll_seconds: float = 1.0) -> None:
        super().__init__(config)
        self.submitit = _submitit()
        self.poll_seconds = poll_seconds

    def parallel(self, dispatch: Dispatch, groups: int) -> int:
        """How many of ``groups`` jobs may be out at once."""
        raise NotImplementedError

    def watched(self) -> int | None:
        """The pid the submitted tasks end with (None: they outlive qbench, on a cluster)."""
        return None

    def abandon(self, jobs: list[Any], dispatch: Dispatch) -> None:
        """The run was interrupted with ``jobs`` still out."""
        raise NotImplementedError

    def reattach(self, group: Group, dispatch: Dispatch) -> Any | None:
        """The job still on its way for ``group`` from an earlier ``qbench run``, or None."""
        return None

    def parameters(self) -> dict[str, Any]:
        """submitit's ``update_parameters`` for this config's resources."""
        c = self.config
        params: dict[str, Any] = {
            "timeout_min": int(c.time_min),
            "cpus_per_task": int(c.cpus_per_job),
            "mem_gb": float(c.mem_gb),
            "name": "qbench",
        }
        if c.gpus_per_job:
            params["gpus_per_node"] = int(c.gpus_per_job)
        return params

    def executor(self, folder: Path):
        """The submitit executor with this config's resources."""
        ex = self.submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        ex.update_parameters(**self.parameters())
        return ex

    def submit(self, groups: list[Group], dispatch: Dispatch, threads: int) -> list[Any]:
        """Submit ``groups`` as one job array; record each scheduler job id."""
        run_dir = dispatch.run_dir
        ex = self.executor(run_dir.root / "submitit")
        task, disable = GroupTask(), dispatch.disabled_env()
        task.watch = self.watched()
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

    def run(self, groups: list[Group], dispatch: Dispatch) -> None:
        threads = self.threads(dispatch, len(groups))
        parallel = self.parallel(dispatch, len(groups))
        state = _Submissions(list(groups), total=len(groups))
        self._reattach_all(state, dispatch)
        try:
            while state.queue or state.running:
                self._submit_ready(state, dispatch, threads, parallel)
                if not state.running:  # nothing can start: a source group failed for good
                    break
                time.sleep(self.poll_seconds)
                self._collect(state, dispatch)
        except BaseException:
            self.abandon([job for _, job in state.running], dispatch)
            raise
        _fail_unstartable(state.queue, dispatch)

    def _reattach_all(self, state: _Submissions, dispatch: Dispatch) -> None:
        """Watch the jobs an earlier ``qbench run`` left on their way instead of resubmitting."""
        for group in list(state.queue):
            job = self.reattach(group, dispatch)
            if job is not None:
                state.queue.remove(group)
                state.running.append((group, job))
                dispatch.echo(f"{group[0][1].describe()}: still queued as job {job.job_id}")

    def _submit_ready(
        self, state: _Submissions, dispatch: Dispatch, threads: int, parallel: int
    ) -> None:
        """Submit the ready groups, as many as there is room for, as one job array."""
        picks = ready(state.queue, [g for g, _ in state.running])
        picks = picks[: max(0, parallel - len(state.running))]
        if not picks:
            return
        batch = [state.queue[k] for k in picks]
        for k in sorted(picks, reverse=True):
            state.queue.pop(k)
        for g, job in zip(batch, self.submit(batch, dispatch, threads)):
            state.running.append((g, job))
            dispatch.echo(f"{g[0][1].describe()}: submitted as job {job.job_id}")

    def _collect(self, state: _Submissions, dispatch: Dispatch) -> None:
        """Take in the jobs that ended: say a finished group, queue a died one again."""
        for g, job in list(state.running):
            if not job.done():
                continue
            state.running.remove((g, job))
            if _may_retry(g, job, dispatch):
                state.queue.append(g)
                continue
            state.finished += 1
            dispatch.finished_group(g, state.finished, state.total)
            dispatch.console.finished(None)


def _may_retry(group: Group, job: Any, dispatch: Dispatch) -> bool:
    """True when ``job`` raised and ``group`` may run again (:meth:`Dispatch.crashed`)."""
    try:
        job.result()
    except Exception as exc:
        text = "".join(str(exc).splitlines(True)[-40:])
        return dispatch.crashed(group, f"job {job.job_id} {type(exc).__name__}", text)
    return False


def _fail_unstartable(queue: list[Group], dispatch: Dispatch) -> None:
    """``failed`` rows for the groups left: a model they start from failed for good."""
    for g in queue:
        for order, job in g:
            dispatch.run_dir.write_row(
                failure_row(job, "failed", "the model it starts from did not finish", order)
            )
    if queue:
        dispatch.merged()


class SubmititLocalExecutor(SubmititExecutor):
    """submitit's LocalExecutor: the jobs run on this machine.

    As many at once, with as many threads each, as the local executor's
    workers (:func:`qbench.run.executors.devices.plan_devices`), so that both
    give identical rows; the cluster keys of the config do not apply.
    """

    kind = "submitit-local"
    cluster = "local"

    def plan(self, dispatch: Dispatch, groups: int) -> list[str]:
        return [d for d, _ in local_plan(dispatch, groups)]

    def threads(self, dispatch: Dispatch, groups: int) -> int:
        return worker_threads()

    def parallel(self, dispatch: Dispatch, groups: int) -> int:
        return len(self.plan(dispatch, groups))

    def watched(self) -> int | None:
        """This machine's jobs end with the qbench process that submitted them."""
        return os.getpid()

    def abandon(self, jobs: list[Any], dispatch: Dispatch) -> None:
        """This machine's jobs end with the run."""
        for job in jobs:
            with contextlib.suppress(Exception):
                job.cancel(check=False)


#: Slurm states of a job that is still on its way (re-attached, not resubmitted)
_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}
#: a Slurm job id as ``submitted/<train_id>.json`` records it (``4242`` or ``4242_0``)
_SLURM_ID = re.compile(r"[0-9]+(_[0-9]+)?")


def _slurm_state(job_id: str, what: str) -> str | None:
    """Slurm's state of ``job_id`` (``sacct``), None when Slurm definitely does not know it;
    an :class:`ExecutorError` naming the job (``what``) when Slurm cannot be asked."""
    try:
        out = subprocess.run(
            ["sacct", "-j", job_id, "-o", "JobID,State", "--parsable2", "--noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        out = None
        why = str(exc)
    if out is None or out.returncode != 0:
        why = why if out is None else (out.stderr.strip() or f"exit status {out.returncode}")
        raise ExecutorError(
            f"Slurm job {job_id} ({what}): cannot ask Slurm whether it is still on its way "
            f"(sacct: {why.splitlines()[-1] if why else 'no answer'}); it is not submitted "
            f"again while it may run: run again once sacct answers, or scancel {job_id}"
        )
    base = job_id.split("_")[0]
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid == job_id or (jid.startswith(f"{base}_[") and "_" in job_id):
            states[jid] = state.split()[0] if state.split() else "UNKNOWN"
    return states.get(job_id) or next(iter(states.values()), None)


class SlurmExecutor(SubmititExecutor):
    """Slurm job arrays, from a login node (``sbatch`` and ``srun`` on PATH).

    The config's ``partition``, ``array_parallelism`` and ``additional`` (extra
    sbatch options) apply too. Slurm is asked about its jobs every 30 seconds
    at most; jobs still out when the run is interrupted keep running, and the
    same ``qbench run`` re-attaches to them.
    """

    kind = "slurm"
    cluster = "slurm"

    #: the shortest wait between two looks at the jobs
    MIN_POLL_SECONDS = 30.0

    def __init__(self, config: ExecutorConfig, poll_seconds: float = 1.0) -> None:
        super().__init__(config, max(poll_seconds, self.MIN_POLL_SECONDS))
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if missing:
            raise ExecutorError(
                f"--executor slurm: {' and '.join(missing)} not found on PATH: this machine is "
                "not a Slurm login node (run qbench there, or use --executor submitit-local)"
            )

    def plan(self, dispatch: Dispatch, groups: int) -> list[str]:
        device = "cuda" if self.config.gpus_per_job else "cpu"
        return [device] * min(groups or 1, int(self.config.array_parallelism))

    def threads(self, dispatch: Dispatch, groups: int) -> int:
        return int(self.config.cpus_per_job)

    def parallel(self, dispatch: Dispatch, groups: int) -> int:
        return groups  # Slurm throttles its arrays itself (array_parallelism)

    def parameters(self) -> dict[str, Any]:
        c = self.config
        params = {**super().parameters(), "slurm_array_parallelism": int(c.array_parallelism)}
        if c.partition:
            params["slurm_partition"] = c.partition
        if c.additional:
            params["slurm_additional_parameters"] = dict(c.additional)
        return params

    def reattach(self, group: Group, dispatch: Dispatch) -> Any | None:
        """The Slurm job of ``group``'s last submission while Slurm has it on its way; None
        when Slurm says it ended or does not know it (then it is submitted again). Anything
        else (``sacct`` failing, a record that names no Slurm job) is an error naming the
        job: a job that may still run is never submitted a second time."""
        train_id = group[0][1].train_id
        record = dispatch.run_dir.submission(train_id)
        if not record or record.get("executor") != self.kind:
            return None
        where = dispatch.run_dir.root / "submitted" / f"{train_id}.json"
        job_id = record.get("scheduler_job_id")
        if not isinstance(job_id, str) or not _SLURM_ID.fullmatch(job_id):
            raise ExecutorError(
                f"{where}: scheduler_job_id {job_id!r} is not a Slurm job id; if no job of "
                f"this run is still on its way, remove {where} and run again"
            )
        state = _slurm_state(job_id, f"{group[0][1].describe()}, {where}")
        if state not in _ALIVE:
            return None
        return self.submitit.SlurmJob(folder=dispatch.run_dir.root / "submitit", job_id=job_id)

    def abandon(self, jobs: list[Any], dispatch: Dispatch) -> None:
        """Slurm's jobs go on; the same ``qbench run`` re-attaches to them."""
        dispatch.echo(
            f"{len(jobs)} Slurm job(s) keep running; run the same command again to "
            "watch them and submit the rest"
        )
