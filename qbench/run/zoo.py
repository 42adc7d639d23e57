"""Measure pretrained models with qbench's own evaluation: ``qbench verify-zoo``'s first half.

Each backbone is built with ``pretrained = Q`` (its weights through
CompressAI's zoo loader and torch hub's cache), its quantizers set to the
contract's base :class:`qbench.Quantizer` (rounding at test time: what the zoo
models were evaluated with), and evaluated on every image of one dataset
(real bitstream, the metrics asked for, per image then averaged). The
comparison with the published points is :mod:`qbench.report.zoo`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qbench.quantizer import Quantizer
from qbench.registry import QbenchError, Registry
from qbench.run.evaluate import evaluate


class WeightsUnavailable(QbenchError):
    """The pretrained weights of a (backbone, quality) cannot be had (the reason)."""


class ZooMeter:
    """Evaluates pretrained backbones of ``registry`` on every image of ``dataset`` with the
    metrics named ``metrics`` (each metric's columns come back)."""

    def __init__(self, registry: Registry, dataset: Any, metrics: Sequence[str]) -> None:
        self.registry = registry
        self.images = [dataset[i] for i in range(len(dataset))]
        default = [str(i) for i in range(len(self.images))]
        self.names = list(getattr(dataset, "names", default))
        self.metrics = [registry.build("metric", m) for m in metrics]

    def measure(self, backbone: str, quality: int) -> dict[str, Any]:
        """The averages of ``backbone`` built with ``pretrained = quality``; raises
        :class:`WeightsUnavailable` when its weights cannot be had."""
        try:
            model = self.registry.build("backbone", backbone, pretrained=int(quality))
        except Exception as exc:
            raise WeightsUnavailable(f"{type(exc).__name__}: {exc}") from exc
        model.set_quantizers({latent: Quantizer() for latent in model.latents})
        averages, _ = evaluate(model, self.images, self.names, self.metrics)
        return averages
