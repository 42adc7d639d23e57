"""The TensorBoard logger (``[monitor] loggers = ["tensorboard"]``).

Needs the extra ``qbench-lic[tensorboard]``.

One event file per train group under ``RUN_DIR/monitor/tensorboard/<backbone>/<quantizer>/
lambda=<lambda>/seed=<seed>/``, so that ``tensorboard --logdir RUN_DIR/monitor/tensorboard``
shows every job of a run side by side. Every ``[train] log_every`` steps it
writes the training ``loss``, ``bpp``, ``mse``, ``psnr``, ``progress`` and each
quantizer's annealing state (``y/tau``, ``y/T``, ``y/beta``, ...) under
``train/``; when the job ends, its evaluation results (``bpp``,
``bpp_bitstream``, ``psnr``, ``ms_ssim`` of its first evaluation dataset)
under ``eval/``, at the last step.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import qbench
from qbench.registry import QbenchError

#: the results columns written under ``eval/`` when a job ends
EVAL_COLUMNS = ("bpp", "bpp_bitstream", "psnr", "ms_ssim")


def _part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)


class TensorBoardLogger(qbench.Logger):
    """Writes the live training record of each job to a TensorBoard event file.

    Args:
        flush_secs: how often the event file is flushed to disk (seconds).
    """

    def __init__(self, flush_secs: float = 10.0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise QbenchError(
                "the 'tensorboard' logger needs the tensorboard package: "
                "pip install 'qbench-lic[tensorboard]'"
            ) from exc
        self._writer_class = SummaryWriter
        self.flush_secs = float(flush_secs)
        self.writer = None
        self.step = 0

    def start(self, job: Any, folder: Path) -> None:
        where = (
            folder
            / _part(job.backbone.label)
            / _part(job.quantizer.label)
            / f"lambda={job.lmbda:g}"
            / f"seed={job.seed}"
        )
        self.writer = self._writer_class(log_dir=str(where), flush_secs=self.flush_secs)

    def log(self, step: int, stats: dict[str, float]) -> None:
        self.step = step
        for key, value in stats.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def finish(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in EVAL_COLUMNS:
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"eval/{key}", value, self.step)
        self.writer.close()
        self.writer = None


@qbench.hookimpl
def qbench_register_loggers(register):
    register(
        "tensorboard",
        TensorBoardLogger,
        description="TensorBoard event files under RUN_DIR/monitor/tensorboard "
        "(extra qbench-lic[tensorboard])",
    )
