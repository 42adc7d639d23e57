"""Rate-distortion metrics: ``bpp``, ``bpp_bitstream`` (+ ``bitexact``), ``psnr``, ``ms_ssim``."""

from __future__ import annotations

import torch
from pytorch_msssim import ms_ssim as _ms_ssim

import qbench
from qbench import rd
from qbench.analysis import Estimate, mismatch, model_gradient_statistics


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
    """Train-test mismatch over the training schedule (formulas in :mod:`qbench.analysis`).

    ``mismatch_rate = sum (bpp_s - bpp_h) / sum bpp_h``,
    ``mismatch_dist = PSNR_s - PSNR_h`` [dB],
    ``mismatch_latent = mean (dist_s - hard)^2`` (the values fed to the
    synthesis, the distortion path) and ``mismatch_latent_rate = mean (rate_s - hard)^2``
    (the values whose likelihood is charged, the rate path); ``s`` is the
    surrogate (training mode, averaged over ``K`` draws), ``h`` hard
    quantization, on the job's probe set at each schedule point. Each column
    is exactly zero, and said so, where its path equals rounding (STE both;
    ``mixed`` its distortion path; an annealed surrogate at its end).
    """

    columns = ("mismatch_rate", "mismatch_dist", "mismatch_latent", "mismatch_latent_rate")
    column_notes = {
        "mismatch_rate": "Relative rate gap, surrogate vs hard rounding on the same weights: "
        "sum (bpp_s - bpp_h) / sum bpp_h over the probe batches (0: no mismatch).",
        "mismatch_dist": "PSNR with the surrogate minus PSNR with hard rounding [dB]; exact "
        "where the distortion path rounds (STE, mixed).",
        "mismatch_latent": "Mean squared difference between the latents fed to the synthesis "
        "with the surrogate (distortion path) and the rounded ones, in quantization steps "
        "squared: about 1/6 for additive noise (rounding residual 1/12 plus noise 1/12, for "
        "latents spread over many cells), 0 and exact for STE and mixed.",
        "mismatch_latent_rate": "The same for the values whose likelihood is charged (rate "
        "path): about 1/6 for additive noise and for mixed, 0 and exact for STE.",
    }

    def per_probe(self, ev: qbench.ProbeEval) -> dict[str, Estimate]:
        stats = mismatch(ev.model, ev.batches, ev.draws)
        return {c: stats[c] for c in self.columns}


class Gradients(qbench.Metric):
    """Gradient-estimation noise and fidelity wrt the analysis transform over the
    training schedule (formulas, assumptions and intervals in :mod:`qbench.analysis`).

    ``grad_var``: ``tr Cov(g) / ||E g||^2`` for one surrogate draw ``g`` of the
    gradient of a *training batch* (``[train] batch_size`` crops of ``crop``
    pixels), ``E g`` its mean over training crops and draws; estimated on the
    probe set with the draw variance scaled by ``P_probe / P_train`` (it goes
    as one over the pixels of a batch), jackknife bias-corrected.
    ``grad_slope_ratio``: along the surrogate's mean gradient direction, the hard
    loss's central-difference slope (step moving the latents by ``latent_rms``
    quantization steps, re-measured at half and twice that step: flagged "no
    plateau in h" when it moves by more than its interval) divided by the slope
    the surrogate promises; 1 is faithful, ``1 - grad_slope_ratio`` is the bias.
    Its interval refits the direction in every jackknife replicate. It replaces
    ``grad_bias`` (``1 - ratio``), whose value is zero within its interval on
    real models and so cannot be stated to a relative precision
    (docs/statistics.md).
    """

    columns = ("grad_var", "grad_slope_ratio")
    column_notes = {
        "grad_var": "Noise-to-signal power of one surrogate draw of the analysis gradient "
        "of a training batch: tr Cov(g) / ||E g||^2, the mean over training crops and "
        "draws; the probe's draw variance is scaled to the training batch's pixels "
        "(columns probe_pixels, train_pixels), bias-corrected. 0 and exact for a "
        "deterministic surrogate.",
        "grad_slope_ratio": "Along the mean surrogate gradient, the hard loss's slope "
        "(central difference moving the latents by a fixed rms, checked at half and twice "
        "that step) over the slope the surrogate promises: 1 is faithful, below 1 the "
        "surrogate over-promises; its bias is 1 - ratio. It replaces `grad_bias`, which is "
        "zero within its interval on real models and cannot be stated to a relative "
        "precision.",
    }

    def __init__(self, latent_rms: float = 0.05) -> None:
        self.latent_rms = float(latent_rms)

    def per_probe(self, ev: qbench.ProbeEval) -> dict[str, Estimate]:
        stats = model_gradient_statistics(
            ev.model,
            ev.batches,
            ev.lmbda,
            draws=ev.draws,
            latent_rms=self.latent_rms,
            train_pixels=ev.train_pixels,
        )
        return {c: stats[c] for c in self.columns}


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
        description="train-test mismatch of rate, distortion and latent over the schedule",
    )
    register(
        "gradients",
        Gradients,
        description="gradient variance and slope ratio (vs the hard loss) over the schedule",
    )
