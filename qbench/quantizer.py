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
  surrogate can anneal; values outside [0, 1] raise ``ValueError``.

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

import torch
from torch import Tensor, nn

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
    given) in both modes, its uniform bins and a no-op annealing schedule.
    Subclasses override :meth:`forward`'s training branch, and a non-uniform
    quantizer also overrides :meth:`quantize` and :meth:`bins` and sets
    ``uniform = False``.

    Class attributes a backbone reads:

    * ``uniform`` (bool): the reconstruction values are the integers (shifted by
      the means), so CompressAI's own integer-symbol coder applies.
    * ``scale_bound`` (float or None): a lower bound on the Gaussian
      conditional's scale parameter that this quantizer asks the backbone to use
      in training and test (SUA's trick); ``None`` keeps the backbone's own.
    """

    uniform: bool = True
    scale_bound: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.progress = 0.0

    def forward(self, y: Tensor, means: Tensor | None = None) -> Quantized:
        """Hard quantization for both terms (training mode too, for the base class)."""
        y_hat = self.quantize(y, means)
        return Quantized(rate=y_hat, dist=y_hat)

    def quantize(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        """Hard test-time reconstruction values (what the decoder sees)."""
        return round_around(y, means)

    def bins(self, y_hat: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The cell ``(lower, upper)`` of each reconstruction value ``y_hat``."""
        return y_hat - 0.5, y_hat + 0.5

    def set_progress(self, t: float) -> None:
        """Record the training progress ``t`` in [0, 1]; raise ``ValueError`` outside it."""
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"training progress must lie in [0, 1], got {t}")
        self.progress = t

    def extra_repr(self) -> str:
        return f"progress={self.progress:.3f}"
