"""Stochastic Gumbel annealing (``sga``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import RelaxedOneHotCategorical

import qbench


class SGA(qbench.Quantizer):
    r"""Stochastic Gumbel annealing (Yang, Bamler, Mandt, "Improving Inference for
    Neural Image Compression", NeurIPS 2020, arXiv 2006.04240).

    With ``v = y - mu`` (``mu`` = means, 0 when absent), ``f = floor(v)``,
    ``c = ceil(v)``, the surrogate is a two-class relaxed one-hot (Gumbel-softmax)
    choice between ``f`` and ``c``::

        logits = [-atanh(clip(v - f)) / tau, -atanh(clip(c - v)) / tau]
        w ~ RelaxedOneHotCategorical(temperature=tau, logits)
        y_tilde = w_0 * f + w_1 * c + mu

    with ``clip`` to ``[-1 + eps, 1 - eps]`` (``eps = 1e-5``). The temperature
    follows the paper's schedule in iterations ``it``::

        tau(it) = clip(tau_max * exp(-r * (it - t0)), tau_min, tau_max)

    expressed through training progress ``t = set_progress``: ``it = t * ref_steps``
    and ``t0 = t0_frac * ref_steps``. Defaults are the paper's: ``tau_max = 0.5``,
    ``r = 1e-3`` per iteration, ``t0`` at 35% of a ``ref_steps = 2000`` run;
    ``tau_min = 1e-8``. The value feeds both the rate and the distortion term.
    As ``tau -> 0`` the sample is hard rounding.
    """

    def __init__(
        self,
        tau_max: float = 0.5,
        tau_min: float = 1e-8,
        r: float = 1e-3,
        t0_frac: float = 0.35,
        ref_steps: int = 2000,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        self.tau_max, self.tau_min, self.r = float(tau_max), float(tau_min), float(r)
        self.t0_frac, self.ref_steps, self.eps = float(t0_frac), int(ref_steps), float(eps)

    @property
    def tau(self) -> float:
        it = self.progress * self.ref_steps
        tau = self.tau_max * math.exp(-self.r * (it - self.t0_frac * self.ref_steps))
        return min(max(tau, self.tau_min), self.tau_max)

    def sample(self, y: Tensor, means: Tensor | None = None, tau: float | None = None) -> Tensor:
        """One SGA draw at temperature ``tau`` (the scheduled one by default)."""
        tau = self.tau if tau is None else tau
        v = y if means is None else y - means
        f = torch.floor(v)
        c = torch.ceil(v)
        lim = 1.0 - self.eps
        logits = torch.stack(
            [
                -torch.atanh(torch.clamp(v - f, -lim, lim)) / tau,
                -torch.atanh(torch.clamp(c - v, -lim, lim)) / tau,
            ],
            dim=-1,
        )
        temperature = torch.tensor(tau, dtype=v.dtype, device=v.device)
        w = RelaxedOneHotCategorical(temperature, logits=logits).rsample()
        out = w[..., 0] * f + w[..., 1] * c
        return out if means is None else out + means

    def forward(self, y: Tensor, means: Tensor | None = None) -> qbench.Quantized:
        if not self.training:
            return super().forward(y, means)
        y_tilde = self.sample(y, means)
        return qbench.Quantized(rate=y_tilde, dist=y_tilde)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, progress={self.progress:.3f}"


@qbench.hookimpl
def qbench_register_quantizers(register):
    register("sga", SGA, description="stochastic Gumbel annealing (Yang, Bamler, Mandt 2020)")
