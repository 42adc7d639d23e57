"""The live-logger contract: what a ``logger`` plugin implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Logger:
    """A live logger of one train group's training (register with ``qbench_register_loggers``).

    The worker calls :meth:`start` before training, :meth:`log` every
    ``log_every`` steps and :meth:`finish` with the group's first row. A
    factory whose library is missing raises :class:`qbench.registry.QbenchError`
    naming the pip extra to install; qbench builds every logger of a matrix
    before any job starts, so that error comes first.
    """

    def start(self, job: Any, folder: Path) -> None:
        """Begin logging ``job`` (the group's first job) into ``folder`` (created for it)."""

    def log(self, step: int, stats: dict[str, float]) -> None:
        """Record ``stats`` (see the module docstring) after ``step`` optimisation steps."""

    def finish(self, row: dict[str, Any]) -> None:
        """The job ended; ``row`` is its results row (``status`` says how). Flush and close."""
