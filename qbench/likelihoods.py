"""Likelihoods of quantized latents on arbitrary quantization cells.

CompressAI's entropy models compute ``P(v) = CDF(v + 1/2) - CDF(v - 1/2)``:
the cell of uniform rounding. qbench asks the quantizer for the cell instead
(``Quantizer.bins``) and evaluates the same CDFs on it, so that a non-uniform
quantizer (STanH) is charged the right rate. With uniform cells these
functions reproduce CompressAI's likelihoods.
"""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor


def bottleneck_likelihood(eb: EntropyBottleneck, lower: Tensor, upper: Tensor) -> Tensor:
    """``P = sigmoid(f(upper)) - sigmoid(f(lower))`` for the factorized density of ``eb``.

    ``f`` is the learned cumulative logit of Ballé et al. 2018 (per channel).
    ``lower``/``upper`` have shape ``N x C x ...``; the result has the same shape
    and is lower-bounded as CompressAI does (``likelihood_lower_bound``).
    """
    shape = lower.shape
    perm = (1, 0, *range(2, lower.dim()))

    def to_channels(t: Tensor) -> Tensor:
        return t.permute(*perm).reshape(shape[1], 1, -1)

    lo = eb._logits_cumulative(to_channels(lower), stop_gradient=False)
    up = eb._logits_cumulative(to_channels(upper), stop_gradient=False)
    # Evaluate in the tail where the sigmoids are small, as tensorflow-compression does.
    sign = -torch.sign(lo + up).detach()
    p = torch.abs(torch.sigmoid(sign * up) - torch.sigmoid(sign * lo))
    if eb.use_likelihood_bound:
        p = eb.likelihood_lower_bound(p)
    p = p.reshape(shape[1], shape[0], *shape[2:]).permute(*perm)
    return p.contiguous()


def gaussian_likelihood(
    gc: GaussianConditional,
    lower: Tensor,
    upper: Tensor,
    scales: Tensor,
    means: Tensor | None = None,
) -> Tensor:
    """``P = Phi((upper - mu) / s) - Phi((lower - mu) / s)`` with ``s`` lower-bounded by ``gc``.

    The cell is reflected to the left tail before evaluating (as CompressAI
    does with ``|y - mu|``) to keep precision for values far from the mean.
    """
    if means is not None:
        lower = lower - means
        upper = upper - means
    s = gc.lower_bound_scale(scales)
    flip = (lower + upper).detach() > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    p = gc._standardized_cumulative(b / s) - gc._standardized_cumulative(a / s)
    if gc.use_likelihood_bound:
        p = gc.likelihood_lower_bound(p)
    return p
