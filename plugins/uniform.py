"""Uniform-noise and straight-through surrogates: ``round``, ``noise``, ``ste``, ``mixed``.

``noise``, ``ste`` and ``mixed`` are :class:`qbench.Surrogate` s: each takes
the options ``scale_bound``, ``zero_center`` and ``stop_gradient`` (see
``docs/quantizers.md``); their defaults reproduce the reference each names.
"""

from __future__ import annotations

from torch import Tensor

import qbench
from qbench.quantizer import ste_round, uniform_noise


def noise_pair(v: Tensor) -> qbench.Quantized:
    """Additive unit noise for both terms: ``v + u``, ``u ~ U(-1/2, 1/2)``."""
    v_tilde = uniform_noise(v)
    return qbench.Quantized(rate=v_tilde, dist=v_tilde)


def ste_pair(v: Tensor) -> qbench.Quantized:
    """Straight-through rounding for both terms: ``round(v)`` forward, identity backward."""
    v_hat = ste_round(v)
    return qbench.Quantized(rate=v_hat, dist=v_hat)


def mixed_pair(v: Tensor) -> qbench.Quantized:
    """Noise for the rate, straight-through rounding for the distortion."""
    return qbench.Quantized(rate=uniform_noise(v), dist=ste_round(v))


#: The unit-grid surrogates of this module by name: the same functions serve
#: ``noise``, ``ste`` and ``mixed`` here and every quantizer that applies one on
#: its own grid (``qvrf``, ``gain``).
UNIT_SURROGATES = {"noise": noise_pair, "mixed": mixed_pair, "ste": ste_pair}


class Round(qbench.Quantizer):
    """Hard rounding in training and test, no gradient: the control.

    ``y_hat = round(y - mu) + mu`` for both the rate and the distortion term.
    The latent receives no gradient from the loss (d round / dy = 0 a.e.).
    """


class Noise(qbench.Surrogate):
    """Additive uniform noise (Ballé, Laparra, Simoncelli, "End-to-end Optimized Image
    Compression", ICLR 2017; CompressAI's ``quantize(y, "noise")``).

    Training: ``y_tilde = y + u``, ``u ~ U(-1/2, 1/2)``, for both the rate and
    the distortion term; ``d y_tilde / dy = 1``. The density of ``y_tilde`` is
    the latent's density convolved with the unit box, which is what the
    entropy model's ``CDF(y + 1/2) - CDF(y - 1/2)`` evaluates.

    Default ``zero_center = False``, as the reference (noise is added to ``y``;
    centring changes nothing in distribution, only in rounding error of the
    float arithmetic). With ``zero_center = True, stop_gradient = "partial"``
    the rate's gradient to ``mu`` vanishes (see :class:`qbench.Surrogate`).
    """

    def __init__(
        self,
        scale_bound: float | None = None,
        zero_center: bool = False,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        return noise_pair(v)


class STE(qbench.Surrogate):
    """Straight-through rounding for both terms (Bengio, Léonard, Courville 2013).

    Training: forward ``round(y - mu) + mu``, backward identity ``d/dy = 1``,
    for the rate *and* the distortion term (the rate is charged on the hard
    value). Theis, Shi, Cunningham, Huszár (ICLR 2017) use the straight-through
    gradient for the distortion only, with a separate rate model; charging the
    rate on the hard value too is the common "STE" of later work (CompressAI's
    ``quantize_ste``), which is what qbench's ``ste`` is. ``mixed`` is the
    variant with a noisy rate.
    """

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        return ste_pair(v)


class Mixed(qbench.Surrogate):
    """Noise for the rate, straight-through rounding for the distortion.

    Minnen and Singh, "Channel-wise autoregressive entropy models for learned
    image compression", ICIP 2020: ``rate = y + u``, ``u ~ U(-1/2, 1/2)``;
    ``dist = round(y - mu) + mu`` forward with identity backward (the default
    ``zero_center = True``; with it the noisy rate value is computed as
    ``(y - mu + u) + mu``, equal to ``y + u`` up to float rounding).
    """

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        return mixed_pair(v)


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "round",
        Round,
        description="hard rounding in training too, no gradient (control)",
        differentiable=False,
    )
    register("noise", Noise, description="additive uniform noise U(-1/2, 1/2) (Balle 2017)")
    register(
        "ste",
        STE,
        description="rounding forward, identity backward, for rate and distortion "
        "(straight-through, Bengio 2013)",
    )
    register(
        "mixed", Mixed, description="noise for rate, STE rounding for distortion (Minnen 2020)"
    )
