"""The ``local`` executor: long-lived ``spawn`` worker processes on this machine.

One worker per GPU (times ``--jobs-per-gpu``), else CPU workers with the cores
split between them (:func:`qbench.run.executors.devices.plan_devices`). Each
worker runs the groups it is sent, one at a time, until it is told to stop; a
worker that dies (segfault, OOM kill) is replaced and its group tried again
(:meth:`Dispatch.crashed`). An interrupted worker (SIGINT, SIGTERM, SIGHUP) is
not a failure: its group is queued again, or left for the next run. Workers
die with the qbench process that started them, however it ends.

Workers print nothing on the console: their standard output and error go to
``logs/worker-N.log`` of the run directory, and their progress reaches the
qbench process as messages on their pipe, for its one display
(:mod:`qbench.run.console`). They start with SIGINT ignored, so that a Ctrl-C
while one is still importing torch prints no traceback of theirs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import wait
from typing import Any

import torch

from qbench.plugins import DISABLE_ENV, get_plugins
from qbench.results import RunDir
from qbench.run.executors.base import Dispatch, Executor, Group, ready
from qbench.run.executors.devices import IN_PROCESS, local_plan, worker_threads
from qbench.run.lifeline import worker_entry
from qbench.run.worker import DatasetCache, run_group

#: Exit signals of a worker that mean "interrupted", not "the job failed".
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: times one run queues an interrupted group again before leaving it for the next run
REQUEUES = 2


def exit_reason(code: int | None) -> str:
    """How a process with exit code ``code`` ended, in words (``died (SIGKILL)``)."""
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
# in the worker process
# ---------------------------------------------------------------------------


def worker_loop(conn, index: int, device: str, threads: int, out: str, sigint) -> None:
    """A spawned worker's loop: run groups until told to stop.

    The worker takes SIGINT as its parent does (a parent that ignores it, as a
    background job of a script does, has workers that ignore it too).
    The process has already tied its life to the qbench process's
    (:func:`qbench.run.lifeline.worker_entry`, before importing this module).
    """
    run_dir = RunDir(out)
    _to_log(run_dir.logs_dir / f"worker-{index}.log")
    signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == signal.SIG_IGN else signal.SIG_DFL)
    torch.set_num_threads(threads)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    plugins = get_plugins()
    plugins.warn = lambda text: _send(conn, ("say", text))  # to the qbench console
    datasets = DatasetCache(plugins.registry)
    dev = torch.device(device)
    while True:
        jobs = conn.recv()
        if jobs is None:
            break
        run_group(jobs, run_dir, plugins, dev, datasets, progress=_sender(conn))
        conn.send(("done", [j.job_id for _, j in jobs]))


def _to_log(path) -> None:
    """Send this process's standard output and error (Python's and C's) to ``path``."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for stream in (1, 2):
            os.dup2(fd, stream)
        os.close(fd)


def _send(conn, message) -> None:
    with contextlib.suppress(OSError, ValueError):
        conn.send(message)


class _Throttled:
    """A group's progress (``progress(step, stats)``) passed on as ``send(step, shown)`` at
    most five times a second, with the loss and bpp only."""

    def __init__(self, send) -> None:
        self.send, self.last = send, 0.0

    def __call__(self, step: int, stats: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        self.send(step, {k: float(stats[k]) for k in ("loss", "bpp") if k in stats})


def _sender(conn) -> _Throttled:
    """A worker's progress, sent to the qbench process over its pipe."""
    return _Throttled(lambda step, shown: _send(conn, ("progress", step, shown)))


# ---------------------------------------------------------------------------
# in the qbench process
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (None: left as it is), as it was afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is not None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a worker starts: a spawned child inherits the disposition, so it
    imports torch with Ctrl-C ignored (no traceback of a half-started worker)."""
    try:
        saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


def _what(group: Group) -> str:
    """A group as the console's worker line names it."""
    first = group[0][1]
    extra = f" (+{len(group) - 1} eval sets)" if len(group) > 1 else ""
    return (
        f"{first.quantizer.label} lambda={first.lmbda:g} seed={first.seed} "
        f"({first.backbone.label}){extra}"
    )


@dataclass
class _Worker:
    index: int
    device: str
    cuda_visible: str | None
    proc: Any = None
    conn: Any = None
    group: Group | None = None

    @property
    def busy(self) -> bool:
        return self.group is not None


class _Pool:
    """One run of the local executor: its workers, the groups still to run, the count done."""

    def __init__(self, groups: list[Group], dispatch: Dispatch, plan: list[tuple[str, str | None]]):
        self.dispatch = dispatch
        self.ctx = mp.get_context("spawn")
        self.threads = worker_threads()
        self.env_disable = dispatch.disabled_env()
        self.queue = list(groups)
        self.total = len(self.queue)
        self.workers = [_Worker(i, dev, vis) for i, (dev, vis) in enumerate(plan)]
        self.finished = 0
        self.interrupted: dict[str, int] = {}  # train id -> times interrupted

    def run(self) -> None:
        """Run every group; the workers are stopped however this ends (Ctrl-C too)."""
        try:
            for w in self.workers:
                self.start(w)
                self.assign(w)
            while any(w.busy for w in self.workers):
                self.step()
        finally:
            self.stop()

    def start(self, w: _Worker) -> None:
        """Start ``w``'s process, its GPU and the disabled plugins in its environment."""
        parent, child = self.ctx.Pipe()
        env = {"CUDA_VISIBLE_DEVICES": w.cuda_visible, DISABLE_ENV: self.env_disable}
        sigint = signal.getsignal(signal.SIGINT)
        with _environ(env), _sigint_ignored():
            w.proc = self.ctx.Process(
                target=worker_entry,
                args=(
                    os.getpid(),
                    f"{__name__}:worker_loop",
                    child,
                    w.index,
                    w.device,
                    self.threads,
                    str(self.dispatch.run_dir.root),
                    sigint,
                ),
                daemon=True,
            )
            w.proc.start()
        child.close()
        w.conn = parent

    def assign(self, w: _Worker) -> None:
        """Send ``w`` the first ready group of the queue; none ready: ``w`` idles."""
        w.group = None
        running = [x.group for x in self.workers if x.busy]
        for k in ready(self.queue, running)[:1]:
            w.group = self.queue.pop(k)
        if w.group is None:
            return
        first = w.group[0][1]
        self.dispatch.console.started(w.index, _what(w.group), first.recipe.steps(first.train))
        w.conn.send(w.group)

    def step(self) -> None:
        """Wait (a second at most) for busy workers to finish or die; handle each that did."""
        for w in self.workers:
            if not w.busy and self.queue:
                self.assign(w)
        busy = [w for w in self.workers if w.busy]
        got = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0)
        for w in busy:
            if w.conn in got:
                if self.received(w):
                    continue
                got.append(w.proc.sentinel)  # its pipe broke: it died
            if w.proc.sentinel in got or not w.proc.is_alive():
                self.died(w)

    def received(self, w: _Worker) -> bool:
        """Take ``w``'s message: its progress, or "done" (then give it the next group);
        False when its pipe broke."""
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            return False
        if message[0] == "progress":
            self.dispatch.console.progress(w.index, message[1], message[2])
            return True
        if message[0] == "say":  # a plugin's warning: on the console, on standard error
            self.dispatch.console.warn(message[1])
            return True
        self.finished += 1
        self.dispatch.finished_group(w.group, self.finished, self.total)
        self.dispatch.console.finished(w.index)
        self.assign(w)
        return True

    def died(self, w: _Worker) -> None:
        """``w`` ended mid-group: queue the group again or give it up; start ``w`` anew."""
        w.proc.join(timeout=5)
        reason = exit_reason(w.proc.exitcode)
        code = w.proc.exitcode or 0
        self.dispatch.console.idle(w.index)
        if code < 0 and -code in INTERRUPTS:
            self.interrupted_group(w, reason)
        elif self.dispatch.crashed(w.group, f"worker process {reason}", self._log_tail(w)):
            self.queue.append(w.group)
        else:
            self.finished += 1
            self.dispatch.console.finished(None)
            self.dispatch.merged()
        self.start(w)
        self.assign(w)

    def _log_tail(self, w: _Worker) -> str:
        """The end of ``w``'s log (what it printed before it died), for the attempt's log."""
        try:
            text = (self.dispatch.run_dir.logs_dir / f"worker-{w.index}.log").read_text(
                errors="replace"
            )
        except OSError:
            return ""
        return text[-20000:]

    def interrupted_group(self, w: _Worker, reason: str) -> None:
        """An interrupted job is not a failed job: no row, it runs again (or in the next run)."""
        train_id = w.group[0][1].train_id
        n = self.interrupted[train_id] = self.interrupted.get(train_id, 0) + 1
        if n <= REQUEUES:
            self.queue.append(w.group)
            self.dispatch.echo(f"[worker {w.index}] {reason}; its jobs are queued again")
        else:
            self.dispatch.echo(
                f"[worker {w.index}] {reason} again; its jobs are left for "
                "the next run (no row is written)"
            )

    def stop(self) -> None:
        """Tell every live worker to stop; kill those still there 5 seconds later."""
        for w in self.workers:
            if w.proc is not None and w.proc.is_alive():
                with contextlib.suppress(OSError, BrokenPipeError):
                    w.conn.send(None)
        deadline = time.time() + 5
        for w in self.workers:
            if w.proc is not None:
                w.proc.join(timeout=max(0.1, deadline - time.time()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join()


class LocalExecutor(Executor):
    """Worker processes on this machine (see the module docstring)."""

    kind = "local"

    def plan(self, dispatch: Dispatch, groups: int) -> list[str]:
        return [d for d, _ in local_plan(dispatch, groups)]

    def threads(self, dispatch: Dispatch, groups: int) -> int:
        return worker_threads()

    def run(self, groups: list[Group], dispatch: Dispatch) -> None:
        plan = local_plan(dispatch, len(groups))
        if dispatch.workers == IN_PROCESS:
            _run_in_process(groups, dispatch, plan[0][0])
        else:
            _Pool(groups, dispatch, plan).run()


def _run_in_process(groups: list[Group], dispatch: Dispatch, device: str) -> None:
    """``--workers 0``: every group in this process, one after the other (a group after the
    groups its recipe starts from), with the threads and disabled plugins a worker has.

    What a worker process isolates is not isolated here: a plugin that crashes the
    process ends the run (its finished rows stay), and nothing is retried.
    """
    queue, done = list(groups), 0
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads())
    try:
        with _environ({DISABLE_ENV: dispatch.disabled_env()}):
            plugins = get_plugins()
            datasets = DatasetCache(plugins.registry)
            while queue:
                group = queue.pop(ready(queue, [])[0])
                first = group[0][1]
                dispatch.console.started(0, _what(group), first.recipe.steps(first.train))
                progress = _Throttled(partial(dispatch.console.progress, 0))
                here = torch.device(device)
                run_group(group, dispatch.run_dir, plugins, here, datasets, progress)
                done += 1
                dispatch.finished_group(group, done, len(groups))
                dispatch.console.finished(0)
    finally:
        torch.set_num_threads(threads)
