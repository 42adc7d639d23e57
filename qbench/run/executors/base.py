"""What every executor shares: the :class:`Executor` contract, the runner's :class:`Dispatch`.

A *group* is the jobs that share one trained model (``[(order, Job), ...]``);
an executor runs each group to completion, and the group's own code
(:func:`qbench.run.worker.run_group`) writes one atomic row per job into the
run directory. A group whose process dies is tried again, at most
:data:`MAX_ATTEMPTS` times in all (:meth:`Dispatch.crashed`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from qbench.plan.configs import ExecutorConfig
from qbench.plan.jobs import Job
from qbench.plugins import DISABLE_ENV
from qbench.registry import QbenchError
from qbench.results import RunDir
from qbench.run.console import Console, PlainConsole
from qbench.run.worker import failure_row

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
        disable: plugins disabled for this run (passed to every job's process).
        echo: where progress lines go (the console's :meth:`~qbench.run.console.Console.line`).
        console: the run's display (:mod:`qbench.run.console`): executors tell it
            which group started, how far it is and when it finished.
        columns: the metric columns a finished row's line shows (the first few
            the matrix's metrics declared).
        merged: called after each finished group (merges ``results.csv``).
        attempts: died attempts so far, by train id (:meth:`crashed`).
    """

    run_dir: RunDir
    device: str = "auto"
    workers: int | None = None
    jobs_per_gpu: int = 1
    disable: tuple[str, ...] = ()
    echo: Callable[[str], None] = print
    console: Console = field(default_factory=PlainConsole)
    columns: tuple[str, ...] = ()
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
                shown = ", ".join(
                    f"{c}={_short(r[c])}" for c in self.columns[:4] if r.get(c) is not None
                )
                self.echo(
                    f"[{n}/{total}] {job.describe()}: {shown} "
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


def _short(value) -> str:
    """A metric value in a progress line: four significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def ready(queue: list[Group], running: list[Group]) -> list[int]:
    """Indices in ``queue`` of the groups whose source models are all finished."""
    blocked = {g[0][1].train_id for g in queue} | {g[0][1].train_id for g in running}
    return [k for k, g in enumerate(queue) if not set(g[0][1].recipe.sources) & blocked]


class Executor:
    """Runs train groups to completion, with the settings of an ``[executor]`` section.

    One subclass per ``kind`` (:data:`qbench.run.executors.EXECUTORS`).
    """

    #: the ``--executor`` name
    kind: str = ""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    def plan(self, dispatch: Dispatch, groups: int) -> list[str]:
        """The devices its workers or jobs use, for the manifest and the first log line."""
        raise NotImplementedError

    def threads(self, dispatch: Dispatch, groups: int) -> int:
        """Torch threads per job process (recorded: CPU results depend on it)."""
        raise NotImplementedError

    def run(self, groups: list[Group], dispatch: Dispatch) -> None:
        """Run every group; each writes its jobs' rows. Returns when all are done or given up."""
        raise NotImplementedError
