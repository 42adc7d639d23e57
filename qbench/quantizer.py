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

A minimal third-party quantizer overrides only the training branch::

    import torch
    import qbench

    class HalfNoise(qbench.Quantizer):
        '''y + u, u ~ U(-1/4, 1/4) during training (an example, not a paper).'''

        def forward(self, y, means=None):
            if not self.training:
                return super().forward(y, means)
            y_tilde = y + torch.empty_like(y).uniform_(-0.25, 0.25)
            return qbench.Quantized(rate=y_tilde, dist=y_tilde)

and registers it from a plugin module::

    @qbench.hookimpl
    def qbench_register_quantizers(register):
        register("halfnoise", HalfNoise, description="y + U(-1/4, 1/4)")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from qbench.coding import CdfTables, EntropyTables

__all__ = [
    "Quantized",
    "Quantizer",
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
    """

    scale_bound: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.progress = 0.0

    # -- the surrogate ---------------------------------------------------------
    def forward(self, y: Tensor, means: Tensor | None = None) -> Quantized:
        """Hard quantization for both terms (training mode too, for the base class)."""
        y_hat = self.quantize(y, means)
        return Quantized(rate=y_hat, dist=y_hat)

    def quantize(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        """Hard test-time reconstruction values (what the decoder sees).

        Must equal ``from_symbols(symbols(y, means), means)``.
        """
        return round_around(y, means)

    def bins(self, y_hat: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The cell ``(lower, upper)`` of each reconstruction value ``y_hat``."""
        return y_hat - 0.5, y_hat + 0.5

    def set_progress(self, t: float) -> None:
        """Record the training progress ``t`` in [0, 1] (the caller checks the range)."""
        self.progress = float(t)

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
        return torch.round(v).long()

    def from_symbols(self, symbols: Tensor, means: Tensor | None = None) -> Tensor:
        """Reconstruction values of decoded ``symbols`` (float; ``symbols + means`` by default)."""
        dtype = means.dtype if means is not None else torch.get_default_dtype()
        values = symbols.to(dtype)
        return values if means is None else values + means

    def tables(self, entropy: EntropyTables) -> CdfTables:
        """The coder's probability tables for this quantizer's symbols under ``entropy``.

        Default: the entropy model's own tables for integer symbols with unit
        cells (bit-identical to CompressAI's ``compress``). A quantizer whose
        cells differ returns ``entropy.cell_tables(lower, upper)`` for its
        levels' cells.
        """
        return entropy.integer_tables()

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
