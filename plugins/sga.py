"""Stochastic Gumbel annealing (``sga``) as a training surrogate."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import RelaxedOneHotCategorical

import qbench

SCHEDULES = ("training", "inference")


class SGA(qbench.Surrogate):
    r"""Stochastic Gumbel annealing (Yang, Bamler, Mandt, "Improving Inference for
    Neural Image Compression", NeurIPS 2020, arXiv 2006.04240; official code
    mandt-lab/improving-inference-for-neural-image-compression, ``sga.py`` at
    commit 6a97aba).

    The surrogate is a two-class relaxed one-hot (Gumbel-softmax) choice
    between ``f = floor(v)`` and ``c = ceil(v)``, as the reference::

        logits = [-atanh(clip(v - f)) / tau, -atanh(clip(c - v)) / tau]
        w ~ RelaxedOneHotCategorical(temperature=tau, logits)
        S(v) = w_0 * f + w_1 * c

    with ``clip`` to ``[-1 + eps, 1 - eps]`` (``eps = 1e-5``). ``S`` feeds both
    the rate and the distortion term. As ``tau -> 0`` the sample is hard
    rounding (at ``tau = 0.01`` the mean ``|S(v) - round(v)|`` is 0.005).

    **Deviations from the reference, and the options that switch them:**

    * *Purpose.* The reference optimises the latents of a *pretrained* model
      at test time (2000 Adam iterations, lr 0.005); its schedule
      ``tau(it) = clip(0.5 exp(-1e-3 (it - 700)), 1e-8, 0.5)`` ends at 0.136,
      where 7 % of latents still land on the far integer. As a *training*
      surrogate qbench keeps the functional form (constant ``tau_max`` for
      the first ``t0_frac`` of training, then exponential decay) but fits the
      rate so that ``tau`` reaches ``tau_end`` (default 0.01) at the end of
      training: ``schedule = "training"`` (default)::

          tau(t) = tau_max                                            t <= t0_frac
          tau(t) = tau_max * (tau_end / tau_max) ** ((t - t0_frac) / (1 - t0_frac))

      ``schedule = "inference"`` is the reference's schedule in iterations
      ``it = t * ref_steps`` (``tau_max = 0.5``, ``r = 1e-3``, ``t0`` at
      ``t0_frac = 0.35`` of ``ref_steps = 2000``, floor ``tau_min = 1e-8``).
    * *Grid.* The reference (``main`` branch) rounds ``y`` itself; its ``tf2``
      branch rounds ``y - mu``. qbench's default ``zero_center = True`` rounds
      ``y - mu`` (the grid the decoder uses); ``zero_center = False`` is the
      ``main`` branch. Gradient routing: :class:`qbench.Surrogate`.
    """

    def __init__(
        self,
        schedule: str = "training",
        tau_max: float = 0.5,
        tau_end: float = 0.01,
        t0_frac: float = 0.35,
        r: float = 1e-3,
        ref_steps: int = 2000,
        tau_min: float = 1e-8,
        eps: float = 1e-5,
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        if not 0 < tau_end <= tau_max:
            raise ValueError(f"need 0 < tau_end <= tau_max, got {tau_end}, {tau_max}")
        if not 0 <= t0_frac < 1:
            raise ValueError(f"t0_frac must lie in [0, 1), got {t0_frac}")
        self.schedule = schedule
        self.tau_max, self.tau_end, self.tau_min = float(tau_max), float(tau_end), float(tau_min)
        self.t0_frac, self.r, self.ref_steps = float(t0_frac), float(r), int(ref_steps)
        self.eps = float(eps)

    def annealing_state(self) -> dict[str, float]:
        return {"tau": self.tau}

    @property
    def tau(self) -> float:
        t = self.progress
        if self.schedule == "training":
            if t <= self.t0_frac:
                return self.tau_max
            s = (t - self.t0_frac) / (1.0 - self.t0_frac)
            return self.tau_max * (self.tau_end / self.tau_max) ** s
        it = t * self.ref_steps
        tau = self.tau_max * math.exp(-self.r * (it - self.t0_frac * self.ref_steps))
        return min(max(tau, self.tau_min), self.tau_max)

    def sample(self, v: Tensor, tau: float | None = None) -> Tensor:
        """One SGA draw of ``v`` on the integer grid at temperature ``tau`` (scheduled one)."""
        tau = self.tau if tau is None else tau
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
        return w[..., 0] * f + w[..., 1] * c

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        v_tilde = self.sample(v)
        return qbench.Quantized(rate=v_tilde, dist=v_tilde)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "schedule": self.schedule, "tau_end": self.tau_end}

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, {super().extra_repr()}"


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "sga",
        SGA,
        description="stochastic Gumbel annealing (Yang, Bamler, Mandt 2020) as a training "
        "surrogate, tau annealed to 0.01",
    )
