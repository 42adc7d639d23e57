"""The quantizer contract: what every quantization surrogate implements.

A learned codec quantizes its latents ``y`` (and ``z`` for hyperprior models)
with hard rounding at test time. Rounding has zero gradient almost everywhere,
so training uses a *surrogate*. In qbench a surrogate is a
:class:`Quantizer`, a :class:`torch.nn.Module` that a backbone calls for every
quantized latent::

    out = quantizer(y, means)          # -> Quantized(rate=..., dist=...)

* In training mode ``out.rate`` is the value whose likelihood is charged to the
  bitrate and ``out.dist`` the value fed to the synthesis transform (they
  differ for "mixed"). In eval mode both are the hard reconstruction
  ``quantize(y, means)``.
* ``quantize(y, means)`` is what the decoder sees. The default is uniform
  rounding, around the means when given: ``round(y - means) + means``.
* ``bins(y_hat, means)`` is the quantization cell ``(lower, upper)`` of each
  reconstruction value; the likelihood is ``P = CDF(upper) - CDF(lower)``.
  The default is ``y_hat -+ 0.5``; a non-uniform quantizer returns its own.
* ``set_progress(t)`` gives the training progress ``t`` in [0, 1] so that a
  surrogate can anneal (the caller guarantees the range); ``end_step()`` is
  called after every optimisation step. These two are the only places where
  annealing state may change: ``forward`` must not change any state.
* The *index protocol* says how the hard values are entropy coded:
  ``symbols(y, means)`` are the integers the coder writes, ``from_symbols``
  maps them back to reconstruction values, and ``tables(entropy)`` picks the
  coder's probability tables. The defaults are uniform rounding's (symbols
  ``round(y - means)``, CompressAI's own integer tables), so one coding path
  serves every quantizer; a non-uniform quantizer (STanH) overrides the three
  together (symbols are level indices, tables built from its cells).
* ``interpolate(other, a)`` blends two trained quantizers of one kind (the
  variable-rate protocol); the default blends their floating state linearly.
* ``bind(latent, channels)`` is called once by the backbone with the name of
  the latent the quantizer serves (``"y"``, ``"z"``) and its channel count,
  before any parameter is trained: a quantizer whose parameters depend on the
  latent (STanH's authors' preset, per-channel gains) builds them there.
* ``step()`` is the quantization step (``None``: 1; a scalar or one per
  channel): symbols ``round((y - means) / step)``, cells of width ``step``,
  reconstructions ``means + step * k`` (``reconstruction_step()`` when it
  differs); the defaults of the index protocol follow it.
* ``settings()`` are the options a results row records; ``requires`` names,
  for each option, the capability of a latent it acts on (see
  :mod:`qbench.backbone`), and ``idle(capabilities)`` says which options, as
  set, have nothing to act on in a latent. qbench refuses a matrix that sets
  an option explicitly where it is idle, and notes idle defaults in the report.

Most surrogates derive from :class:`Surrogate`, which carries the two tricks of
Zhang, Li and Liu (2023) as options of every surrogate: a lower bound on the
Gaussian scale (``scale_bound``) and zero-centre quantization with its gradient
routing (``zero_center``, ``stop_gradient``); a subclass writes only
``surrogate(v)``, its training values on the unit integer grid.

A minimal third-party quantizer writes only its training values::

    import torch
    import qbench

    class HalfNoise(qbench.Surrogate):
        '''v + u, u ~ U(-1/4, 1/4) during training (an example, not a paper).'''

        def surrogate(self, v):
            v_tilde = v + torch.empty_like(v).uniform_(-0.25, 0.25)
            return qbench.Quantized(rate=v_tilde, dist=v_tilde)

and registers it from a plugin module::

    @qbench.hookimpl
    def qbench_register_quantizers(register):
        register("halfnoise", HalfNoise, description="y + U(-1/4, 1/4)")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from qbench.tensors import per_channel

if TYPE_CHECKING:
    from qbench.coding import CdfTables, EntropyTables

__all__ = [
    "GRADIENT_ROUTES",
    "per_channel",
    "Quantized",
    "Quantizer",
    "Surrogate",
    "round_around",
    "ste_round",
    "straight_through",
    "uniform_noise",
]


@dataclass
class Quantized:
    """The two values a quantizer hands back to the backbone.

    Attributes:
        rate: the value whose likelihood is charged to the bitrate.
        dist: the value fed to the synthesis transform (distortion path).
    """

    rate: Tensor
    dist: Tensor


def round_around(y: Tensor, means: Tensor | None = None) -> Tensor:
    """Uniform rounding, around ``means`` when given: ``round(y - means) + means``."""
    if means is None:
        return torch.round(y)
    return torch.round(y - means) + means


def ste_round(y: Tensor, means: Tensor | None = None) -> Tensor:
    """Rounding in the forward pass, identity in the backward pass.

    Forward ``round(y - means) + means`` exactly; backward ``d/dy = 1`` and no
    gradient to ``means`` (Bengio et al. 2013; Theis et al. 2017 for image
    compression). Written as ``hard + (y - stop_gradient(y))`` so that the
    forward value is bit-identical to the hard one.
    """
    hard = round_around(y.detach(), None if means is None else means.detach())
    return hard + (y - y.detach())


def straight_through(value: Tensor, y: Tensor) -> Tensor:
    """``value`` in the forward pass, identity wrt ``y`` in the backward pass."""
    return value.detach() + (y - y.detach())


def uniform_noise(y: Tensor, width: float = 1.0) -> Tensor:
    """``y + u`` with ``u ~ U(-width/2, width/2)`` drawn from torch's global RNG."""
    half = width / 2
    return y + torch.empty_like(y).uniform_(-half, half)


class Quantizer(nn.Module):
    """Base class of every quantization surrogate (the ``round`` control itself).

    The base class implements hard uniform rounding (around the means when
    given) in both modes, its unit bins, the uniform index protocol, linear
    interpolation of floating state and a no-op annealing schedule.
    Subclasses override :meth:`forward`'s training branch; a non-uniform
    quantizer also overrides :meth:`quantize`, :meth:`bins`, :meth:`symbols`,
    :meth:`from_symbols` and :meth:`tables`.

    Attribute a backbone reads:

    * ``scale_bound`` (float or None): a lower bound on a Gaussian
      conditional's scale parameter that this quantizer asks the backbone to
      use in training and coding; ``None`` keeps the backbone's own.

    Attribute the report reads (recorded in the run's manifest by the runner):

    * ``report_notes``: ``{setting: what a non-zero value means}`` for
      settings of :meth:`settings` that flag something a reader should know
      (a learned step clamped at its minimum). The report notes each such
      setting, with this clause, for every label and backbone where a row
      recorded a non-zero value, and counts those configurations.
    """

    scale_bound: float | None = None
    #: option name -> the latent capability it acts on (``qbench.backbone.CAPABILITIES``)
    requires: ClassVar[Mapping[str, str]] = {}
    #: setting name -> what a non-zero value of it means (a note of the report)
    report_notes: ClassVar[Mapping[str, str]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.progress = 0.0
        self.latent: str | None = None
        self.channels: int | None = None

    # -- what a row records --------------------------------------------------------
    def bind(self, latent: str, channels: int | None = None) -> None:
        """Learn which latent this quantizer serves (called once by the backbone).

        ``latent`` is its name (``"y"``, ``"z"``), ``channels`` its channel
        count when the backbone declares it (``Backbone.channels``). Default:
        record both in ``self.latent`` and ``self.channels``. Called before any
        parameter is trained or loaded, so an override may (re)build its
        parameters (per-channel gains, STanH's per-latent level counts).
        """
        self.latent = latent
        self.channels = channels

    def settings(self) -> dict[str, Any]:
        """The options a results row records (``{}`` by default), as plain values."""
        return {}

    def idle(self, capabilities: frozenset[str]) -> dict[str, str]:
        """Options whose value, as set, has nothing to act on in a latent with ``capabilities``.

        Returns ``{option: why}``. Default: none. qbench refuses a matrix
        that sets an idle option explicitly, and notes an idle default in the
        report; a default that is neutral (``None``, ``False``, ``"none"``) is
        never idle.
        """
        return {}

    # -- the surrogate ---------------------------------------------------------
    def forward(self, y: Tensor, means: Tensor | None = None) -> Quantized:
        """Hard quantization for both terms (training mode too, for the base class)."""
        y_hat = self.quantize(y, means)
        return Quantized(rate=y_hat, dist=y_hat)

    def quantize(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        """Hard test-time reconstruction values (what the decoder sees).

        Must equal ``from_symbols(symbols(y, means), means)``. Default:
        ``round(y - means) + means``, or with a :meth:`step`
        ``means + r * round((y - means) / step)`` (``r`` the reconstruction step).
        """
        if self.step() is None:
            return round_around(y, means)
        return self.from_symbols(self.symbols(y, means), means).to(y.dtype)

    def bins(self, y_hat: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The cell ``(lower, upper)`` of each reconstruction value ``y_hat``.

        Default: ``y_hat -+ 1/2``; with a :meth:`step` ``Δ`` and reconstruction
        step ``r``, the cell of symbol ``k = (y_hat - means) / r`` (continuous for
        a soft value, so the cell moves with it): ``means + (k -+ 1/2) Δ``.
        """
        step = self.step()
        if step is None:
            return y_hat - 0.5, y_hat + 0.5
        step = per_channel(step, y_hat).to(y_hat.dtype)
        recon = per_channel(self.reconstruction_step(), y_hat).to(y_hat.dtype)
        v = y_hat if means is None else y_hat - means
        k = v / recon
        lower, upper = (k - 0.5) * step, (k + 0.5) * step
        if means is not None:
            lower, upper = lower + means, upper + means
        return lower, upper

    # -- quantization step --------------------------------------------------------
    def step(self) -> Tensor | None:
        """The quantization step ``Δ``: a scalar tensor or one per channel (shape ``(C,)``).

        ``None`` (default) is the unit step. With a step, symbol ``k`` is the
        cell ``means + [(k - 1/2) Δ, (k + 1/2) Δ]`` (its likelihood; coded with
        the entropy model's tables at scale ``σ / Δ`` for a Gaussian,
        ``entropy.step_tables``), and :meth:`symbols`, :meth:`from_symbols`,
        :meth:`quantize`, :meth:`bins` and :meth:`tables` follow it.
        """
        return None

    def reconstruction_step(self) -> Tensor | None:
        """Distance ``r`` between reconstruction values: ``means + r * k`` (``step()`` by
        default; gain units decode with a learned inverse gain instead of ``1 / gain``)."""
        return self.step()

    def set_progress(self, t: float) -> None:
        """Record the training progress ``t`` in [0, 1] (the caller checks the range)."""
        self.progress = float(t)

    def reduces_to(self, progress: float) -> str:
        """What this surrogate *is* at training progress ``progress`` when it has reduced
        there to a simpler one, in words ("" by default: it is itself).

        An annealed surrogate can end as another one exactly (SUA at temperature 0 is
        hard rounding with a straight-through gradient, STE, with its own gradient
        routing and scale bound): the statistics of its final state then describe that
        surrogate, not the annealing, and the report says so. Only an exact reduction
        is named; reading it changes nothing. The worker records ``reduces_to(1.0)``
        in the row's ``final_form`` column.
        """
        return ""

    def annealing_state(self) -> dict[str, float]:
        """The annealing state worth watching live: ``{name: value}`` (``{}`` by default).

        Read by the live monitoring (``qbench_train_step``, the TensorBoard
        logger) every ``log_every`` steps, e.g. SGA's ``tau``, SUA's ``T``,
        STanH's ``beta``. Reading it must change nothing.
        """
        return {}

    def end_step(self) -> None:
        """Called by the training loop once after each optimisation step (no-op by default).

        Annealing that depends on what training saw (STanH's gap-driven beta)
        updates its state here, never inside ``forward``: a forward pass made
        by a probe (a statistic, an evaluation) must change nothing.
        """

    # -- the index protocol: what the entropy coder writes -------------------------
    def symbols(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        """The integer symbols the entropy coder writes for ``y`` (int64).

        Default: ``round(y - means)``, CompressAI's own symbols.
        """
        v = y if means is None else y - means
        step = self.step()
        if step is not None:
            v = v / per_channel(step.detach(), v).to(v.dtype)
        return torch.round(v).long()

    def from_symbols(self, symbols: Tensor, means: Tensor | None = None) -> Tensor:
        """Reconstruction values of decoded ``symbols`` (float; ``symbols + means`` by
        default, ``symbols * r + means`` with a reconstruction step ``r``)."""
        dtype = means.dtype if means is not None else torch.get_default_dtype()
        values = symbols.to(dtype)
        recon = self.reconstruction_step()
        if recon is not None:
            values = values * per_channel(recon.detach(), values).to(dtype)
        return values if means is None else values + means

    def tables(self, entropy: EntropyTables) -> CdfTables:
        """The coder's probability tables for this quantizer's symbols under ``entropy``.

        Default: the entropy model's own tables for integer symbols with unit
        cells (bit-identical to CompressAI's ``compress``). A quantizer whose
        cells differ returns ``entropy.cell_tables(lower, upper)`` for its
        levels' cells. With a :meth:`step`: ``entropy.step_tables(step)``.
        """
        step = self.step()
        if step is not None:
            return entropy.step_tables(step.detach())
        return entropy.integer_tables()

    def table_indexes(self, indexes: Tensor) -> Tensor:
        """The table each symbol is coded with, given the entropy model's index of each
        (``indexes``, shaped like the latent: a scale index, a channel).

        Default: ``indexes`` unchanged. A quantizer whose cells move per element
        (universal quantization's dither: ``entropy.shifted_tables``) maps each to its
        own table here; the backbone applies it to the whole latent's indexes in
        :meth:`~qbench.Backbone.code_latent` and :meth:`~qbench.Backbone.decode_latent`.
        """
        return indexes

    def needs(self) -> dict[str, str]:
        """Capabilities (``qbench.backbone.CAPABILITIES``) a latent must offer this
        quantizer, as set, for it to work at all: ``{capability: what needs it}``.

        Default: none. Unlike :meth:`idle` (an option with nothing to act on), a
        missing need is refused whether the option was set or defaulted, before any
        job (universal quantization's dithered coding needs ``dithered_coding``).
        """
        return {}

    # -- variable rate ---------------------------------------------------------
    def interpolate(self, other: Quantizer, a: float) -> None:
        """Become ``(1 - a) * self + a * other`` (in place), for ``a`` in [0, 1].

        Default: every floating parameter and buffer is blended linearly;
        integer state is kept from ``self``. Raises ``ValueError`` when
        ``other`` is of another kind or its state has other names or shapes.
        Override where the parameters do not blend linearly (STanH blends its
        step heights, not their logarithms).
        """
        if type(other) is not type(self):
            raise ValueError(
                f"cannot interpolate a {type(self).__name__} with a {type(other).__name__}"
            )
        state, state2 = self.state_dict(), other.state_dict()
        if set(state) != set(state2) or any(state[k].shape != state2[k].shape for k in state):
            raise ValueError(f"cannot interpolate two {type(self).__name__} of different shapes")
        self.load_state_dict(
            {
                k: (1 - a) * v + a * state2[k] if v.is_floating_point() else v
                for k, v in state.items()
            }
        )

    def extra_repr(self) -> str:
        return f"progress={self.progress:.3f}"


#: ``stop_gradient`` choices of a zero-centred :class:`Surrogate` (see its docstring).
GRADIENT_ROUTES = ("none", "partial")
#: The old boolean values of ``sua``'s ``stop_gradient``, still accepted.
_ROUTE_ALIASES = {True: "partial", False: "none"}


class Surrogate(Quantizer):
    r"""A training surrogate with the scale bound and zero-centre tricks as options.

    Zhang, Li and Liu ("On Uniform Scalar Quantization for Learned Image
    Compression", arXiv 2309.17051, 2023) propose two tricks for any uniform
    surrogate; here they are options of every subclass (``noise``, ``ste``,
    ``mixed``, ``sua``, ``sga``, ``stanh`` and third-party ones). A subclass
    writes :meth:`surrogate`, its training values for a latent ``v`` whose
    quantization grid is the integers; this class places that grid:

    * ``zero_center = True`` (and the latent has ``means`` ``mu``): the
      surrogate acts on ``v = y - mu`` and ``mu`` is added back,
      ``y_tilde = S(v) + mu``, the grid the decoder uses (the codec codes
      ``round(y - mu)``). ``zero_center = False``: ``y_tilde = S(y)``, the
      integer grid, which at test time is offset from the decoder's by
      ``mu - round(mu)`` (a train-test mismatch of its own).
    * ``stop_gradient`` routes the gradient of the centre (only with
      ``zero_center``):

      - ``"none"``: ``v = y - mu``; ``d y_tilde / d mu = 1 - S'(v)``, which is
        0 for a straight-through or additive surrogate (``S' = 1``): ``mu``
        then learns from the rate term only (through the likelihood, as the
        prior's location).
      - ``"partial"`` (qbench's reading of "partial stop-gradient"):
        ``v = y - stop_gradient(mu)``; ``d y_tilde / d mu = 1``. The rate
        term sees ``y_tilde - mu = S(v)``, so **the rate's gradient to mu is
        exactly 0**: ``mu`` learns from the distortion only (as a
        reconstruction offset), no longer as the prior's location.

      The old boolean values are accepted (``True`` is ``"partial"``,
      ``False`` is ``"none"``). ``docs/quantizers.md`` tabulates, for each
      built-in and setting, which of y, mu and sigma get gradient from which
      term; ``tests/test_routing.py`` asserts it on ``mbt2018-mean``.
    * ``scale_bound``: the lower bound on the Gaussian conditional's scale
      that the backbone uses in training and in coding (``None``: the
      backbone's own, 0.11 in CompressAI).

    With a quantization :meth:`~Quantizer.step` ``Δ`` (reconstruction step
    ``r``), the surrogate acts on ``v / Δ`` and its values are scaled by ``r``:
    ``y_tilde = r * S(v / Δ) (+ mu)``, which for ``r = Δ`` is ``Δ S(v / Δ)``.

    ``requires`` says what each option acts on: ``scale_bound`` a latent
    coded with a Gaussian conditional, ``zero_center`` a latent with means
    (or medians), ``stop_gradient`` a latent whose means are learned.

    At test time every surrogate is hard rounding around the means, whatever
    the options (:meth:`Quantizer.quantize`).
    """

    requires: ClassVar[Mapping[str, str]] = {
        "scale_bound": "gaussian_scale",
        "zero_center": "means",
        "stop_gradient": "learned_means",
    }
    #: a subclass's default gradient routing when ``stop_gradient`` is not given
    default_route: ClassVar[str] = "none"
    #: what a routed centre means for the statistics (a note of the report wherever a row
    #: recorded a ``stop_gradient`` other than ``none``); its figures are checked by
    #: ``tests/test_statistics_real.py``
    report_notes: ClassVar[Mapping[str, str]] = {
        "stop_gradient": "the gradient of the centre mu is routed, which is neither the "
        "surrogate's forward value nor its annealing: on the shipped initialisation with 40 "
        "photographs `partial` lowers grad_slope_ratio from 1.01 to 0.65 for STE and for SUA "
        "halfway (t = 0.5) alike, and raises SUA's grad_var at t = 0.1 about 4-fold "
        "(docs/statistics.md); statistics that differ with it measure the routing",
    }

    def __init__(
        self,
        scale_bound: float | None = None,
        zero_center: bool = True,
        stop_gradient: str | bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(zero_center, bool):
            raise ValueError(f"zero_center must be a boolean, got {zero_center!r}")
        if scale_bound is not None and not float(scale_bound) > 0:
            raise ValueError(f"scale_bound must be > 0 or None, got {scale_bound}")
        if stop_gradient is None:  # the default routes the centre only where there is one
            route = self.default_route if zero_center else "none"
        else:
            route = stop_gradient
        route = _ROUTE_ALIASES.get(route, route) if isinstance(route, bool) else route
        if route not in GRADIENT_ROUTES:
            raise ValueError(
                f"stop_gradient must be one of {GRADIENT_ROUTES} (or true / false), "
                f"got {stop_gradient!r}"
            )
        if route != "none" and not zero_center:
            raise ValueError(
                f"stop_gradient = {route!r} routes the gradient of the centre mu; "
                "it needs zero_center = true"
            )
        self.scale_bound = None if scale_bound is None else float(scale_bound)
        self.zero_center = bool(zero_center)
        self.stop_gradient = route

    def surrogate(self, v: Tensor) -> Quantized:  # pragma: no cover - abstract
        """Training values for ``v``, whose quantization grid is the integers.

        ``rate`` is charged to the bitrate, ``dist`` fed to the synthesis;
        hard rounding of ``v`` is ``torch.round(v)``.
        """
        raise NotImplementedError

    def forward(self, y: Tensor, means: Tensor | None = None) -> Quantized:
        if not self.training:
            return super().forward(y, means)
        centred = means is not None and self.zero_center
        v = y
        if centred:
            v = y - (means.detach() if self.stop_gradient == "partial" else means)
        step = self.step()
        if step is None:
            out = self.surrogate(v)
        else:  # the surrogate on the unit grid of v / step, mapped back to reconstructions
            unit = self.surrogate(v / per_channel(step, v).to(v.dtype))
            recon = per_channel(self.reconstruction_step(), v).to(v.dtype)
            out = Quantized(rate=unit.rate * recon, dist=unit.dist * recon)
        if not centred:
            return out
        return Quantized(rate=out.rate + means, dist=out.dist + means)

    def settings(self) -> dict[str, Any]:
        return {
            "scale_bound": self.scale_bound,
            "zero_center": self.zero_center,
            "stop_gradient": self.stop_gradient,
        }

    def idle(self, capabilities: frozenset[str]) -> dict[str, str]:
        why = {
            "gaussian_scale": "the latent has no Gaussian conditional",
            "means": "the latent has no means",
            "learned_means": "the latent has no learned means",
        }
        active = {
            "scale_bound": self.scale_bound is not None,
            "zero_center": self.zero_center,
            "stop_gradient": self.stop_gradient != "none",
        }
        return {
            option: why[need]
            for option, need in self.requires.items()
            if active.get(option) and need not in capabilities
        }

    def routing_words(self) -> str:
        """This surrogate's options that act besides its forward value, in words (for
        :meth:`reduces_to`): the gradient routing and the scale bound, '' when neither."""
        parts = []
        if self.zero_center:
            parts.append(f"zero-centred, stop_gradient = {self.stop_gradient}")
        if self.scale_bound is not None:
            parts.append(f"scale bound {self.scale_bound:g}")
        return "; ".join(parts)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{super().extra_repr()}, {opts}"
