"""Train-test mismatch and gradient-estimation statistics of a surrogate.

Pure functions of a model and a batch (no I/O), used by the ``mismatch`` and
``gradients`` metrics and by the per-step history.

Train-test mismatch (after Zhang, Li, Liu 2023, arXiv 2309.17051, who
contrast the surrogate with rounding on the same network): the same forward
pass once with the quantizers in training mode (the surrogate; averaged over
``K`` draws) and once in eval mode (hard quantization)::

    mismatch_rate   = (bpp_surrogate - bpp_hard) / bpp_hard
    mismatch_dist   = PSNR_surrogate - PSNR_hard          [dB]
    mismatch_latent = mean over latents of (dist_surrogate - y_hard)^2

Gradient-estimation risk: ``K`` draws of the surrogate give ``K`` gradients
``g_k`` of the training loss wrt the parameters ``theta`` (the analysis
transform)::

    grad_var  = mean_k ||g_k - g_bar||^2 / ||g_bar||^2
    grad_bias = ||U^T g_bar - d_hard|| / ||d_hard||

where the columns of ``U`` are ``D`` random unit directions plus
``g_bar / ||g_bar||``, and ``d_hard[j]`` is the central finite difference
``(L_hard(theta + h u_j) - L_hard(theta - h u_j)) / 2h`` of the *hard*
(eval-mode) loss. The hard loss is piecewise constant in each latent, but
averaged over the many latents of a batch it changes smoothly with
``theta``; ``h`` is chosen per direction so that the latents move by a root
mean square of ``latent_step`` (default 0.1 quantization steps): large enough
that thousands of latents cross a rounding boundary (so the difference
averages over them rather than measuring one jump), small enough that the
smoothed loss is locally linear.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from qbench import rd


@torch.no_grad()
def mismatch(model, x: Tensor, draws: int = 4) -> dict[str, float]:
    """Train-test mismatch of ``model``'s quantizers on batch ``x`` (see module docstring)."""
    was_training = model.training
    n_pix = x.shape[0] * x.shape[-2] * x.shape[-1]
    model.eval()
    hard = model(x)
    bpp_h = float(rd.bpp(hard["likelihoods"], n_pix))
    mse_h = float(rd.mse(x, hard["x_hat"], clamp=True))
    model.train()
    bpp_s = mse_s = lat = 0.0
    for _ in range(draws):
        out = model(x)
        bpp_s += float(rd.bpp(out["likelihoods"], n_pix)) / draws
        mse_s += float(rd.mse(x, out["x_hat"], clamp=True)) / draws
        sq = sum(
            float(((out["latents"][k] - hard["latents"][k]) ** 2).sum()) for k in hard["latents"]
        )
        n = sum(hard["latents"][k].numel() for k in hard["latents"])
        lat += sq / n / draws
    model.train(was_training)
    return {
        "mismatch_rate": (bpp_s - bpp_h) / bpp_h if bpp_h > 0 else float("nan"),
        "mismatch_dist": rd.psnr_from_mse(mse_s) - rd.psnr_from_mse(mse_h),
        "mismatch_latent": lat,
    }


def _flat_grad(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def surrogate_gradients(
    loss_fn: Callable[[], Tensor], params: Sequence[Tensor], draws: int
) -> Tensor:
    """``draws x dim`` matrix of gradients of ``loss_fn()`` (one surrogate draw each)."""
    return torch.stack([_flat_grad(loss_fn(), params) for _ in range(draws)])


def gradient_variance(grads: Tensor) -> float:
    """``mean_k ||g_k - g_bar||^2 / ||g_bar||^2`` (inf when the mean gradient is zero)."""
    mean = grads.mean(0)
    denom = float(mean.pow(2).sum())
    var = float((grads - mean).pow(2).sum(1).mean())
    return var / denom if denom > 0 else float("inf")


@torch.no_grad()
def _move(params: Sequence[Tensor], direction: Tensor, step: float) -> None:
    """``params += step * direction`` (``direction`` flat over all of ``params``)."""
    offset = 0
    for p in params:
        p.add_(direction[offset : offset + p.numel()].view_as(p), alpha=step)
        offset += p.numel()


@contextlib.contextmanager
def _restored(params: Sequence[Tensor]) -> Iterator[None]:
    """Put ``params`` back bit for bit afterwards (``p + h - h`` is not ``p`` in floats)."""
    saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


@torch.no_grad()
def finite_difference(
    hard_loss: Callable[[], Tensor], params: Sequence[Tensor], direction: Tensor, step: float
) -> float:
    """Central difference of ``hard_loss`` along ``direction`` (flat, over ``params``);
    the parameters are restored exactly."""
    with _restored(params):
        _move(params, direction, step)
        plus = float(hard_loss())
        _move(params, direction, -2 * step)
        minus = float(hard_loss())
    return (plus - minus) / (2 * step)


def gradient_statistics(
    surrogate_loss: Callable[[], Tensor],
    hard_loss: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    draws: int = 32,
    directions: int = 8,
    step: float | Callable[[Tensor], float] = 1e-3,
    seed: int = 0,
) -> dict[str, float]:
    """``grad_var`` and ``grad_bias`` of a surrogate (see the module docstring).

    ``step`` is the finite-difference step, or a function of the unit
    direction that returns it.
    """
    grads = surrogate_gradients(surrogate_loss, params, draws)
    mean = grads.mean(0)
    gen = torch.Generator().manual_seed(seed)
    dirs = [torch.randn(mean.numel(), generator=gen).to(mean) for _ in range(directions)]
    if float(mean.norm()) > 0:
        dirs.append(mean.clone())
    dirs = [d / d.norm() for d in dirs]
    fd, proj = [], []
    for d in dirs:
        h = step(d) if callable(step) else step
        fd.append(finite_difference(hard_loss, params, d, h))
        proj.append(float(mean @ d))
    fd_t, proj_t = torch.tensor(fd), torch.tensor(proj)
    denom = float(fd_t.norm())
    return {
        "grad_var": gradient_variance(grads),
        "grad_bias": float((proj_t - fd_t).norm()) / denom if denom > 0 else float("nan"),
    }


def latent_step(model, x: Tensor, params: Sequence[Tensor], target_rms: float = 0.1):
    """A step function for :func:`gradient_statistics`: moves the latents by ``target_rms``.

    The RMS latent change per unit parameter step along a direction is measured
    by a small forward difference of ``model.analysis(x)``.
    """

    @torch.no_grad()
    def step(direction: Tensor) -> float:
        eps = 1e-3
        y0 = model.analysis(x)
        with _restored(params):
            _move(params, direction, eps)
            y1 = model.analysis(x)
        rms = float((y1 - y0).pow(2).mean().sqrt()) / eps
        return target_rms / rms if rms > 0 else 1e-3

    return step


@contextlib.contextmanager
def _analysis_gradients(model) -> Iterator[list[Tensor]]:
    """The analysis parameters with gradients on (also when frozen); modes restored after."""
    params = list(model.analysis_parameters())
    was_training = model.training
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p, r in zip(params, saved):
            p.requires_grad_(r)
        model.train(was_training)


def _rd_loss_in_mode(model, x: Tensor, lmbda: float, training: bool) -> Callable[[], Tensor]:
    def loss() -> Tensor:
        model.train(training)
        return rd.rd_loss(model(x), x, lmbda)[0]

    return loss


def model_gradient_statistics(
    model, x: Tensor, lmbda: float, *, draws: int = 32, directions: int = 8, seed: int = 0
) -> dict[str, float]:
    """``grad_var``/``grad_bias`` of ``model``'s surrogate wrt its analysis transform."""
    with _analysis_gradients(model) as params:
        return gradient_statistics(
            _rd_loss_in_mode(model, x, lmbda, training=True),
            _rd_loss_in_mode(model, x, lmbda, training=False),
            params,
            draws=draws,
            directions=directions,
            step=latent_step(model, x, params),
            seed=seed,
        )


@contextlib.contextmanager
def isolated_rng(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a probe on its own RNG stream: torch's CPU (and the device's CUDA) RNG state is
    restored afterwards, so a statistic never shifts the training's random draws."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def training_statistics(model, x: Tensor, lmbda: float, draws: int = 4) -> dict[str, float]:
    """Cheap per-step statistics for history.csv: mismatch and gradient variance.

    The gradient is taken wrt the analysis transform even when it is frozen
    (a derived model refines only its quantizer): the surrogate's gradient
    noise is a property of the quantizer, not of what the optimizer updates.
    """
    stats = mismatch(model, x, draws=draws)
    with _analysis_gradients(model) as params:
        grads = surrogate_gradients(_rd_loss_in_mode(model, x, lmbda, True), params, draws)
    stats["grad_var"] = gradient_variance(grads)
    return stats
