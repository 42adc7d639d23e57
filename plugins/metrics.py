"""Rate-distortion metrics: ``bpp``, ``bpp_bitstream`` (+ ``bitexact``), ``psnr``, ``ms_ssim``."""

from __future__ import annotations

import math
import warnings

import torch
from pytorch_msssim import ms_ssim as _ms_ssim

import qbench

#: MS-SSIM's standard scale weights (Wang, Simoncelli, Bovik 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class Bpp(qbench.Metric):
    """Bits per pixel from the likelihoods: ``sum(-log2 P) / (H * W)`` over all latents.

    ``H * W`` is the unpadded image area (padding is overhead the codec pays).
    """

    columns = ("bpp",)

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        bits = sum(float((-torch.log2(p)).sum()) for p in ev.likelihoods.values())
        return {"bpp": bits / ev.num_pixels}


class BitstreamBpp(qbench.Metric):
    """Bits per pixel of the real rANS bitstream: ``8 * bytes / (H * W)``, and
    ``bitexact`` (1 when the decoded latents equal the encoder's, for every image)."""

    columns = ("bpp_bitstream", "bitexact")
    aggregate = {"bitexact": "all"}

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        return {"bpp_bitstream": 8.0 * ev.num_bytes / ev.num_pixels, "bitexact": float(ev.bitexact)}


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """PSNR in dB on the 0-255 scale after clamping to [0, 1] (``10 log10(1 / MSE)``)."""
    mse = float(torch.mean((x.clamp(0, 1) - x_hat.clamp(0, 1)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


class PSNR(qbench.Metric):
    """PSNR of the eval-mode reconstruction, per image, then averaged over images."""

    columns = ("psnr",)

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        return {"psnr": psnr(ev.x, ev.x_hat)}


def ms_ssim(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """MS-SSIM (pytorch-msssim, data range 1, 11x11 Gaussian window).

    Images whose short side is too small for 5 scales (<= 160 px) use as many
    scales as fit, with the standard weights renormalised, and warn.
    """
    side = min(x.shape[-2:])
    scales = 5
    while scales > 1 and side <= 10 * 2 ** (scales - 1):
        scales -= 1
    if scales < 5:
        warnings.warn(f"image {side}px: MS-SSIM uses {scales} scales", stacklevel=2)
    w = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype)
    w = w / w.sum()
    return float(_ms_ssim(x.clamp(0, 1), x_hat.clamp(0, 1), data_range=1.0, weights=w.tolist()))


class MSSSIM(qbench.Metric):
    """MS-SSIM of the eval-mode reconstruction (Wang, Simoncelli, Bovik 2003)."""

    columns = ("ms_ssim",)

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        return {"ms_ssim": ms_ssim(ev.x, ev.x_hat)}


@qbench.hookimpl
def qbench_register_metrics(register):
    register("bpp", Bpp, description="bits per pixel from the likelihoods")
    register(
        "bpp_bitstream",
        BitstreamBpp,
        description="bits per pixel of the real rANS bitstream, and bitexact decoding",
    )
    register("psnr", PSNR, description="PSNR (dB, 0-255, per image then averaged)")
    register("ms_ssim", MSSSIM, description="MS-SSIM (pytorch-msssim)")
