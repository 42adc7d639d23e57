r"""Train-test mismatch and gradient-estimation statistics of a surrogate, with intervals.

Pure functions of a model and a fixed *probe set* (``B`` batches of training
crops, no I/O), used by the ``mismatch`` and ``gradients`` metrics at each
point of the training schedule. Every statistic is a :class:`Estimate`: the
value on the whole probe set and a 95 % interval over the probe batches
(delete-one jackknife standard error times Student's ``t`` with ``B - 1``
degrees of freedom, :func:`jackknife`), or an exact value with the reason
when it is zero by construction (a deterministic surrogate has no gradient
variance; a surrogate that equals rounding has no mismatch).

**Train-test mismatch** (after Zhang, Li, Liu 2023, arXiv 2309.17051, who
contrast the surrogate with rounding on the same network): every batch goes
once through the model in eval mode (hard quantization, ``h``) and ``K``
times in training mode (the surrogate, ``s``, averaged over the draws)::

    mismatch_rate   = sum_b (bpp_s - bpp_h) / sum_b bpp_h
    mismatch_dist   = PSNR(mean_b mse_s) - PSNR(mean_b mse_h)            [dB]
    mismatch_latent = mean over latents of (latent_s - latent_h)^2

**Gradient estimation.** Let ``theta`` be the analysis transform's parameters
and ``L_s``, ``L_h`` the rate-distortion loss with the surrogate and with
hard quantization. ``L_h`` is piecewise constant in ``theta`` (each latent
jumps when it crosses a rounding boundary), so its gradient is zero almost
everywhere; the *reference* is the derivative of ``L_h`` smoothed over a
step of ``h``: the central difference
``D(u, h) = (L_h(theta + h u) - L_h(theta - h u)) / 2h``, with ``h`` chosen
so that the latents move by a root mean square of ``latent_rms``
quantization steps (default 0.05: thousands of latents of a probe set cross
a boundary, so ``D`` averages over their jumps, yet the smoothed loss is
locally linear). Assumptions: the smoothed loss is linear on ``[-h, h]``
(checked: ``D`` is recomputed at ``h / 2`` and ``2 h`` and the statistic is
flagged when it moves by more than its interval and more than
:data:`PLATEAU_TOLERANCE`), and the probe batches are exchangeable (for the
interval; they are i.i.d. draws of training crops, so the interval is over
the crops of *this* training set, however few images it has).

Per batch ``b``, ``K`` surrogate draws give gradients ``g_bk``:

* ``grad_var`` (normalised variance, each part unbiased): with
  ``v_b = sum_k ||g_bk - g_b||^2 / (K - 1)`` (the trace of the draw
  covariance) and ``m_b = (||sum_k g_bk||^2 - sum_k ||g_bk||^2) / (K (K - 1))``
  (an unbiased ``||E g_b||^2``), ``grad_var = sum_b v_b / sum_b m_b``: the
  noise-to-signal power of one surrogate draw. The naive
  ``mean ||g_k - g||^2 / ||g||^2`` saturates at ``K - 1`` when noise
  dominates; this one does not (it is undefined, and flagged, when the probe
  set cannot resolve the mean, ``sum m_b <= 0``).
* ``grad_slope_ratio`` (the surrogate's fidelity along its mean direction):
  with the unit mean direction ``u``, the surrogate's directional derivative
  ``S = sum_b g_b . u`` and the reference ``D = sum_b D_b(u, h)``,
  ``grad_slope_ratio = D / S``: the share of the loss decrease promised by a
  step along the surrogate's own mean gradient that the hard loss delivers
  (1: faithful; below 1 the surrogate over-promises, 0: no real decrease,
  negative: the step makes the hard loss worse; above 1 it under-promises).
  Its bias is ``1 - grad_slope_ratio``. ``u`` is cross-fitted: the draws are
  split in two halves, the direction of one half is scored with the
  gradients of the other (and vice versa), so draw noise that aligns ``u``
  with itself does not inflate ``S``.

Why a ratio, not the bias ``1 - D / S``: on real photographs the built-in
surrogates' bias along their mean direction is zero within its interval (STE
-0.018 +- 0.044, noise -0.027 +- 0.039 on the shipped initialisation,
docs/statistics.md), and no estimator states a value that is zero within its
noise to a relative precision; the ratio carries the same measurement and is
resolved to a few per cent of its value. Why along the mean direction and not
over random directions: a random unit direction carries a ``1/sqrt(dim)``
share of the gradient, far below the finite-difference noise, and the norm of
a noise-dominated difference vector is positive whatever the truth (across
probe batches and step sizes such a statistic moves by a factor of 30). Along
the mean direction the signal is the whole gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from scipy import stats as _scipy_stats
from torch import Tensor

from qbench import rd

#: Confidence level of every interval qbench reports.
LEVEL = 0.95
#: ``grad_slope_ratio`` moves by less than this (1 % of the promised loss decrease) across
#: step sizes: a plateau even when the interval is narrower.
PLATEAU_TOLERANCE = 0.01


@dataclass(frozen=True)
class Estimate:
    """A statistic with its 95 % interval.

    Attributes:
        value: the estimate on the whole probe set.
        low, high: the interval (equal to ``value`` when exact).
        exact: why the value is exact by construction ("" for an estimate),
            e.g. ``"deterministic surrogate"``: shown as such, not as a finding.
        flag: a caveat about the estimate ("" when none), e.g. step-size sensitivity.
    """

    value: float
    low: float
    high: float
    exact: str = ""
    flag: str = ""

    @classmethod
    def zero(cls, why: str) -> Estimate:
        return cls(0.0, 0.0, 0.0, exact=why)

    @classmethod
    def undefined(cls, why: str) -> Estimate:
        nan = float("nan")
        return cls(nan, nan, nan, flag=why)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_quantile(dof: int, level: float = LEVEL) -> float:
    """Two-sided Student ``t`` quantile (``dof`` >= 1)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, dof))


def jackknife(stat: Callable[[Tensor], float], n: int, level: float = LEVEL) -> Estimate:
    """``stat`` on all ``n`` units with a delete-one jackknife ``t`` interval.

    ``stat(keep)`` computes the statistic from the units where the boolean
    mask ``keep`` is true. Standard error
    ``sqrt((n - 1) / n * sum_i (stat_(i) - mean)^2)`` (Efron & Tibshirani
    1993, ch. 11), half-width ``t_{n-1} * se``. Needs ``n >= 2``.
    """
    if n < 2:
        raise ValueError(f"an interval needs at least 2 probe batches, got {n}")
    keep = torch.ones(n, dtype=torch.bool)
    value = float(stat(keep))
    loo = []
    for i in range(n):
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        loo.append(float(stat(keep)))
    loo_t = torch.tensor(loo, dtype=torch.float64)
    if not math.isfinite(value) or not bool(torch.isfinite(loo_t).all()):
        return Estimate(value, float("nan"), float("nan"))
    se = math.sqrt((n - 1) / n * float(((loo_t - loo_t.mean()) ** 2).sum()))
    half = t_quantile(n - 1, level) * se
    return Estimate(value, value - half, value + half)


def ratio_of_sums(num: Tensor, den: Tensor) -> Callable[[Tensor], float]:
    """``keep -> sum(num[keep]) / sum(den[keep])`` (nan when the denominator is not positive)."""

    def stat(keep: Tensor) -> float:
        d = float(den[keep].sum())
        return float(num[keep].sum()) / d if d > 0 else float("nan")

    return stat


# -- mismatch -------------------------------------------------------------------


@torch.no_grad()
def mismatch(model, batches: Sequence[Tensor], draws: int) -> dict[str, Estimate]:
    """Train-test mismatch of ``model``'s quantizers on the probe set (module docstring).

    Uses torch's global RNG for the surrogate's draws (run it under
    :func:`isolated_rng`); the model's mode is restored.
    """
    was_training = model.training
    rows = []
    identical = True
    try:
        for x in batches:
            n_pix = x.shape[0] * x.shape[-2] * x.shape[-1]
            model.eval()
            hard = model(x)
            row = {
                "bpp_h": float(rd.bpp(hard["likelihoods"], n_pix)),
                "mse_h": float(rd.mse(x, hard["x_hat"], clamp=True)),
                "bpp_s": 0.0,
                "mse_s": 0.0,
                "sq": 0.0,
                "n": float(sum(v.numel() for v in hard["latents"].values())),
            }
            model.train()
            for _ in range(draws):
                out = model(x)
                row["bpp_s"] += float(rd.bpp(out["likelihoods"], n_pix)) / draws
                row["mse_s"] += float(rd.mse(x, out["x_hat"], clamp=True)) / draws
                for k, h in hard["latents"].items():
                    row["sq"] += float(((out["latents"][k] - h) ** 2).sum()) / draws
                identical = identical and all(
                    torch.equal(out[part][k], v)
                    for part in ("latents", "likelihoods")
                    for k, v in hard[part].items()
                )
            rows.append(row)
    finally:
        model.train(was_training)
    if identical:
        why = "surrogate equals rounding here"
        return {
            c: Estimate.zero(why) for c in ("mismatch_rate", "mismatch_dist", "mismatch_latent")
        }
    col = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in rows[0]}

    def dist(keep: Tensor) -> float:
        return rd.psnr_from_mse(float(col["mse_s"][keep].mean())) - rd.psnr_from_mse(
            float(col["mse_h"][keep].mean())
        )

    n = len(rows)
    return {
        "mismatch_rate": jackknife(ratio_of_sums(col["bpp_s"] - col["bpp_h"], col["bpp_h"]), n),
        "mismatch_dist": jackknife(dist, n),
        "mismatch_latent": jackknife(ratio_of_sums(col["sq"], col["n"]), n),
    }


# -- gradients ------------------------------------------------------------------


def _flat_grad(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    ).double()


@torch.no_grad()
def _move(params: Sequence[Tensor], direction: Tensor, step: float) -> None:
    """``params += step * direction`` (``direction`` flat over all of ``params``)."""
    offset = 0
    for p in params:
        d = direction[offset : offset + p.numel()].view_as(p).to(p.dtype)
        p.add_(d, alpha=step)
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
    """``(L(theta + step u) - L(theta - step u)) / 2 step`` along the flat ``direction`` ``u``;
    the parameters are restored exactly."""
    with _restored(params):
        _move(params, direction, step)
        plus = float(hard_loss())
        _move(params, direction, -2 * step)
        minus = float(hard_loss())
    return (plus - minus) / (2 * step)


@dataclass
class DrawSums:
    """Per-batch sums over ``K`` surrogate gradient draws (the draws are not kept).

    ``even``/``odd``: sums of the gradients of the even/odd draws (the two
    halves of the cross-fit); ``squares``: ``sum_k ||g_k||^2``; ``identical``:
    every draw gave bit-identical gradients (a deterministic surrogate).
    """

    even: Tensor
    odd: Tensor
    squares: float
    draws: int
    identical: bool

    @property
    def total(self) -> Tensor:
        return self.even + self.odd

    @property
    def trace_cov(self) -> float:
        """Unbiased trace of the draws' covariance."""
        k = self.draws
        return (self.squares - float(self.total.pow(2).sum()) / k) / (k - 1)

    @property
    def mean_sq(self) -> float:
        """Unbiased ``||E g||^2`` (a U-statistic; may be negative when noise dominates)."""
        k = self.draws
        return (float(self.total.pow(2).sum()) - self.squares) / (k * (k - 1))


def draw_sums(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], draws: int) -> DrawSums:
    """Take ``draws`` (even, >= 2) surrogate gradients of ``loss_fn()`` and keep their sums."""
    if draws < 2 or draws % 2:
        raise ValueError(f"gradient statistics need an even number of draws >= 2, got {draws}")
    first = _flat_grad(loss_fn(), params)
    even, odd = first.clone(), torch.zeros_like(first)
    squares = float(first.pow(2).sum())
    identical = True
    for k in range(1, draws):
        g = _flat_grad(loss_fn(), params)
        identical = identical and torch.equal(g, first)
        (odd if k % 2 else even).add_(g)
        squares += float(g.pow(2).sum())
    return DrawSums(even, odd, squares, draws, identical)


def gradient_statistics(
    surrogate_losses: Sequence[Callable[[], Tensor]],
    hard_losses: Sequence[Callable[[], Tensor]],
    params: Sequence[Tensor],
    *,
    draws: int = 16,
    step: float | Callable[[Tensor], float] = 1e-3,
    step_factors: Sequence[float] = (0.5, 1.0, 2.0),
) -> dict[str, Estimate]:
    """``grad_var`` and ``grad_slope_ratio`` over probe batches (see the module docstring).

    ``surrogate_losses[b]`` / ``hard_losses[b]`` compute batch ``b``'s loss
    with the surrogate (random: one draw per call) and with hard
    quantization. ``step`` is the finite-difference step, or a function of the
    unit direction that returns it; the reference is also taken at each
    ``step_factors`` multiple of it, and ``grad_slope_ratio`` is flagged when those
    move it by more than its interval (no plateau in ``h``).
    """
    n = len(surrogate_losses)
    sums = [draw_sums(f, params, draws) for f in surrogate_losses]
    out: dict[str, Estimate] = {}
    if all(s.identical for s in sums):
        out["grad_var"] = Estimate.zero("deterministic surrogate")
    else:
        v = torch.tensor([s.trace_cov for s in sums], dtype=torch.float64)
        m = torch.tensor([s.mean_sq for s in sums], dtype=torch.float64)
        if float(m.sum()) <= 0:
            out["grad_var"] = Estimate.undefined(
                "mean gradient not resolved by the probe set (noise dominates): more draws"
            )
        else:
            out["grad_var"] = jackknife(ratio_of_sums(v, m), n)
    out["grad_slope_ratio"] = _slope_ratio_along_mean(sums, hard_losses, params, step, step_factors)
    return out


def _slope_ratio_along_mean(sums, hard_losses, params, step, step_factors) -> Estimate:
    half = sums[0].draws // 2
    folds = []  # (unit direction, per-batch surrogate derivative along it from the other half)
    for fit, score in (("even", "odd"), ("odd", "even")):
        direction = sum(getattr(s, fit) for s in sums)
        norm = float(direction.norm())
        if norm == 0:
            return Estimate.undefined("the surrogate's mean gradient is zero")
        u = direction / norm
        folds.append((u, torch.tensor([float(getattr(s, score) @ u) / half for s in sums])))
    surrogate = folds[0][1] + folds[1][1]
    estimates = {}
    for factor in sorted(set(step_factors) | {1.0}):
        ref = torch.zeros(len(sums), dtype=torch.float64)
        for u, _ in folds:
            h = factor * (step(u) if callable(step) else step)
            ref += torch.tensor([finite_difference(f, params, u, h) for f in hard_losses])
        estimates[factor] = jackknife(ratio_of_sums(ref, surrogate), len(sums))
    main = estimates[1.0]
    tolerance = max(main.half_width, PLATEAU_TOLERANCE)
    moved = {f: e.value for f, e in estimates.items() if abs(e.value - main.value) > tolerance}
    if moved:
        shown = ", ".join(f"{f:g}h: {v:.3g}" for f, v in moved.items())
        return Estimate(main.value, main.low, main.high, flag=f"no plateau in h ({shown})")
    return main


def latent_step(model, batches: Sequence[Tensor], params: Sequence[Tensor], target_rms: float):
    """A step function for :func:`gradient_statistics`: the parameter step along a unit
    direction that moves the latents ``model.analysis(x)`` of the probe set by a root mean
    square of ``target_rms`` (measured by a small forward difference)."""
    x = torch.cat(list(batches))

    @torch.no_grad()
    def step(direction: Tensor) -> float:
        eps = 1e-3
        y0 = model.analysis(x)
        with _restored(params):
            _move(params, direction, eps)
            y1 = model.analysis(x)
        rms = float((y1 - y0).pow(2).mean().sqrt()) / eps
        return target_rms / rms if rms > 0 else eps

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
    model,
    batches: Sequence[Tensor],
    lmbda: float,
    *,
    draws: int = 16,
    latent_rms: float = 0.05,
    step_factors: Sequence[float] = (0.5, 1.0, 2.0),
) -> dict[str, Estimate]:
    """``grad_var``/``grad_slope_ratio`` of ``model``'s surrogate wrt its analysis transform.

    The gradient is taken wrt the analysis transform even when it is frozen (a
    derived model refines only its quantizer): the surrogate's gradient noise
    and bias are properties of the quantizer, not of what the optimizer updates.
    Uses torch's global RNG (run it under :func:`isolated_rng`).
    """
    with _analysis_gradients(model) as params:
        return gradient_statistics(
            [_rd_loss_in_mode(model, x, lmbda, training=True) for x in batches],
            [_rd_loss_in_mode(model, x, lmbda, training=False) for x in batches],
            params,
            draws=draws,
            step=latent_step(model, batches, params, latent_rms),
            step_factors=step_factors,
        )


@contextlib.contextmanager
def isolated_rng(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a probe on its own RNG stream: torch's CPU (and the device's CUDA) RNG state is
    restored afterwards, so a statistic never shifts the training's random draws."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
