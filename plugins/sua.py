"""Stochastic uniform annealing (``sua``) with its two tricks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

import qbench
from qbench.quantizer import straight_through, uniform_noise

#: qbench's default lower bound for the Gaussian scale under SUA. CompressAI's
#: own bound is 0.11; Zhang, Li and Liu argue for a larger bound so that the
#: likelihood of a hard-rounded latent is not over-confident. 0.5 is qbench's
#: chosen constant, not a value quoted from the paper; sweep it in a matrix
#: (``{ name = "sua", scale_bound = 0.26 }``).
DEFAULT_SCALE_BOUND = 0.5

SCHEDULES = ("exp", "linear", "cosine")


class SUA(qbench.Quantizer):
    r"""Stochastic uniform annealing (Zhang, Li, Liu, "On Uniform Scalar
    Quantization for Learned Image Compression", arXiv 2309.17051, 2023).

    **This is qbench's reading of the paper**, built from its abstract (the
    equations could not be consulted when it was written; correct it against
    the paper without changing the parameter names). A temperature
    ``T`` in [0, 1] moves the forward value from additive uniform noise
    (``T = 1``) to hard rounding (``T = 0``); the gradient passes straight
    through the noise-and-rounding offset::

        v      = y - stop_gradient(mu)           (zero_center and stop_gradient)
        target = T * (v + u) + (1 - T) * round(v),  u ~ U(-1/2, 1/2)
        y_tilde = target + mu   forward;   d y_tilde / dy = 1 (straight through)

    i.e. each latent sits uniformly in a box of width ``T`` around the
    interpolation between ``y`` and its rounded value (stochastic and uniform
    for ``T > 0``, annealed to rounding). The value feeds both the rate and the
    distortion.

    Temperature schedule over training progress ``t`` (``set_progress``), from
    ``t_start`` to ``t_end`` (defaults 1 and 0), with ``coefficient`` ``k``:

    * ``exp`` (default): ``T = T_end + (T_start - T_end) * (exp(-k t) - exp(-k)) / (1 - exp(-k))``
    * ``linear``: ``T = T_start + (T_end - T_start) * t``
    * ``cosine``: ``T = T_end + (T_start - T_end) * (1 + cos(pi t)) / 2``

    ``k`` is the adjustable temperature coefficient that trades train-test
    mismatch (small ``T`` late) against gradient-estimation risk (noise early);
    default 5.

    Tricks (each on by default, each switchable from the matrix):

    * ``scale_bound`` (float or None): lower bound of the Gaussian conditional's
      scale in training *and* test (the backbone reads ``quantizer.scale_bound``);
      default :data:`DEFAULT_SCALE_BOUND`. ``None`` keeps CompressAI's 0.11.
      No effect on a factorized model (no Gaussian conditional).
    * ``zero_center``: quantize ``y - mu`` and add ``mu`` back. With
      ``stop_gradient`` (partial stop-gradient), ``mu`` is detached inside the
      quantizer's argument, so the surrogate's noise path gives ``mu`` no
      gradient, while the added-back ``mu`` keeps its gradient of 1.
      ``zero_center = false`` applies the surrogate to ``y`` itself in training
      (hard rounding at test time is still around the means, as the codec
      codes ``y - mu``).
    """

    def __init__(
        self,
        schedule: str = "exp",
        coefficient: float = 5.0,
        t_start: float = 1.0,
        t_end: float = 0.0,
        scale_bound: float | None = DEFAULT_SCALE_BOUND,
        zero_center: bool = True,
        stop_gradient: bool = True,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not (0.0 <= t_end <= 1.0 and 0.0 <= t_start <= 1.0):
            raise ValueError(f"t_start and t_end must lie in [0, 1], got {t_start}, {t_end}")
        if schedule == "exp" and coefficient <= 0:
            raise ValueError(f"coefficient must be > 0 for the exp schedule, got {coefficient}")
        if scale_bound is not None and scale_bound <= 0:
            raise ValueError(f"scale_bound must be > 0 or None, got {scale_bound}")
        self.schedule = schedule
        self.coefficient = float(coefficient)
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.scale_bound = None if scale_bound is None else float(scale_bound)
        self.zero_center = bool(zero_center)
        self.stop_gradient = bool(stop_gradient)

    @property
    def temperature(self) -> float:
        t, a, b = self.progress, self.t_start, self.t_end
        if self.schedule == "linear":
            return a + (b - a) * t
        if self.schedule == "cosine":
            return b + (a - b) * (1.0 + math.cos(math.pi * t)) / 2.0
        k = self.coefficient
        return b + (a - b) * (math.exp(-k * t) - math.exp(-k)) / (1.0 - math.exp(-k))

    def forward(self, y: Tensor, means: Tensor | None = None) -> qbench.Quantized:
        if not self.training:
            return super().forward(y, means)
        centre = means if (self.zero_center and means is not None) else None
        v = y - (centre.detach() if self.stop_gradient else centre) if centre is not None else y
        temp = self.temperature
        with torch.no_grad():
            noisy = uniform_noise(v)
            if temp >= 1.0:
                target = noisy
            elif temp <= 0.0:
                target = torch.round(v)
            else:
                target = temp * noisy + (1.0 - temp) * torch.round(v)
        y_tilde = straight_through(target, v)
        if centre is not None:
            y_tilde = y_tilde + centre
        return qbench.Quantized(rate=y_tilde, dist=y_tilde)

    def extra_repr(self) -> str:
        return (
            f"schedule={self.schedule}, T={self.temperature:.3f}, scale_bound={self.scale_bound}, "
            f"zero_center={self.zero_center}, stop_gradient={self.stop_gradient}"
        )


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "sua",
        SUA,
        description="stochastic uniform annealing + scale bound + zero-center stop-grad "
        "(Zhang, Li, Liu 2023)",
    )
