"""The rate-distortion maths, in one place: bits per pixel, PSNR, the training loss.

Every part of qbench that needs one of these (the training loop, the
evaluation metrics, the mismatch and gradient statistics) calls the functions
here, so that a bpp or a PSNR means the same thing in every column.

* ``bpp = sum over latents of sum(-log2 P) / (N * H * W)``: bits per pixel from
  the likelihoods ``P`` a backbone returns, over the pixels of the (unpadded)
  images.
* ``PSNR = 10 log10(1 / MSE)`` in dB, with both images clamped to [0, 1] (the
  0-255 convention up to the scale that cancels); ``inf`` for identical images.
* ``loss = lambda * 255^2 * MSE + bpp``: CompressAI's ``RateDistortionLoss``
  convention (:data:`LOSS`, recorded in every manifest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: The training loss convention, recorded in every manifest.
LOSS = "lambda * 255^2 * MSE + bpp (CompressAI's RateDistortionLoss convention)"


def bits(likelihoods: Mapping[str, Tensor]) -> Tensor:
    """Total information content ``sum(-log2 P)`` of every latent, as a 0-dim tensor."""
    return sum((-torch.log2(p)).sum() for p in likelihoods.values())


def bpp(likelihoods: Mapping[str, Tensor], num_pixels: int) -> Tensor:
    """Bits per pixel: ``sum(-log2 P) / num_pixels`` (a 0-dim tensor, differentiable)."""
    return bits(likelihoods) / num_pixels


def mse(x: Tensor, x_hat: Tensor, clamp: bool = False) -> Tensor:
    """Mean squared error; with ``clamp`` both images are clamped to [0, 1] first."""
    if clamp:
        x, x_hat = x.clamp(0, 1), x_hat.clamp(0, 1)
    return F.mse_loss(x_hat, x)


def psnr_from_mse(value: float) -> float:
    """``10 log10(1 / mse)`` in dB for images in [0, 1]; ``inf`` when ``mse == 0``."""
    value = float(value)
    return float("inf") if value <= 0 else 10.0 * math.log10(1.0 / value)


def psnr(x: Tensor, x_hat: Tensor) -> float:
    """PSNR in dB of ``x_hat`` against ``x``, both clamped to [0, 1]."""
    return psnr_from_mse(float(mse(x, x_hat, clamp=True)))


def rd_loss(out: Mapping[str, Any], x: Tensor, lmbda: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, bpp, mse)`` of a backbone output on the batch ``x``.

    ``loss = lambda * 255^2 * mse + bpp`` with ``mse`` unclamped (the training
    objective sees the raw synthesis output) and ``bpp`` over ``N * H * W``.
    """
    n, _, h, w = x.shape
    rate = bpp(out["likelihoods"], n * h * w)
    dist = mse(x, out["x_hat"])
    return lmbda * 255.0**2 * dist + rate, rate, dist
