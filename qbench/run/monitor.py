"""How is my training going? Live monitoring of the jobs of a run.

Every ``[train] log_every`` steps the worker hands one record of the training
(:class:`Monitor`) to

* the ``qbench_train_step(job, step, stats)`` hook of every plugin, and
* every logger the matrix turns on (``[monitor] loggers = ["tensorboard"]``):
  registered objects of class :class:`Logger`, one per train group, writing
  under ``RUN_DIR/monitor/<logger name>/``.

A record holds ``progress``, the step's training ``loss``, ``bpp``, ``mse`` and
``psnr``, and every quantizer's annealing state as ``"<latent>/<name>"``
(:meth:`qbench.Quantizer.annealing_state`). Monitoring never fails a job and
never changes one: a logger or hook that raises is reported (``PluginSet.warn``) with its
name and left out for the rest of the job, and nothing here draws random
numbers or touches the model's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qbench.logger import Logger
from qbench.rd import psnr_from_mse
from qbench.registry import reason


class Monitor:
    """The live view of one train group: the hook and the matrix's loggers."""

    def __init__(self, job: Any, plugins: Any, loggers: list[tuple[str, Logger]], root: Path):
        self.job = job
        self.plugins = plugins
        self.loggers = []
        self.model = None  # the model whose quantizers' annealing state is read
        for name, logger in loggers:
            folder = Path(root) / "monitor" / name

            def start(logger=logger, folder=folder) -> None:
                folder.mkdir(parents=True, exist_ok=True)
                logger.start(job, folder)

            self.loggers.append((name, logger))
            self._safe(name, "start", start)

    def _safe(self, name: str, what: str, fn) -> bool:
        """Call ``fn()``; a logger that raises is reported and left out."""
        try:
            fn()
            return True
        except Exception as exc:
            why = reason(exc, 300)
            self.plugins.warn(
                f"qbench: warning: logger {name!r}: {what} raised {why}; it is left out for "
                f"job {self.job.describe()}"
            )
            self.loggers = [(n, lg) for n, lg in self.loggers if n != name]
            return False

    def stats(self, record: dict[str, Any]) -> dict[str, float]:
        """The monitoring record of a history record (adds PSNR and the annealing state)."""
        out = {k: float(v) for k, v in record.items() if k != "step"}
        out["psnr"] = psnr_from_mse(out["mse"])
        if self.model is not None:
            for latent, q in self.model.quantizers.items():
                for key, value in q.annealing_state().items():
                    out[f"{latent}/{key}"] = float(value)
        return out

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Hand one history record to the hook and the loggers."""
        stats = self.stats(record)
        self.plugins.call_guarded("qbench_train_step", job=self.job, step=step, stats=stats)
        for name, logger in list(self.loggers):
            self._safe(name, "log", lambda logger=logger: logger.log(step, stats))

    def finish(self, row: dict[str, Any]) -> None:
        for name, logger in list(self.loggers):
            self._safe(name, "finish", lambda logger=logger: logger.finish(row))
        self.loggers = []
