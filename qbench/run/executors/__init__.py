"""Where do the jobs run? Executors: this machine's worker pool, submitit, Slurm.

An executor takes the train groups of a run (a *group* is the jobs that share
one trained model: ``[(order, Job), ...]``) and runs each to completion; the
group's own code (:func:`qbench.run.worker.run_group`) writes one atomic row per
job into the run directory, so the runner never knows where a job ran and
merging ``results.csv`` stays idempotent. One class per ``[executor] kind``
(:data:`EXECUTORS`), built from the section's :class:`ExecutorConfig`
(:func:`build_executor`):

* ``local`` (:class:`LocalExecutor`, :mod:`.local`): long-lived ``spawn``
  worker processes on this machine, one per GPU (times ``--jobs-per-gpu``),
  else CPU workers with the cores split between them (:func:`plan_devices`,
  :mod:`.devices`).
* ``submitit-local`` (:class:`SubmititLocalExecutor`) and ``slurm``
  (:class:`SlurmExecutor`), both :class:`SubmititExecutor` (:mod:`.submitit`):
  each group is a submitit job; the ready groups go out together as one job
  array, a group that starts from other groups' models once those finished.
  Slurm jobs are requeued on preemption and continue from their last snapshot.

A group whose process dies (a crash, an OOM kill, a node failure) is tried
again, at most :data:`MAX_ATTEMPTS` times in all; then its jobs get ``failed``
rows naming the log of the last attempt, and the rest of the run goes on
(:class:`Dispatch`, :mod:`.base`). An interrupted group (SIGINT, SIGTERM) is
not a failure: it is queued again, or left for the next run.
"""

from __future__ import annotations

from qbench.plan.configs import ExecutorConfig
from qbench.run.executors.base import MAX_ATTEMPTS, Dispatch, Executor, ExecutorError, Group, ready
from qbench.run.executors.devices import plan_devices, worker_threads
from qbench.run.executors.local import LocalExecutor
from qbench.run.executors.submitit import (
    GroupTask,
    SlurmExecutor,
    SubmititExecutor,
    SubmititLocalExecutor,
)

#: the executor class of each ``[executor] kind``
EXECUTORS: dict[str, type[Executor]] = {
    cls.kind: cls for cls in (LocalExecutor, SubmititLocalExecutor, SlurmExecutor)
}


def build_executor(config: ExecutorConfig) -> Executor:
    """The executor of an ``[executor]`` section (after the command line's overrides)."""
    return EXECUTORS[config.kind](config)


__all__ = [
    "EXECUTORS",
    "MAX_ATTEMPTS",
    "Dispatch",
    "Executor",
    "ExecutorError",
    "Group",
    "GroupTask",
    "LocalExecutor",
    "SlurmExecutor",
    "SubmititExecutor",
    "SubmititLocalExecutor",
    "build_executor",
    "plan_devices",
    "ready",
    "worker_threads",
]
