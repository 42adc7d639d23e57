"""Uniform-noise and straight-through surrogates: ``round``, ``noise``, ``ste``, ``mixed``."""

from __future__ import annotations

from torch import Tensor

import qbench
from qbench.quantizer import ste_round, uniform_noise


class Round(qbench.Quantizer):
    """Hard rounding in training and test, no gradient: the control.

    ``y_hat = round(y - mu) + mu`` for both the rate and the distortion term.
    The latent receives no gradient from the loss (d round / dy = 0 a.e.).
    """


class Noise(qbench.Quantizer):
    """Additive uniform noise (Ballé, Laparra, Simoncelli, ICLR 2017).

    Training: ``y_tilde = y + u``, ``u ~ U(-1/2, 1/2)``, used for both the rate and
    the distortion term; ``d y_tilde / dy = 1``. The density of ``y_tilde`` is
    the latent's density convolved with the unit box, which is what the
    entropy model's ``CDF(y + 1/2) - CDF(y - 1/2)`` evaluates.
    """

    def forward(self, y: Tensor, means: Tensor | None = None) -> qbench.Quantized:
        if not self.training:
            return super().forward(y, means)
        y_tilde = uniform_noise(y)
        return qbench.Quantized(rate=y_tilde, dist=y_tilde)


class STE(qbench.Quantizer):
    """Straight-through rounding (Theis et al., ICLR 2017).

    Training: forward ``round(y - mu) + mu``, backward identity: ``d/dy = 1``.
    Used for both the rate and the distortion term.
    """

    def forward(self, y: Tensor, means: Tensor | None = None) -> qbench.Quantized:
        if not self.training:
            return super().forward(y, means)
        y_hat = ste_round(y, means)
        return qbench.Quantized(rate=y_hat, dist=y_hat)


class Mixed(qbench.Quantizer):
    """Noise for the rate, straight-through rounding for the distortion.

    Minnen and Singh, "Channel-wise autoregressive entropy models for learned
    image compression", ICIP 2020: ``rate = y + u``, ``u ~ U(-1/2, 1/2)``;
    ``dist = round(y - mu) + mu`` forward with identity backward.
    """

    def forward(self, y: Tensor, means: Tensor | None = None) -> qbench.Quantized:
        if not self.training:
            return super().forward(y, means)
        return qbench.Quantized(rate=uniform_noise(y), dist=ste_round(y, means))


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "round",
        Round,
        description="hard rounding in training too, no gradient (control)",
        differentiable=False,
    )
    register("noise", Noise, description="additive uniform noise U(-1/2, 1/2) (Balle 2017)")
    register("ste", STE, description="rounding forward, identity backward (Theis 2017)")
    register(
        "mixed", Mixed, description="noise for rate, STE rounding for distortion (Minnen 2020)"
    )
