"""Learned quantization steps for variable rate: ``qvrf`` (a scalar step) and ``gain``
(per-channel gain units).

Both act at the quantizer of a fixed backbone, like STanH, through the
contract's quantization step (``Quantizer.step``): symbols
``k = round((y - mu) / Δ)``, cells of width ``Δ`` (coded with the Gaussian's
tables at scale ``σ / Δ``), reconstructions ``mu + r k``. One model per rate
learns its own step (the derived protocol: ``from_anchor`` refines only these
parameters); rates in between come from blending two of them (``interpolate``).
"""

from __future__ import annotations

from typing import Any

import torch
from qbench_plugins.uniform import UNIT_SURROGATES
from torch import Tensor, nn

import qbench

#: The smallest step (and gain, inverse gain) a learned parameter is clamped to.
#: A step below it, or a negative one, is held there; the row's ``settings`` say
#: how many values were clamped (``step_clamped``, noted in the report).
STEP_MIN = 0.05

#: ``Quantizer.report_notes`` of both: a clamped step is said in the report's notes.
CLAMPED = {"step_clamped": "a learned quantization step reached its minimum and was clamped there"}

#: the unit-grid surrogates a step quantizer may apply (``surrogate = NAME``)
SURROGATES = tuple(UNIT_SURROGATES)


class QVRF(qbench.Surrogate):
    r"""A learned scalar quantization step (QVRF: Tong, Wu, Chen, Chen, Luo, Zhou,
    "QVRF: A Quantization-error-aware Variable Rate Framework for Learned Image
    Compression", ICIP 2023, arXiv 2303.05744; official code bytedance/QRAF at
    commit 7d8da1f, ``Cheng2020Attention.py``).

    With step ``a`` (``step``, learnable, clamped at :data:`STEP_MIN`)::

        y_hat = mu + a * round((y - mu) / a)                       (test, coded)
        training: y_tilde = mu + a * S((y - mu) / a)

    where ``S`` is the unit-grid surrogate (``surrogate``): ``"mixed"``
    (default; noise for the rate, straight-through rounding for the
    distortion: QVRF's last training stage), ``"noise"`` (its first stages) or
    ``"ste"``. The rate is the Gaussian mass of the cell of width ``a``,
    coded with CompressAI's tables at scale ``σ / a`` (as QRAF's
    ``build_indexes(scales_hat * scale)``, ``scale = 1 / a``). The gradient
    to ``a`` through ``a * STE(v / a)`` is the quantization error
    ``round(v / a) - v / a`` (the "quantization-error-aware" part).

    Deviations: QRAF learns ``1 / a`` (its ``Gain``, clamped at 1e-4) and
    detaches the rescaling multiply; qbench learns ``a`` itself and
    differentiates through both. QRAF trains one network with 8 steps jointly
    and picks any ``1 / a`` in [0.5, 12] at test time; qbench trains one step
    per rate in the derived protocol (``from_anchor``) and blends steps
    linearly (``interpolate``: ``a = (1 - t) a_1 + t a_2``).
    """

    report_notes = CLAMPED

    def __init__(
        self,
        step: float = 1.0,
        surrogate: str = "mixed",
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        if not float(step) >= STEP_MIN:
            raise ValueError(f"step must be >= {STEP_MIN}, got {step}")
        self.kind = surrogate
        self.step_param = nn.Parameter(torch.tensor(float(step)))

    def step(self) -> Tensor:
        return self.step_param.clamp(min=STEP_MIN)

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        return UNIT_SURROGATES[self.kind](v)

    def settings(self) -> dict[str, Any]:
        raw = float(self.step_param.detach())
        return {
            **super().settings(),
            "surrogate": self.kind,
            "step": round(max(raw, STEP_MIN), 6),
            "step_clamped": int(raw < STEP_MIN),
        }


class Gain(qbench.Surrogate):
    r"""Gain units (Cui, Wang, Gao, Bai, Wang, Yu, Yang, "Asymmetric Gained Deep Image
    Compression With Continuous Rate Adaptation", CVPR 2021, arXiv 2003.02012; no
    official code found; checked against the reimplementations mmSir/GainedVAE at
    e1b9eb2 and erenovic/Flex-Rate-MBT2018 at 03651255).

    A gain ``g_c`` and an inverse gain ``g'_c`` per channel (learnable, clamped
    at :data:`STEP_MIN`; initialised to 1)::

        k = round(g * (y - mu)),   y_hat = mu + g' * k             (test, coded)
        training: y_tilde = mu + g' * S(g * (y - mu))

    i.e. the quantization step is ``1 / g`` (cells of width ``1 / g``, coded
    at scale ``σ g``) and the reconstruction step ``g'`` (asymmetric: ``g'`` is
    learned, not ``1 / g``). ``S`` is the unit-grid surrogate (``surrogate``,
    default ``"noise"`` as the reimplementations). Continuous rates blend two
    trained pairs exponentially (``interpolate``):
    ``g = g_1^(1 - t) g_2^t``, ``g' = g'_1^(1 - t) g'_2^t``.

    Deviations: in the paper the network is trained jointly with all gain
    pairs and the hyperprior sees the gained latent (its predicted scale is
    the gained latent's); here the gains act at the quantizer of a fixed
    backbone (the derived protocol refines only ``g`` and ``g'``), the
    hyperprior sees ``y`` and the gain enters the entropy model as the cell
    width ``1 / g`` (equivalently the scale ``σ g``), as in Flex-Rate-MBT2018.
    ``zero_center`` must stay true: the asymmetric reconstruction is defined
    around the means.
    """

    report_notes = CLAMPED

    def __init__(
        self,
        surrogate: str = "noise",
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        if not zero_center:
            raise ValueError("gain needs zero_center = true (reconstructions are mu + g' k)")
        self.kind = surrogate
        self.gain = nn.Parameter(torch.ones(0))
        self.inverse_gain = nn.Parameter(torch.ones(0))

    def bind(self, latent: str, channels: int | None = None) -> None:
        """One gain and one inverse gain per channel of the latent (all 1)."""
        super().bind(latent, channels)
        if channels is None:
            raise ValueError(
                f"gain needs the channel count of latent {latent!r}: the backbone declares "
                "none (Backbone.channels)"
            )
        if self.gain.numel() != channels:
            self.gain = nn.Parameter(torch.ones(channels))
            self.inverse_gain = nn.Parameter(torch.ones(channels))

    def _bound(self) -> None:
        if self.gain.numel() == 0:
            raise RuntimeError("gain: not bound to a latent yet (Backbone.set_quantizers binds it)")

    def step(self) -> Tensor:
        self._bound()
        return 1.0 / self.gain.clamp(min=STEP_MIN)

    def reconstruction_step(self) -> Tensor:
        self._bound()
        return self.inverse_gain.clamp(min=STEP_MIN)

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        return UNIT_SURROGATES[self.kind](v)

    def interpolate(self, other: Gain, a: float) -> None:
        """Exponential interpolation (Cui et al.): ``g = g_1^(1 - a) g_2^a``, same for ``g'``."""
        if type(other) is not type(self) or other.gain.shape != self.gain.shape:
            raise ValueError("cannot interpolate gain units of different kinds or channel counts")
        with torch.no_grad():
            for mine, theirs in ((self.gain, other.gain), (self.inverse_gain, other.inverse_gain)):
                lo, hi = mine.clamp(min=STEP_MIN), theirs.clamp(min=STEP_MIN)
                mine.copy_(torch.exp((1 - a) * torch.log(lo) + a * torch.log(hi)))

    def settings(self) -> dict[str, Any]:
        g, gi = self.gain.detach(), self.inverse_gain.detach()
        return {
            **super().settings(),
            "surrogate": self.kind,
            "gain_mean": round(float(g.clamp(min=STEP_MIN).mean()), 6) if g.numel() else None,
            "step_clamped": int((g < STEP_MIN).sum() + (gi < STEP_MIN).sum()),
        }


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "qvrf",
        QVRF,
        description="learned scalar quantization step a: mu + a round((y - mu) / a) "
        "(QVRF, Tong et al. 2023)",
        parameters=1,
    )
    register(
        "gain",
        Gain,
        description="per-channel gain and inverse gain units (Cui et al., CVPR 2021)",
    )
