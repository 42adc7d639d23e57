"""The backbone contract: a codec whose every quantization goes through a plugin quantizer.

A backbone declares its quantized latents (``latents``, e.g. ``("y", "z")``)
and the multiple its input sides must be padded to (``multiple``). The runner
builds one :class:`qbench.Quantizer` per latent and hands them over with
:meth:`Backbone.set_quantizers`. Every likelihood a backbone computes uses the
quantizer's ``bins``: ``P = CDF(upper) - CDF(lower)``.

Outputs (all tensors batched, ``N x C x H x W``):

* ``forward(x)`` -> ``{"x_hat", "likelihoods": {latent: P}, "latents": {latent: dist}}``
  where ``latents`` holds the value fed onwards (the surrogate's ``dist`` in
  training mode, the hard value in eval mode).
* ``compress(x)`` -> ``{"strings", "shape", "latents": {latent: hard values}}``
  (real entropy coding; ``latents`` are what the encoder quantized).
* ``decompress(strings, shape)`` -> ``{"x_hat", "latents": {latent: decoded values}}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn

from qbench.quantizer import Quantizer


class Backbone(nn.Module):
    """Base class of codec backbones (see the module docstring for the contract).

    Subclasses implement ``forward``, ``compress``, ``decompress``, and for
    CompressAI-style models ``update`` and ``aux_loss``.
    """

    latents: tuple[str, ...] = ("y",)
    multiple: int = 64

    def __init__(self) -> None:
        super().__init__()
        self.quantizers = nn.ModuleDict({name: Quantizer() for name in self.latents})

    def set_quantizers(self, quantizers: Mapping[str, Quantizer]) -> None:
        """Use ``quantizers[latent]`` for each latent (every latent must be given)."""
        missing = set(self.latents) - set(quantizers)
        extra = set(quantizers) - set(self.latents)
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__} quantizes latents {list(self.latents)}; "
                f"got quantizers for {sorted(quantizers)}"
            )
        for name, q in quantizers.items():
            if not isinstance(q, Quantizer):
                raise TypeError(f"quantizer for latent {name!r} is not a qbench.Quantizer: {q!r}")
        self.quantizers = nn.ModuleDict(dict(quantizers))

    def set_progress(self, t: float) -> None:
        """Forward the training progress to every quantizer."""
        for q in self.quantizers.values():
            q.set_progress(t)

    def quantizer_parameters(self) -> Iterator[nn.Parameter]:
        return self.quantizers.parameters()

    def aux_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained by the auxiliary loss only (none by default)."""
        return iter(())

    def main_parameters(self) -> Iterator[nn.Parameter]:
        aux = {id(p) for p in self.aux_parameters()}
        return (p for p in self.parameters() if id(p) not in aux)

    def analysis_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the analysis transform (gradient statistics are taken wrt these)."""
        return self.main_parameters()

    def analysis(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The unquantized main latent ``y`` of ``x`` (for gradient step sizes)."""
        raise NotImplementedError

    def aux_loss(self) -> Tensor | float:
        return 0.0

    def update(self, force: bool = True) -> None:
        """Rebuild entropy-coder tables after training (no-op by default)."""

    def forward(self, x: Tensor) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def compress(self, x: Tensor) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decompress(self, strings: Any, shape: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError
