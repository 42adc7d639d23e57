"""What a run shows while it runs: one display, owned by the qbench process.

Workers print nothing (their output goes to ``logs/worker-N.log``); they send
progress events to the qbench process, whose :class:`Console` shows them:

* :class:`LiveConsole` (a terminal, progress on): a block at the bottom of the
  terminal, redrawn at most ten times a second, with the overall bar (groups
  done, share of the training steps, elapsed time and ETA) and one line per
  busy worker (its job, step, loss and bpp); every finished row and message is
  printed above the block as it lands, so no line breaks another.
* :class:`PlainConsole` (``--no-progress``, output not a terminal, a log
  file): one line per event (a group started, a row finished, a message), no
  control characters.

The ETA is the elapsed time scaled by the training steps still to run over
those done (a group with no training counts as one step), so it is an
estimate that assumes the remaining steps cost what the done ones did.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


def duration(seconds: float) -> str:
    """``73`` -> ``1m13s``; ``4000`` -> ``1h06m``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Busy:
    what: str
    steps: int
    step: int = 0
    stats: dict[str, float] | None = None


class Console:
    """The events of a run; this base says them as plain lines (see :class:`PlainConsole`)."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.echo = echo
        self.total = 0  #: groups to run
        self.total_steps = 0
        self.done = 0
        self.done_steps = 0
        self.busy: dict[int, _Busy] = {}
        self.started_at = time.monotonic()

    def begin(self, groups: int, steps: int) -> None:
        """The run has ``groups`` groups to produce, ``steps`` training steps in all."""
        self.total, self.total_steps = groups, steps
        self.started_at = time.monotonic()

    def line(self, text: str) -> None:
        """A message or a finished row."""
        self.echo(text)

    def warn(self, text: str) -> None:
        """A warning from a worker (a plugin hook or logger that raised): standard error."""
        print(text, file=sys.stderr)

    def started(self, worker: int, what: str, steps: int) -> None:
        """``worker`` began a group (``what``) of ``steps`` training steps."""
        self.busy[worker] = _Busy(what, steps)
        self.line(f"[worker {worker}] start {what}, {steps} steps")

    def progress(self, worker: int, step: int, stats: dict[str, float]) -> None:
        """``worker``'s group reached ``step``."""
        busy = self.busy.get(worker)
        if busy is not None:
            busy.step, busy.stats = step, stats

    def idle(self, worker: int) -> None:
        """``worker`` stopped its group without finishing it (it died; the group may run again)."""
        self.busy.pop(worker, None)

    def finished(self, worker: int | None) -> None:
        """A group ended (rows written, or given up); ``worker`` is free again."""
        busy = self.busy.pop(worker, None) if worker is not None else None
        self.done += 1
        self.done_steps += max(busy.steps, 1) if busy is not None else 1

    def eta(self) -> float | None:
        """Seconds still to run, by the steps done so far (None: nothing done yet)."""
        done = self.done_steps + sum(b.step for b in self.busy.values())
        if done <= 0:
            return None
        elapsed = time.monotonic() - self.started_at
        return elapsed * max(self.total_steps - done, 0) / done

    def close(self) -> None:
        """The run ended (or was interrupted): leave the terminal clean."""


class PlainConsole(Console):
    """One line per event, nothing redrawn: for ``--no-progress``, pipes and log files."""


class LiveConsole(Console):
    """The overall bar and one line per worker, redrawn in place at the bottom of a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        self.drawn = 0  #: lines of the block on screen now
        self.last_draw = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _erase(self) -> str:
        return f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""

    def block(self, width: int) -> list[str]:
        """The lines of the live block, each at most ``width`` characters."""
        share = (self.done_steps + sum(b.step for b in self.busy.values())) / max(
            self.total_steps, 1
        )
        bar_w = 24
        filled = int(round(bar_w * min(share, 1.0)))
        eta = self.eta()
        head = (
            f"[{'#' * filled}{'-' * (bar_w - filled)}] {self.done}/{self.total} groups, "
            f"{100 * min(share, 1.0):.0f} % of steps, "
            f"{duration(time.monotonic() - self.started_at)} elapsed"
            + (f", ETA {duration(eta)}" if eta is not None else "")
        )
        lines = [head]
        for worker, b in sorted(self.busy.items()):
            stats = b.stats or {}
            tail = "".join(
                f" {k} {stats[k]:.3f}" for k in ("loss", "bpp") if isinstance(stats.get(k), float)
            )
            lines.append(f"  worker {worker}: {b.what}  {b.step}/{b.steps}{tail}")
        return [line[: max(width - 1, 10)] for line in lines]

    def draw(self, force: bool = False) -> None:
        if not self.total:  # nothing to produce (yet): no block
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        lines = self.block(shutil.get_terminal_size((100, 24)).columns)
        self._write(self._erase() + "".join(f"{line}\n" for line in lines))
        self.drawn = len(lines)

    def line(self, text: str) -> None:
        self._write(self._erase() + f"{text}\n")
        self.drawn = 0
        self.draw(force=True)

    def warn(self, text: str) -> None:
        self._write(self._erase())
        self.drawn = 0
        print(text, file=sys.stderr, flush=True)
        self.draw(force=True)

    def started(self, worker: int, what: str, steps: int) -> None:
        self.busy[worker] = _Busy(what, steps)
        self.draw(force=True)

    def progress(self, worker: int, step: int, stats: dict[str, float]) -> None:
        super().progress(worker, step, stats)
        self.draw()

    def finished(self, worker: int | None) -> None:
        super().finished(worker)
        self.draw(force=True)

    def close(self) -> None:
        if self.drawn:
            self._write(self._erase())
            self.drawn = 0


def console_for(show_progress: bool, echo: Callable[[str], None] | None) -> Console:
    """The live display when progress is on, nobody asked for their own ``echo`` and
    standard output is a terminal; else plain lines through ``echo`` (default ``print``)."""
    if show_progress and echo is None and sys.stdout.isatty():
        return LiveConsole()
    return PlainConsole(echo or print)
