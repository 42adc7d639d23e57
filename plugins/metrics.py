"""Rate-distortion metrics: ``bpp``, ``bpp_bitstream`` (+ ``bitexact``), ``psnr``, ``ms_ssim``."""

from __future__ import annotations

import torch
from pytorch_msssim import ms_ssim as _ms_ssim

import qbench
from qbench import rd
from qbench.analysis import mismatch, model_gradient_statistics


class Bpp(qbench.Metric):
    """Bits per pixel from the likelihoods: ``sum(-log2 P) / (H * W)`` over all latents.

    ``H * W`` is the unpadded image area (padding is overhead the codec pays).
    """

    columns = ("bpp",)

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        return {"bpp": float(rd.bpp(ev.likelihoods, ev.num_pixels))}


class BitstreamBpp(qbench.Metric):
    """Bits per pixel of the real rANS bitstream: ``8 * bytes / (H * W)``, and
    ``bitexact`` (1 when the decoded latents equal the encoder's, for every image)."""

    columns = ("bpp_bitstream", "bitexact")
    aggregate = {"bitexact": "all"}

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        return {"bpp_bitstream": 8.0 * ev.num_bytes / ev.num_pixels, "bitexact": float(ev.bitexact)}


class PSNR(qbench.Metric):
    """PSNR of the eval-mode reconstruction (:func:`qbench.rd.psnr`), per image, then
    averaged over images."""

    columns = ("psnr",)

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        return {"psnr": rd.psnr(ev.x, ev.x_hat)}


def ms_ssim(x: torch.Tensor, x_hat: torch.Tensor) -> float | None:
    """MS-SSIM (pytorch-msssim: 5 scales, 11x11 Gaussian window, data range 1).

    Five scales need a short side above 160 px; for smaller images the value is
    not applicable (``None``): the average over a dataset skips it and the
    row counts it in ``not_applicable``.
    """
    side = min(x.shape[-2:])
    if side <= 160:
        return None
    return float(_ms_ssim(x.clamp(0, 1), x_hat.clamp(0, 1), data_range=1.0))


class MSSSIM(qbench.Metric):
    """MS-SSIM of the eval-mode reconstruction (Wang, Simoncelli, Bovik 2003)."""

    columns = ("ms_ssim",)

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        return {"ms_ssim": ms_ssim(ev.x, ev.x_hat)}


class Mismatch(qbench.Metric):
    """Train-test mismatch on each evaluation image (formulas in :mod:`qbench.analysis`).

    ``mismatch_rate = (bpp_s - bpp_h) / bpp_h``, ``mismatch_dist = PSNR_s - PSNR_h``,
    ``mismatch_latent = mean (dist_s - y_hard)^2``; ``s`` is the surrogate in
    training mode at the end of training (averaged over ``draws``), ``h`` the
    hard quantization. Measured on the padded image the model sees.
    """

    columns = ("mismatch_rate", "mismatch_dist", "mismatch_latent")

    def __init__(self, draws: int = 4) -> None:
        self.draws = int(draws)

    def per_image(self, ev: qbench.ImageEval) -> dict[str, float]:
        torch.manual_seed(0)
        return mismatch(ev.model, ev.x_padded, draws=self.draws)


class Gradients(qbench.Metric):
    """Gradient-estimation variance and bias wrt the analysis transform, on a fixed
    training batch (``grad_var``, ``grad_bias``; formulas in :mod:`qbench.analysis`)."""

    columns = ("grad_var", "grad_bias")

    def __init__(self, draws: int = 32, directions: int = 8) -> None:
        self.draws, self.directions = int(draws), int(directions)

    def per_job(self, ev: qbench.JobEval) -> dict[str, float]:
        torch.manual_seed(ev.seed)
        return model_gradient_statistics(
            ev.model,
            ev.batch,
            ev.lmbda,
            draws=self.draws,
            directions=self.directions,
            seed=ev.seed,
        )


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
    register(
        "mismatch",
        Mismatch,
        description="train-test mismatch of rate, distortion and latent (Zhang et al. 2023)",
    )
    register(
        "gradients",
        Gradients,
        description="gradient-estimation variance and bias vs finite differences of the hard loss",
    )
