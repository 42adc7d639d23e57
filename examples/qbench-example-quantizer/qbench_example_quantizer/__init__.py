"""A third-party qbench quantizer: soft rounding with uniform noise (``softround``).

Agustsson and Theis, "Universally Quantized Neural Compression", NeurIPS 2020,
arXiv 2006.09952, Sec. 4 ("UN + SR"). The soft-rounding function with
sharpness ``alpha``::

    s_alpha(y) = floor(y) + 1/2 + tanh(alpha * r) / (2 * tanh(alpha / 2)),
    r = y - floor(y) - 1/2

tends to the identity as ``alpha -> 0`` and to rounding as ``alpha -> inf``.
Training (with ``v = y - means``)::

    rate = s_alpha(v) + u + means,          u ~ U(-1/2, 1/2)
    dist = s_alpha(s_alpha(v) + u) + means

``alpha`` is annealed geometrically from ``alpha_start`` to ``alpha_end`` over
training progress. Eval mode is qbench's hard rounding around the means.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import qbench

__version__ = "0.1.0"


def soft_round(y: Tensor, alpha: float) -> Tensor:
    """``s_alpha(y)`` (identity for ``alpha`` below 1e-3, to avoid 0/0)."""
    if alpha < 1e-3:
        return y
    f = torch.floor(y)
    r = y - f - 0.5
    return f + 0.5 + torch.tanh(alpha * r) / (2.0 * math.tanh(alpha / 2.0))


class SoftRound(qbench.Quantizer):
    """Soft rounding plus uniform noise, alpha annealed (see the module docstring)."""

    def __init__(self, alpha_start: float = 1.0, alpha_end: float = 16.0) -> None:
        super().__init__()
        if not 0 < alpha_start <= alpha_end:
            raise ValueError(f"need 0 < alpha_start <= alpha_end, got {alpha_start}, {alpha_end}")
        self.alpha_start, self.alpha_end = float(alpha_start), float(alpha_end)

    @property
    def alpha(self) -> float:
        return self.alpha_start * (self.alpha_end / self.alpha_start) ** self.progress

    def forward(self, y: Tensor, means: Tensor | None = None) -> qbench.Quantized:
        if not self.training:
            return super().forward(y, means)
        v = y if means is None else y - means
        a = self.alpha
        noisy = soft_round(v, a) + torch.empty_like(v).uniform_(-0.5, 0.5)
        dist = soft_round(noisy, a)
        if means is not None:
            noisy, dist = noisy + means, dist + means
        return qbench.Quantized(rate=noisy, dist=dist)


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "softround",
        SoftRound,
        description="soft rounding + uniform noise, alpha annealed (Agustsson & Theis 2020)",
    )
