r"""Train-test mismatch and gradient-estimation statistics of a surrogate, with intervals.

Pure functions of a model and a fixed *probe set* (``B`` batches of training
crops, no I/O), used by the ``mismatch`` and ``gradients`` metrics at each
point of the training schedule. Every statistic is an :class:`Estimate`: the
value on the whole probe set and a 95 % interval over the probe batches
(jackknife standard error times Student's ``t``, :func:`jackknife`), or an
exact value with the reason when it is zero by construction (a deterministic
surrogate has no gradient variance; a path of a surrogate that equals
rounding has no mismatch there).

**Train-test mismatch** (after Zhang, Li, Liu 2023, arXiv 2309.17051, who
contrast the surrogate with rounding on the same network): every batch goes
once through the model in eval mode (hard quantization, ``h``) and ``K``
times in training mode (the surrogate, ``s``, averaged over the draws)::

    mismatch_rate        = sum_b (bpp_s - bpp_h) / sum_b bpp_h
    mismatch_dist        = PSNR(mean_b mse_s) - PSNR(mean_b mse_h)            [dB]
    mismatch_latent      = mean over latents of (dist_s - latent_h)^2
    mismatch_latent_rate = mean over latents of (rate_s - latent_h)^2

``dist_s`` is the value fed to the synthesis (the distortion path), ``rate_s``
the value whose likelihood is charged (the rate path; the backbone's
``rate_latents``). For additive noise both are about ``1/6``: the rounding
residual ``y - round(y)`` (variance ``1/12`` for latents spread over many
cells) plus the independent noise (``1/12``). Each column is exact when its
path equals rounding bit for bit in every draw (``mixed``: the distortion
path is STE, so ``mismatch_dist`` and ``mismatch_latent`` are exactly 0).

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

Per batch ``b``, ``K`` surrogate draws give gradients ``g_bk`` (of the batch's
loss, a mean over its ``P`` pixels):

* ``grad_var`` (the noise-to-signal power of one surrogate draw of a training
  batch's gradient). *Estimand*: ``tr Cov(g | batch) / ||G||^2`` for a batch
  of ``P_train`` pixels (``[train] batch_size`` crops of the training crop),
  where ``Cov(g | batch)`` is the covariance over the surrogate's draws (its
  trace averaged over training batches) and ``G = E g`` the mean gradient over
  training crops and draws. Estimator::

      v_b = sum_k ||g_bk - gbar_b||^2 / (K - 1)                (unbiased tr Cov)
      U   = sum_{b != c} gbar_b . gbar_c / (B (B - 1))          (unbiased ||G||^2)
      grad_var = (P_probe / P_train) * mean_b v_b / U

  ``U`` is unbiased because distinct batches are independent, and it does
  not depend on the batch size; the draw covariance of a mean over ``P``
  pixels goes as ``1 / P`` (independent draws per latent), so
  ``P_probe / P_train`` states the probe's noise for a training batch
  (measured: 4x the pixels, 3.7x to 3.8x less). The value is then comparable
  across probe sizes; it still depends on the crop size (which changes ``G``:
  the probe always uses the training crop) and on the training set. A ratio
  of two unbiased estimates is not unbiased (``E[1/U] > 1/E[U]``): the value
  is the jackknife bias-corrected ``B * r - (B - 1) * mean_i r_(i)``. Undefined,
  and flagged, when the probe set does not resolve the mean gradient (``U``
  zero within one jackknife standard error) or the corrected value is not
  positive. The naive ``mean ||g_k - g||^2 / ||g||^2`` saturates at
  ``K - 1`` when noise dominates; this one does not.
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
  with itself does not inflate ``S``. ``u`` is estimated from the probe
  batches, so its interval refits it: each jackknife replicate recomputes the
  direction from the batches it keeps, the surrogate's slope and the
  finite-difference reference along it (a delete-a-group jackknife over at
  most :data:`SLOPE_GROUPS` groups, which bounds the cost; the step-size
  check runs on the whole probe set only).

Why a ratio, not the bias ``1 - D / S``: on real photographs the built-in
surrogates' bias along their mean direction is zero within its interval (STE
-0.018 +- 0.044, noise -0.027 +- 0.039 on the shipped initialisation with the
direction held fixed; refitted delete-one, the half-widths grow by 12 to 15 %,
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


def jackknife(
    stat: Callable[[Tensor], float],
    n: int,
    level: float = LEVEL,
    *,
    groups: int | None = None,
    correct_bias: bool = False,
) -> Estimate:
    """``stat`` on all ``n`` units with a delete-one (or delete-a-group) jackknife ``t`` interval.

    ``stat(keep)`` computes the statistic from the units where the boolean
    mask ``keep`` is true. The units are dealt into ``G = groups`` contiguous
    groups of ``n // G`` or ``n // G + 1`` (default ``G = n``: delete-one);
    ``stat_(g)`` leaves group ``g`` out. Standard error
    ``se = sqrt((G - 1) / G * sum_g (stat_(g) - mean)^2)`` (Efron & Tibshirani
    1993, ch. 11; with groups, the delete-a-group jackknife), half-width
    ``t_{G-1} * se``. With ``correct_bias`` the value is the bias-corrected
    ``G * stat - (G - 1) * mean_g stat_(g)``, which removes the ``O(1/n)``
    term of a smooth statistic's bias (a ratio of sums is biased by its
    denominator's noise); the interval is centred on it. Needs ``G >= 2``.
    When a replicate is undefined the interval is too (``nan``, with a flag).
    """
    g = n if groups is None else min(groups, n)
    if g < 2:
        raise ValueError(f"an interval needs at least 2 probe batches, got {n}")
    value = float(stat(torch.ones(n, dtype=torch.bool)))
    loo = []
    for i in range(g):
        keep = torch.ones(n, dtype=torch.bool)
        keep[i * n // g : (i + 1) * n // g] = False
        loo.append(float(stat(keep)))
    loo_t = torch.tensor(loo, dtype=torch.float64)
    if not math.isfinite(value):
        return Estimate(value, float("nan"), float("nan"))
    if not bool(torch.isfinite(loo_t).all()):
        nan = float("nan")
        return Estimate(value, nan, nan, flag="no interval: a jackknife replicate is undefined")
    mean = float(loo_t.mean())
    if correct_bias:
        value = g * value - (g - 1) * mean
    se = math.sqrt((g - 1) / g * float(((loo_t - mean) ** 2).sum()))
    half = t_quantile(g - 1, level) * se
    return Estimate(value, value - half, value + half)


def ratio_of_sums(num: Tensor, den: Tensor) -> Callable[[Tensor], float]:
    """``keep -> sum(num[keep]) / sum(den[keep])`` (nan when the denominator is not positive)."""

    def stat(keep: Tensor) -> float:
        d = float(den[keep].sum())
        return float(num[keep].sum()) / d if d > 0 else float("nan")

    return stat


# -- mismatch -------------------------------------------------------------------

#: The mismatch statistics, and the path (``rate`` or ``distortion``) each is measured on.
MISMATCH_PATHS = {
    "mismatch_rate": "rate",
    "mismatch_dist": "distortion",
    "mismatch_latent": "distortion",
    "mismatch_latent_rate": "rate",
}


def _mismatch_batch(model, x: Tensor, draws: int, same: dict[str, bool]) -> dict[str, float]:
    """One probe batch's sums for :func:`mismatch`; ``same[column]`` is cleared when a draw
    differs from rounding where that column looks (bit for bit)."""
    n_pix = x.shape[0] * x.shape[-2] * x.shape[-1]
    model.eval()
    hard = model(x)
    row = {
        "bpp_h": float(rd.bpp(hard["likelihoods"], n_pix)),
        "mse_h": float(rd.mse(x, hard["x_hat"], clamp=True)),
        "bpp_s": 0.0,
        "mse_s": 0.0,
        "sq": 0.0,
        "sq_rate": 0.0,
        "n": float(sum(v.numel() for v in hard["latents"].values())),
    }
    model.train()
    for _ in range(draws):
        out = model(x)
        row["bpp_s"] += float(rd.bpp(out["likelihoods"], n_pix)) / draws
        row["mse_s"] += float(rd.mse(x, out["x_hat"], clamp=True)) / draws
        for k, h in hard["latents"].items():
            row["sq"] += float(((out["latents"][k] - h) ** 2).sum()) / draws
        same["mismatch_rate"] &= _equal(out["likelihoods"], hard["likelihoods"])
        same["mismatch_dist"] &= torch.equal(out["x_hat"], hard["x_hat"])
        same["mismatch_latent"] &= _equal(out["latents"], hard["latents"])
        if "rate_latents" in out:
            # in eval mode the rate value is the hard one, the value fed onwards
            for k, h in hard["latents"].items():
                row["sq_rate"] += float(((out["rate_latents"][k] - h) ** 2).sum()) / draws
            same["mismatch_latent_rate"] &= _equal(out["rate_latents"], hard["latents"])
        else:
            same["rate_latents"] = False
    return row


def _equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[k], v) for k, v in b.items())


@torch.no_grad()
def mismatch(model, batches: Sequence[Tensor], draws: int) -> dict[str, Estimate]:
    """Train-test mismatch of ``model``'s quantizers on the probe set (module docstring).

    Each column is exact (zero by construction, and said so) when every draw
    equals hard rounding where it looks, bit for bit: the likelihoods for
    ``mismatch_rate``, the reconstruction for ``mismatch_dist``, the latents
    fed onwards for ``mismatch_latent``, the rate values for
    ``mismatch_latent_rate`` (``mixed``: its distortion path is STE, so its two
    distortion columns are exact and its rate columns are not).
    ``mismatch_latent_rate`` is undefined, and says why, for a backbone whose
    ``forward`` returns no ``rate_latents``. Uses torch's global RNG for the
    surrogate's draws (run it under :func:`isolated_rng`); the model's mode is
    restored.
    """
    was_training = model.training
    same = dict.fromkeys([*MISMATCH_PATHS, "rate_latents"], True)
    try:
        rows = [_mismatch_batch(model, x, draws, same) for x in batches]
    finally:
        model.train(was_training)
    col = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in rows[0]}

    def dist(keep: Tensor) -> float:
        return rd.psnr_from_mse(float(col["mse_s"][keep].mean())) - rd.psnr_from_mse(
            float(col["mse_h"][keep].mean())
        )

    n = len(rows)
    stats = {
        "mismatch_rate": lambda: jackknife(
            ratio_of_sums(col["bpp_s"] - col["bpp_h"], col["bpp_h"]), n
        ),
        "mismatch_dist": lambda: jackknife(dist, n),
        "mismatch_latent": lambda: jackknife(ratio_of_sums(col["sq"], col["n"]), n),
        "mismatch_latent_rate": lambda: jackknife(ratio_of_sums(col["sq_rate"], col["n"]), n),
    }
    everywhere = all(same[c] for c in MISMATCH_PATHS)
    out = {}
    for c, path in MISMATCH_PATHS.items():
        if c == "mismatch_latent_rate" and not same["rate_latents"]:
            out[c] = Estimate.undefined(
                "the backbone's forward returns no rate_latents (the values whose likelihood "
                "is charged)"
            )
        elif same[c]:
            out[c] = Estimate.zero(
                "surrogate equals rounding here"
                if everywhere
                else f"{path} path equals rounding here"
            )
        else:
            out[c] = stats[c]()
    return out


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


#: ``grad_slope_ratio``'s interval is a delete-a-group jackknife over at most this many
#: groups of probe batches (delete-one up to 8 batches): every replicate refits the mean
#: direction and re-measures the finite-difference reference along it, which costs
#: ``4 * B`` hard forward passes per replicate.
SLOPE_GROUPS = 8


def gradient_statistics(
    surrogate_losses: Sequence[Callable[[], Tensor]],
    hard_losses: Sequence[Callable[[], Tensor]],
    params: Sequence[Tensor],
    *,
    draws: int = 16,
    step: float | Callable[[Tensor], float] = 1e-3,
    step_factors: Sequence[float] = (0.5, 1.0, 2.0),
    noise_scale: float = 1.0,
) -> dict[str, Estimate]:
    """``grad_var`` and ``grad_slope_ratio`` over probe batches (see the module docstring).

    ``surrogate_losses[b]`` / ``hard_losses[b]`` compute batch ``b``'s loss
    with the surrogate (random: one draw per call) and with hard
    quantization. ``step`` is the finite-difference step, or a function of the
    unit direction that returns it; the reference is also taken at each
    ``step_factors`` multiple of it on the whole probe set, and
    ``grad_slope_ratio`` is flagged when those move it by more than its
    interval (no plateau in ``h``). ``noise_scale`` multiplies ``grad_var``'s
    draw variance (``P_probe / P_train``: the variance of a training batch of
    ``P_train`` pixels, the draw covariance scaling as ``1 / P``).
    """
    sums = [draw_sums(f, params, draws) for f in surrogate_losses]
    return {
        "grad_var": normalised_variance(sums, noise_scale),
        "grad_slope_ratio": _slope_ratio_along_mean(sums, hard_losses, params, step, step_factors),
    }


def normalised_variance(sums: Sequence[DrawSums], noise_scale: float = 1.0) -> Estimate:
    """``grad_var`` from the probe batches' draw sums (module docstring), bias-corrected.

    ``noise_scale * mean_b v_b / U``, with ``v_b`` the unbiased trace of batch
    ``b``'s draw covariance and ``U = sum_{b != c} gbar_b . gbar_c / (B (B - 1))``
    the unbiased ``||E g||^2`` over batches (``gbar_b`` the mean of batch
    ``b``'s draws; distinct batches are independent); delete-one jackknife bias
    correction and interval. Undefined, with the reason, when ``U`` is zero
    within one jackknife standard error (a ratio with such a denominator has
    no stable value, and its bias correction none either) or the corrected
    value is not positive.
    """
    if all(s.identical for s in sums):
        return Estimate.zero("deterministic surrogate")
    n = len(sums)
    v = torch.tensor([s.trace_cov for s in sums], dtype=torch.float64)
    means = [s.total / s.draws for s in sums]
    gram = torch.zeros(n, n, dtype=torch.float64)
    for b in range(n):
        for c in range(b + 1, n):
            gram[b, c] = gram[c, b] = float(means[b] @ means[c])

    def signal(keep: Tensor) -> float:
        k = int(keep.sum())
        if k < 2:  # a cross product needs two batches
            return float("nan")
        return float(gram[keep][:, keep].sum()) / (k * (k - 1))

    def stat(keep: Tensor) -> float:
        cross = signal(keep)
        return noise_scale * float(v[keep].mean()) / cross if cross > 0 else float("nan")

    u = jackknife(signal, n)  # its standard error is half_width / t (nan for 2 batches)
    if not u.value > 0 or u.half_width > t_quantile(n - 1) * u.value:
        return Estimate.undefined(
            f"the probe set does not resolve the mean gradient (||E g||^2 = {u.value:.3g}, "
            "zero within one standard error): more or larger probe batches"
        )
    e = jackknife(stat, n, correct_bias=True)
    if not e.value > 0:
        return Estimate.undefined(
            f"the bias-corrected value is not positive ({e.value:.3g}): the probe set "
            "resolves the mean gradient too poorly; more or larger probe batches"
        )
    return e


def _slope_ratio_along_mean(sums, hard_losses, params, step, step_factors) -> Estimate:
    """``grad_slope_ratio`` with a jackknife that refits the direction (module docstring)."""
    half = sums[0].draws // 2
    n = len(sums)

    def ratio(keep: Tensor, factor: float = 1.0) -> float:
        kept = [b for b in range(n) if keep[b]]
        ref = surrogate = 0.0
        for fit, score in (("even", "odd"), ("odd", "even")):
            direction = sum(getattr(sums[b], fit) for b in kept)
            norm = float(direction.norm())
            if norm == 0:
                return float("nan")
            u = direction / norm
            surrogate += sum(float(getattr(sums[b], score) @ u) for b in kept) / half
            h = factor * (step(u) if callable(step) else step)
            ref += sum(finite_difference(hard_losses[b], params, u, h) for b in kept)
        return ref / surrogate if surrogate > 0 else float("nan")

    main = jackknife(ratio, n, groups=SLOPE_GROUPS)
    if not math.isfinite(main.value):
        return Estimate.undefined(
            "the surrogate promises no decrease along its mean gradient (zero, or its "
            "halves of the draws disagree)"
        )
    everything = torch.ones(n, dtype=torch.bool)
    values = {f: ratio(everything, f) for f in sorted(set(step_factors) - {1.0})}
    tolerance = max(main.half_width, PLATEAU_TOLERANCE)
    moved = {f: v for f, v in values.items() if abs(v - main.value) > tolerance}
    if moved:
        shown = ", ".join(f"{f:g}h: {v:.3g}" for f, v in moved.items())
        return Estimate(main.value, main.low, main.high, flag=f"no plateau in h ({shown})")
    return main


#: :func:`latent_step` calibrates the step on at most this many probe crops (the rms of
#: their thousands of latents; every jackknife replicate of ``grad_slope_ratio`` calls it)
STEP_CROPS = 16


def latent_step(model, batches: Sequence[Tensor], params: Sequence[Tensor], target_rms: float):
    """A step function for :func:`gradient_statistics`: the parameter step along a unit
    direction that moves the latents ``model.analysis(x)`` of the probe set's first
    :data:`STEP_CROPS` crops by a root mean square of ``target_rms`` (measured by a small
    forward difference)."""
    x = torch.cat(list(batches))[:STEP_CROPS]
    start: list[Tensor] = []  # the latents at theta, computed once (theta is restored exactly)

    @torch.no_grad()
    def step(direction: Tensor) -> float:
        eps = 1e-3
        if not start:
            start.append(model.analysis(x))
        y0 = start[0]
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
    train_pixels: int = 0,
) -> dict[str, Estimate]:
    """``grad_var``/``grad_slope_ratio`` of ``model``'s surrogate wrt its analysis transform.

    The gradient is taken wrt the analysis transform even when it is frozen (a
    derived model refines only its quantizer): the surrogate's gradient noise
    and bias are properties of the quantizer, not of what the optimizer updates.
    ``train_pixels`` (pixels of a training batch; 0: the probe batch's own)
    sets the batch size ``grad_var`` is stated for: the probe's draw variance
    is scaled by ``P_probe / train_pixels``. Uses torch's global RNG (run it
    under :func:`isolated_rng`).
    """
    with _analysis_gradients(model) as params:
        return gradient_statistics(
            [_rd_loss_in_mode(model, x, lmbda, training=True) for x in batches],
            [_rd_loss_in_mode(model, x, lmbda, training=False) for x in batches],
            params,
            draws=draws,
            step=latent_step(model, batches, params, latent_rms),
            step_factors=step_factors,
            noise_scale=_noise_scale(batches, train_pixels),
        )


def model_grad_var(
    model, batches: Sequence[Tensor], lmbda: float, *, draws: int = 16, train_pixels: int = 0
) -> Estimate:
    """``grad_var`` alone, as :func:`model_gradient_statistics` measures it (no finite
    differences). Uses torch's global RNG (run it under :func:`isolated_rng`)."""
    with _analysis_gradients(model) as params:
        sums = [draw_sums(_rd_loss_in_mode(model, x, lmbda, True), params, draws) for x in batches]
    return normalised_variance(sums, _noise_scale(batches, train_pixels))


def _noise_scale(batches: Sequence[Tensor], train_pixels: int) -> float:
    """``P_probe / P_train`` (1 when ``train_pixels`` is 0): pixels of a probe batch over
    those of a training batch."""
    if not train_pixels:
        return 1.0
    probe = sum(x.shape[0] * x.shape[-2] * x.shape[-1] for x in batches) / len(batches)
    return probe / train_pixels


@contextlib.contextmanager
def isolated_rng(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a probe on its own RNG stream: torch's CPU (and the device's CUDA) RNG state is
    restored afterwards, so a statistic never shifts the training's random draws."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
