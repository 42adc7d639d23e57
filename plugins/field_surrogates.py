"""Surrogates from the wider field: ``pair``, ``soft-round``, ``ds-q``, ``kumaraswamy``,
``soft-to-hard``, ``universal``.

Each is a :class:`qbench.Surrogate` (options ``scale_bound``, ``zero_center``,
``stop_gradient``; ``docs/quantizers.md``) whose training values live on the
unit integer grid of ``v`` (``v = y - mu`` with the default ``zero_center =
true``). At test time every one is plain rounding around the means, coded with
the entropy model's own integer tables (:class:`qbench.Quantizer`). Where each
matches its reference and where it deviates: ``docs/fidelity.md``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

import qbench
from qbench.quantizer import uniform_noise

#: below this sharpness ``soft_round`` is the identity (tensorflow-compression's ``eps``)
SOFT_ROUND_EPS = 1e-3


def soft_round(v: Tensor, alpha: float) -> Tensor:
    """``s_a(v) = floor(v) + 1/2 + tanh(a r) / (2 tanh(a / 2))``, ``r = v - floor(v) - 1/2``.

    Agustsson & Theis 2020, eq. (11); the identity for ``a < 1e-3`` (as
    tensorflow-compression's ``soft_round``). ``a -> inf`` is rounding.
    """
    if alpha < SOFT_ROUND_EPS:
        return v
    m = torch.floor(v) + 0.5
    return m + torch.tanh(alpha * (v - m)) / (2.0 * math.tanh(alpha / 2.0))


def soft_round_inverse(s: Tensor, alpha: float) -> Tensor:
    """The inverse of :func:`soft_round`: ``m + atanh(2 tanh(a/2) (s - m)) / a``, clipped to
    ``m -+ 1/2``, ``m = floor(s) + 1/2`` (tensorflow-compression's ``soft_round_inverse``)."""
    if alpha < SOFT_ROUND_EPS:
        return s
    m = torch.floor(s) + 0.5
    r = torch.atanh((s - m) * (2.0 * math.tanh(alpha / 2.0))) / alpha
    return m + torch.clamp(r, -0.5, 0.5)


def soft_round_conditional_mean(s: Tensor, alpha: float) -> Tensor:
    """``E[Y | s_a(Y) + U = s]`` for a latent smooth on the unit scale:
    ``soft_round_inverse(s - 1/2, a) + 1/2`` (tensorflow-compression's
    ``soft_round_conditional_mean``; Agustsson & Theis 2020, Sec. 4.1). Below the
    identity threshold it returns ``s`` itself (the reference computes ``(s - 1/2) + 1/2``,
    equal up to float rounding), so that soft-round at a tiny sharpness is ``noise`` exactly."""
    if alpha < SOFT_ROUND_EPS:
        return s
    return soft_round_inverse(s - 0.5, alpha) + 0.5


def linear(start: float, end: float, t: float) -> float:
    """``start + (end - start) t``: the schedules of this module over training progress."""
    return start + (end - start) * t


def _at_least(name: str, value: float, low: float, strict: bool = False) -> float:
    """``value`` as a float, refused with a ``ValueError`` naming ``name`` when below ``low``."""
    value = float(value)
    bad = not value > low if strict else not value >= low
    if bad or not math.isfinite(value):
        sign = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {sign} {low:g}, got {value!r}")
    return value


# -- pair ---------------------------------------------------------------------------

#: options of a member that the pair itself sets (one grid, one routing, one bound)
PAIR_OWN = ("scale_bound", "zero_center", "stop_gradient")


def _member_spec(key: str, spec: Any) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a member given as a name or an inline table ``{name = ...}``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        options = {k: v for k, v in spec.items() if k != "name"}
        own = [k for k in options if k in PAIR_OWN]
        if own:
            raise ValueError(
                f"pair {key} = {spec.get('name')!r}: option {own[0]!r} is the pair's own "
                f"(one grid, routing and scale bound serve both members); set it on the pair"
            )
        return spec["name"], options
    raise ValueError(
        f"pair {key} must be a registered surrogate's name or an inline table "
        f"{{ name = ..., option = ... }}, got {spec!r}"
    )


def _build_member(key: str, name: str, options: dict[str, Any]) -> qbench.Surrogate:
    """The member ``name`` built through the registry, refused unless it is a surrogate on
    the unit integer grid (a ``qbench.Surrogate`` with no ``step`` and unit ``bins``). Only
    its training values serve the pair: its test time (``universal``'s dither) is not the
    pair's, which rounds."""
    from qbench.plugins import current_plugins

    registry = current_plugins().registry  # the set in use, its disabled plugins kept
    if ("quantizer", name) not in registry:
        raise ValueError(
            f"pair {key} = {name!r}: no quantizer of that name is registered "
            f"(registered: {', '.join(registry.names('quantizer'))})"
        )
    member = registry.build("quantizer", name, **options)
    kind = type(member)
    uniform = kind.bins is qbench.Quantizer.bins and kind.step is qbench.Quantizer.step
    if not isinstance(member, qbench.Surrogate) or not uniform:
        raise ValueError(
            f"pair {key} = {name!r}: only a surrogate on the unit integer grid can be a member "
            "(a qbench.Surrogate with no quantization step and unit cells)"
        )
    return member


class Pair(qbench.Surrogate):
    r"""Free rate / decoder pairs: any two registered surrogates, one per term.

    ``{ name = "pair", rate = "noise", dist = "ste" }``: in training the rate is
    charged on ``rate``'s value and the synthesis transform is fed ``dist``'s::

        rate: R(v).rate      dist: D(v).dist      (v on the pair's grid)

    where ``R`` and ``D`` are the members' ``surrogate`` functions (each drawn
    once per call, ``R`` first). Each member is given by name or as an inline
    table with its own options (``rate = { name = "sua", schedule = "linear" }``),
    built through the registry (``None``, the default: ``"noise"`` for the rate,
    ``"ste"`` for the distortion; a default of no type, so that a matrix may
    give either a name or a table). The grid, gradient routing and scale bound
    are the pair's (``zero_center``, ``stop_gradient``, ``scale_bound``, default
    as ``mixed``: zero-centred, ``stop_gradient = "none"``, no bound); a member
    given one of these is refused. ``set_progress`` and ``end_step`` reach both
    members; learned member parameters are the pair's sub-modules.

    With ``rate = "noise", dist = "ste"`` this is ``mixed`` (Minnen & Singh 2020)
    to the bit (same draws in the same order). Refused: an unknown member, a
    member that is not a unit-grid surrogate (a step, its own tables), and a
    surrogate paired with itself (use it alone).
    """

    def __init__(
        self,
        rate: Any = None,
        dist: Any = None,
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        rate_name, rate_opts = _member_spec("rate", "noise" if rate is None else rate)
        dist_name, dist_opts = _member_spec("dist", "ste" if dist is None else dist)
        if rate_name == dist_name:
            raise ValueError(
                f"pair rate = dist = {rate_name!r}: a surrogate paired with itself is that "
                f"surrogate; use {{ name = {rate_name!r} }} instead"
            )
        self.rate_name, self.dist_name = rate_name, dist_name
        self.rate_q = _build_member("rate", rate_name, rate_opts)
        self.dist_q = _build_member("dist", dist_name, dist_opts)

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        rate = self.rate_q.surrogate(v).rate  # drawn first: mixed's order
        return qbench.Quantized(rate=rate, dist=self.dist_q.surrogate(v).dist)

    def bind(self, latent: str, channels: int | None = None) -> None:
        super().bind(latent, channels)
        self.rate_q.bind(latent, channels)
        self.dist_q.bind(latent, channels)

    def set_progress(self, t: float) -> None:
        super().set_progress(t)
        self.rate_q.set_progress(t)
        self.dist_q.set_progress(t)

    def end_step(self) -> None:
        self.rate_q.end_step()
        self.dist_q.end_step()

    def annealing_state(self) -> dict[str, float]:
        return {
            **{f"rate.{k}": v for k, v in self.rate_q.annealing_state().items()},
            **{f"dist.{k}": v for k, v in self.dist_q.annealing_state().items()},
        }

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {**super().settings(), "rate": self.rate_name, "dist": self.dist_name}
        for key, member in (("rate", self.rate_q), ("dist", self.dist_q)):
            for k, v in member.settings().items():
                if k not in PAIR_OWN:
                    out[f"{key}.{k}"] = v
        return out

    def reduces_to(self, progress: float) -> str:
        """``rate = "noise", dist = "ste"`` is ``mixed`` to the bit (with the pair's routing
        and scale bound)."""
        if (self.rate_name, self.dist_name) != ("noise", "ste"):
            return ""
        what, routing = "mixed (noise for the rate, ste for the synthesis)", self.routing_words()
        return f"{what}, {routing}" if routing else what

    def extra_repr(self) -> str:
        return f"rate={self.rate_name}, dist={self.dist_name}, {super().extra_repr()}"


# -- soft-round ----------------------------------------------------------------------

SOFT_ROUND_DECODERS = ("mean", "soft-round")


class SoftRound(qbench.Surrogate):
    r"""Soft rounding with uniform noise (Agustsson & Theis, "Universally Quantized Neural
    Compression", NeurIPS 2020, arXiv 2006.09952, Sec. 4.1; official ops:
    tensorflow/compression ``tensorflow_compression/python/ops/round_ops.py``,
    ``soft_round``, ``soft_round_inverse``, ``soft_round_conditional_mean``).

    With sharpness ``a``::

        s_a(v) = floor(v) + 1/2 + tanh(a r) / (2 tanh(a/2)),  r = v - floor(v) - 1/2
        rate:  v_tilde = s_a(v) + u,   u ~ U(-1/2, 1/2)
        dist:  E[v | v_tilde] = s_a^{-1}(v_tilde - 1/2) + 1/2        (decoder = "mean")

    ``s_a`` is the identity at ``a -> 0`` (then this is ``noise``) and rounding
    at ``a -> inf``. The decoder's value is the conditional mean of the
    reference's ``soft_round_conditional_mean`` (exact for a latent whose
    density is flat on the unit scale); ``decoder = "soft-round"`` feeds
    ``s_a(v_tilde)`` instead (the rule of Cool-Chic / C3). The rate's cell is
    the unit box around ``v_tilde`` (the density of ``s_a(v) + u`` is the
    density of ``s_a(v)`` convolved with it). Gradients flow through ``s_a``,
    its inverse and their ``tanh`` / ``atanh`` (no straight-through).

    Sharpness schedule over training progress ``t``: ``a(t) = alpha_start +
    (alpha_end - alpha_start) t`` (linear), default 1 -> 16: qbench's choice
    (see ``docs/fidelity.md``), ``alpha_start = alpha_end`` for a fixed ``a``.
    Both must be > 0.
    """

    def __init__(
        self,
        alpha_start: float = 1.0,
        alpha_end: float = 16.0,
        decoder: str = "mean",
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        self.alpha_start = _at_least("alpha_start", alpha_start, 0.0, strict=True)
        self.alpha_end = _at_least("alpha_end", alpha_end, 0.0, strict=True)
        if decoder not in SOFT_ROUND_DECODERS:
            raise ValueError(f"decoder must be one of {SOFT_ROUND_DECODERS}, got {decoder!r}")
        self.decoder = decoder

    @property
    def alpha(self) -> float:
        return linear(self.alpha_start, self.alpha_end, self.progress)

    def annealing_state(self) -> dict[str, float]:
        return {"alpha": self.alpha}

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        a = self.alpha
        noisy = uniform_noise(soft_round(v, a))
        if self.decoder == "mean":
            dist = soft_round_conditional_mean(noisy, a)
        else:
            dist = soft_round(noisy, a)
        return qbench.Quantized(rate=noisy, dist=dist)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "alpha_start": self.alpha_start,
            "alpha_end": self.alpha_end,
            "decoder": self.decoder,
        }

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.3g}, {super().extra_repr()}"


# -- ds-q ----------------------------------------------------------------------------


def _hard_forward(v: Tensor, soft: Tensor) -> Tensor:
    """``round(v)`` in the forward pass (exactly), ``soft``'s gradient in the backward pass:
    ``round(v) + soft - sg(soft)`` (the reference's ``sg(round(v) - soft) + soft``, without
    its float rounding in the forward value)."""
    return torch.round(v.detach()) + (soft - soft.detach())


def tanh_staircase(v: Tensor, k: Tensor | float) -> Tensor:
    """DSQ's staircase on the unit grid: ``floor(v) + (1 + phi) / 2``,
    ``phi = tanh(k (v - floor(v) - 1/2)) / tanh(k / 2)``."""
    f = torch.floor(v)
    k = torch.as_tensor(k, dtype=v.dtype, device=v.device)
    phi = torch.tanh(k * (v - f - 0.5)) / torch.tanh(k / 2.0)
    return f + (1.0 + phi) / 2.0


class DSQ(qbench.Surrogate):
    r"""Differentiable soft quantization (Gong et al., "Differentiable Soft Quantization:
    Bridging Full-Precision and Low-Bit Neural Networks", ICCV 2019) as Tsubota & Aizawa
    use it for image compression ("Comprehensive Comparisons of Uniform Quantizers for
    Deep Image Compression", ICIP 2021 / IEEE Access 2023; official code
    kktsubota/uniform-quantizers, ``Access23/balle/lib/ops.py`` method ``"DS-Q"``,
    ``lib/quantizer.py`` ``DSQ``).

    Forward hard rounding, backward through the tanh staircase of sharpness ``k``::

        y_phi(v) = floor(v) + (1 + tanh(k (v - floor(v) - 1/2)) / tanh(k/2)) / 2
        S(v)     = sg(round(v) - y_phi(v)) + y_phi(v)

    for both terms (qbench's ``pair`` puts it on one term only, e.g. Tsubota's
    decoder-side use ``{ name = "pair", rate = "noise", dist = "ds-q" }``).

    ``learn_k = true`` (default, the reference's ``DSQ`` layer): ``k`` is a
    trained parameter, initialised at ``k_init`` (reference 0.1) and clipped
    to ``[k_min, k_max]`` (reference ``[ln 3, 1000]``) after every
    optimisation step (``end_step``). ``learn_k = false`` (the reference's
    ``DSfix-Q``): ``k`` follows ``k_init -> k_end`` linearly over training
    (``k_end`` default: ``k_init``, a constant ``k``).
    """

    def __init__(
        self,
        k_init: float = 0.1,
        learn_k: bool = True,
        k_end: float | None = None,
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        if not isinstance(learn_k, bool):
            raise ValueError(f"learn_k must be a boolean, got {learn_k!r}")
        self.k_init = _at_least("k_init", k_init, 0.0, strict=True)
        self.k_end = self.k_init if k_end is None else _at_least("k_end", k_end, 0.0, strict=True)
        if learn_k and k_end is not None:
            raise ValueError("k_end schedules a fixed k; it needs learn_k = false")
        self.learn_k = learn_k
        self.k_min, self.k_max = math.log(3.0), 1000.0
        self.k = nn.Parameter(torch.tensor(self.k_init)) if learn_k else None

    def sharpness(self) -> Tensor | float:
        """The current ``k``: the parameter, or the schedule's value at this progress."""
        if self.k is not None:
            return self.k
        return linear(self.k_init, self.k_end, self.progress)

    def end_step(self) -> None:
        if self.k is not None:
            with torch.no_grad():
                self.k.clamp_(self.k_min, self.k_max)

    def annealing_state(self) -> dict[str, float]:
        return {"k": float(self.sharpness())}

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        soft = tanh_staircase(v, self.sharpness())
        v_hat = _hard_forward(v, soft)
        return qbench.Quantized(rate=v_hat, dist=v_hat)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "k_init": self.k_init,
            "learn_k": self.learn_k,
            "k_end": self.k_end,
        }

    def extra_repr(self) -> str:
        return f"k={float(self.sharpness()):.3g}, {super().extra_repr()}"


# -- kumaraswamy ---------------------------------------------------------------------


def kumaraswamy_noise(like: Tensor, a: float) -> Tensor:
    """Noise on ``(-1/2, 1/2)``: a Kumaraswamy(a, b) draw minus 1/2, ``b = (2^a (a - 1) + 1) / a``
    so that the mode is 1/2 (uniform at ``a = 1``, peaked for ``a > 1``), by inverse CDF of
    ``w ~ U(0, 1)``: ``(1 - (1 - w)^(1/b))^(1/a) - 1/2`` (Cool-Chic's
    ``generate_kumaraswamy_noise``)."""
    b = (2.0**a * (a - 1.0) + 1.0) / a
    w = torch.rand_like(like)
    return (1.0 - (1.0 - w) ** (1.0 / b)) ** (1.0 / a) - 0.5


class Kumaraswamy(qbench.Surrogate):
    r"""Kumaraswamy-distributed training noise, Cool-Chic's quantizer (Kim et al., "C3:
    High-performance and low-complexity neural compression from a single image or video",
    CVPR 2024, arXiv 2312.02753; official code Orange-OpenSource/Cool-Chic,
    ``coolchic/enc/component/core/quantizer.py``, ``quantize`` and
    ``generate_kumaraswamy_noise``; schedule in ``coolchic/enc/training/presets.py``).

    With noise ``n = K(a) - 1/2`` (:func:`kumaraswamy_noise`, mode 0, uniform at
    ``a = 1``) and soft-round temperature ``T`` (sharpness ``1 / T`` of
    :func:`soft_round`)::

        S(v) = s_{1/T}(s_{1/T}(v) + n)      (Cool-Chic's "softround", default)
        S(v) = v + n                        (temperature_start = None: Cool-Chic's "none")

    for both the rate and the distortion. Both parameters follow Cool-Chic's
    linear schedules over training progress: ``a`` from ``noise_start = 2`` to
    ``noise_end = 1`` (``TrainerPhase``'s documented default), ``T`` from
    ``temperature_start = 0.3`` to ``temperature_end = 0.1`` (its main phase).
    Refused: ``noise_*`` < 1 (the mode leaves 1/2), temperatures <= 0.
    """

    def __init__(
        self,
        noise_start: float = 2.0,
        noise_end: float = 1.0,
        temperature_start: float | None = 0.3,
        temperature_end: float | None = 0.1,
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        self.noise_start = _at_least("noise_start", noise_start, 1.0)
        self.noise_end = _at_least("noise_end", noise_end, 1.0)
        if (temperature_start is None) != (temperature_end is None):
            raise ValueError(
                "temperature_start and temperature_end are set together (both None: no soft "
                f"rounding), got {temperature_start!r}, {temperature_end!r}"
            )
        self.temperature_start = temperature_start
        self.temperature_end = temperature_end
        if temperature_start is not None:
            self.temperature_start = _at_least("temperature_start", temperature_start, 0, True)
            self.temperature_end = _at_least("temperature_end", temperature_end, 0, True)

    @property
    def noise_parameter(self) -> float:
        return linear(self.noise_start, self.noise_end, self.progress)

    @property
    def temperature(self) -> float | None:
        if self.temperature_start is None:
            return None
        return linear(self.temperature_start, self.temperature_end, self.progress)

    def annealing_state(self) -> dict[str, float]:
        state = {"a": self.noise_parameter}
        if self.temperature is not None:
            state["T"] = self.temperature
        return state

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        noise = kumaraswamy_noise(v, self.noise_parameter)
        temp = self.temperature
        if temp is None:
            v_tilde = v + noise
        else:
            v_tilde = soft_round(soft_round(v, 1.0 / temp) + noise, 1.0 / temp)
        return qbench.Quantized(rate=v_tilde, dist=v_tilde)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "noise_start": self.noise_start,
            "noise_end": self.noise_end,
            "temperature_start": self.temperature_start,
            "temperature_end": self.temperature_end,
        }


# -- soft-to-hard --------------------------------------------------------------------

SOFT_TO_HARD_FORWARDS = ("soft", "hard")


class SoftToHard(qbench.Surrogate):
    r"""Scalar soft-to-hard quantization (Agustsson et al., "Soft-to-Hard Vector
    Quantization for End-to-End Learning Compressible Representations", NeurIPS 2017,
    arXiv 1704.00648), on the integer centres nearest to ``v``.

    Centres ``c_j = round(v) + j``, ``j = -radius .. radius``; with sharpness
    ``sigma`` (the inverse temperature)::

        soft(v) = sum_j softmax_j(-sigma (v - c_j)^2) c_j
        S(v)    = soft(v)                          (forward = "soft", default)
        S(v)    = sg(round(v) - soft(v)) + soft(v)  (forward = "hard": Mentzer et al. 2018)

    for both terms. ``sigma`` is annealed geometrically over training progress,
    ``sigma(t) = sigma_start (sigma_end / sigma_start)^t``, default 1 -> 100
    (at 100 a value 0.1 from the midpoint weighs its far centre ``e^-20``).
    The centres are the integers (fixed, so that the coder's integer tables
    serve), not learned as in the paper; the rate is the backbone's
    likelihood of ``S(v)``, not the paper's soft histogram. Refused:
    ``sigma_*`` <= 0, ``radius`` < 1.
    """

    def __init__(
        self,
        sigma_start: float = 1.0,
        sigma_end: float = 100.0,
        radius: int = 2,
        forward: str = "soft",
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        self.sigma_start = _at_least("sigma_start", sigma_start, 0.0, strict=True)
        self.sigma_end = _at_least("sigma_end", sigma_end, 0.0, strict=True)
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
            raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
        if forward not in SOFT_TO_HARD_FORWARDS:
            raise ValueError(f"forward must be one of {SOFT_TO_HARD_FORWARDS}, got {forward!r}")
        self.radius, self.forward_mode = radius, forward

    @property
    def sigma(self) -> float:
        return self.sigma_start * (self.sigma_end / self.sigma_start) ** self.progress

    def annealing_state(self) -> dict[str, float]:
        return {"sigma": self.sigma}

    def soft(self, v: Tensor, sigma: float | None = None) -> Tensor:
        """The softmax-weighted mean of the ``2 radius + 1`` integer centres around ``v``."""
        sigma = self.sigma if sigma is None else sigma
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=v.dtype, device=v.device)
        centres = torch.round(v.detach()).unsqueeze(-1) + offsets
        weights = torch.softmax(-sigma * (v.unsqueeze(-1) - centres) ** 2, dim=-1)
        return (weights * centres).sum(-1)

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        soft = self.soft(v)
        if self.forward_mode == "hard":
            soft = _hard_forward(v, soft)
        return qbench.Quantized(rate=soft, dist=soft)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "sigma_start": self.sigma_start,
            "sigma_end": self.sigma_end,
            "radius": self.radius,
            "forward": self.forward_mode,
        }


# -- universal ------------------------------------------------------------------------

TRAININGS = ("noise", "dithered")
DITHERS = ("per-image", "per-element")
TEST_TIMES = ("dithered", "round")


def dither_levels(levels: int) -> Tensor:
    """The ``L`` dither values ``(i + 1) / (L + 1) - 1/2``, ``i = 0..L-1``: the uniform
    dither quantized to ``L`` levels inside ``(-1/2, 1/2)``, as tensorflow-compression's
    universal entropy models (``num_noise_levels``, default 15) so that each level has a
    probability table of its own."""
    return (torch.arange(levels, dtype=torch.float64) + 1) / (levels + 1) - 0.5


class Universal(qbench.Surrogate):
    r"""Universal (dithered) quantization: Ziv 1985; Agustsson & Theis, "Universally
    Quantized Neural Compression", NeurIPS 2020 (tensorflow/compression,
    ``tfc.UniversalBatchedEntropyModel`` / ``UniversalIndexedEntropyModel``).

    **Test time** (``test_time = "dithered"``, default): encoder and decoder share a
    pseudo-random dither ``u`` (regenerated from ``seed``, the latent's name and shape,
    one value per element, the same for every image), and::

        k = round(y - mu - u)        the symbol the coder writes
        y_hat = k + mu + u           the reconstruction

    so ``y_hat - y`` is uniform on ``(-1/2, 1/2)`` and independent of ``y`` for a
    continuous dither. As in tensorflow-compression, ``u`` takes one of ``levels``
    values ``(i + 1)/(L + 1) - 1/2`` (``dither_levels``; 15 by default), each with its
    own probability tables: symbol ``k`` of an element with dither ``u`` has the
    cell ``mu + [k + u - 1/2, k + u + 1/2]`` (``EntropyTables.shifted_tables``), so the
    coder writes exactly the likelihood the model charges (bit-exact on a whole-tensor
    coder; refused before any job on a latent that is coded position by position, the
    context model's ``y``: the latent must offer ``dithered_coding``).
    ``test_time = "round"``: plain rounding around the means (Tsubota & Aizawa's
    ``compress``).

    **Training** (``train = "noise"``, default): the matching additive-noise surrogate,
    ``v + u``, ``u ~ U(-1/2, 1/2)`` per element, for both terms (the paper's training:
    the same error distribution as the test-time quantizer). ``train = "dithered"``:
    Tsubota & Aizawa's ``U-Q`` (kktsubota/uniform-quantizers, ``Access23/balle/lib/
    ops.py``), ``S(v) = round(v + d) - d`` forward and ``dS/dv = 1`` backward, with
    ``dither = "per-image"`` (their default: one ``d`` per sample, shared by its
    latents) or ``"per-element"``.
    """

    def __init__(
        self,
        train: str = "noise",
        test_time: str = "dithered",
        dither: str = "per-image",
        levels: int = 15,
        seed: int = 1234,
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__(scale_bound, zero_center, stop_gradient)
        for name, value, choices in (
            ("train", train, TRAININGS),
            ("test_time", test_time, TEST_TIMES),
            ("dither", dither, DITHERS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 255:
            raise ValueError(f"levels must be a whole number in [1, 255], got {levels!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        if dither != "per-image" and train != "dithered":
            raise ValueError(
                f"dither = {dither!r} is the training dither of train = 'dithered'; "
                f"train = {train!r} draws additive noise per element"
            )
        self.train_mode, self.test_time, self.dither = train, test_time, dither
        self.levels, self.seed = levels, seed
        self._tables: dict[tuple, Any] = {}

    # -- training -----------------------------------------------------------------
    def draw_dither(self, v: Tensor) -> Tensor:
        """``d ~ U(-1/2, 1/2)``: one per sample (leading dimension) or one per element."""
        if self.dither == "per-element" or v.dim() == 0:
            return torch.rand_like(v) - 0.5
        shape = (v.shape[0],) + (1,) * (v.dim() - 1)
        return torch.rand(shape, dtype=v.dtype, device=v.device) - 0.5

    def surrogate(self, v: Tensor) -> qbench.Quantized:
        if self.train_mode == "noise":
            v_tilde = uniform_noise(v)
            return qbench.Quantized(rate=v_tilde, dist=v_tilde)
        with torch.no_grad():
            d = self.draw_dither(v)
            value = torch.round(v + d) - d
        v_tilde = value + (v - v.detach())
        return qbench.Quantized(rate=v_tilde, dist=v_tilde)

    # -- test time: the shared dither and its tables ---------------------------------
    def level_indexes(self, shape: torch.Size) -> Tensor:
        """Each element's dither level (int64, ``shape``): a pattern per image of the
        latent's ``C x H x W``, drawn from ``seed`` and the latent's name, repeated over
        the batch (the decoder regenerates it from the shape alone)."""
        per_image = tuple(shape[1:]) if len(shape) > 1 else tuple(shape)
        gen = torch.Generator().manual_seed(self.seed + zlib.crc32(str(self.latent).encode()))
        pattern = torch.randint(self.levels, per_image, generator=gen)
        return pattern.expand(shape) if len(shape) > 1 else pattern

    def offsets(self, like: Tensor) -> Tensor:
        """The dither ``u`` of each element of ``like``, on its device and dtype."""
        values = dither_levels(self.levels).to(like.dtype)
        return values[self.level_indexes(like.shape)].to(like.device)

    def symbols(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        if self.test_time == "round":
            return super().symbols(y, means)
        v = y if means is None else y - means
        return torch.round(v - self.offsets(v)).long()

    def from_symbols(self, symbols: Tensor, means: Tensor | None = None) -> Tensor:
        values = super().from_symbols(symbols, means)
        if self.test_time == "round":
            return values
        return values + self.offsets(values)

    def quantize(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        if self.test_time == "round":
            return super().quantize(y, means)
        return self.from_symbols(self.symbols(y, means), means).to(y.dtype)

    def tables(self, entropy: Any) -> Any:
        if self.test_time == "round":
            return super().tables(entropy)
        return entropy.shifted_tables(dither_levels(self.levels))

    def table_indexes(self, indexes: Tensor) -> Tensor:
        if self.test_time == "round":
            return indexes
        return indexes * self.levels + self.level_indexes(indexes.shape).to(indexes.device)

    def needs(self) -> dict[str, str]:
        if self.test_time == "round":
            return {}
        return {"dithered_coding": "test_time = 'dithered' (a dither per element)"}

    def reduces_to(self, progress: float) -> str:
        """With ``train = "noise"`` and ``test_time = "round"`` this is ``noise`` exactly."""
        if self.train_mode != "noise" or self.test_time != "round":
            return ""
        what, routing = "noise (additive uniform noise, gradient 1)", self.routing_words()
        return f"{what}, {routing}" if routing else what

    def settings(self) -> dict[str, Any]:
        out = {**super().settings(), "train": self.train_mode, "test_time": self.test_time}
        if self.train_mode == "dithered":
            out["dither"] = self.dither
        if self.test_time == "dithered":
            out.update(levels=self.levels, seed=self.seed)
        return out


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "pair",
        Pair,
        uses={"rate": ("quantizer", "noise"), "dist": ("quantizer", "ste")},
        description="any two surrogates: the first's value charged to the rate, the second's "
        "fed to the synthesis",
    )
    register(
        "soft-round",
        SoftRound,
        description="soft rounding + uniform noise, conditional-mean decoder, sharpness 1 -> 16 "
        "(Agustsson & Theis 2020)",
    )
    register(
        "ds-q",
        DSQ,
        description="rounding forward, tanh staircase backward, learned sharpness (Gong 2019, "
        "as Tsubota & Aizawa 2021)",
    )
    register(
        "kumaraswamy",
        Kumaraswamy,
        description="Kumaraswamy noise a 2 -> 1 inside soft rounding T 0.3 -> 0.1 (Cool-Chic / "
        "C3, Kim 2024)",
    )
    register(
        "universal",
        Universal,
        description="universal quantization: round(y - mu - u) + u with a shared dither, "
        "coded bit-exactly; additive noise in training (Agustsson & Theis 2020)",
    )
    register(
        "soft-to-hard",
        SoftToHard,
        description="softmax over the nearest integer centres, sigma 1 -> 100 (Agustsson 2017)",
    )
