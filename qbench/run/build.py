"""What a job's objects are built from: its model and its datasets.

:func:`build_model` puts one fresh quantizer on each latent of the job's
backbone (the job's on the latents its entry lists, the matrix's
``unlisted_latents`` on the others); :class:`DatasetCache` builds each dataset
once per process.
"""

from __future__ import annotations

from typing import Any

from qbench.backbone import Backbone
from qbench.plan.jobs import Job, Spec
from qbench.registry import QbenchError, Registry


def build_model(job: Job, registry: Registry) -> Backbone:
    """The job's backbone with one fresh quantizer per quantized latent."""
    model = registry.build("backbone", job.backbone.name, **job.backbone.params)
    try:
        targets = model.select_latents(job.quantizer.latents)
    except QbenchError as exc:
        raise QbenchError(
            f"quantizer {job.quantizer.label!r}, backbone {job.backbone.label!r}: {exc}"
        ) from exc
    quantizers = {}
    for latent in model.latents:
        spec = job.quantizer if latent in targets else job.unlisted
        quantizers[latent] = registry.build("quantizer", spec.name, **spec.params)
    missing = model.missing_needs(quantizers[targets[0]], targets)
    if missing:
        raise QbenchError(
            f"quantizer {job.quantizer.label!r}, backbone {job.backbone.label!r}: the latents "
            f"do not offer what it needs: {missing}"
        )
    model.set_quantizers(quantizers)
    return model


class DatasetCache:
    """Datasets built once per process, keyed by name and parameters."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.cache: dict[str, Any] = {}

    def get(self, spec: Spec) -> Any:
        key = repr((spec.name, sorted(spec.params.items())))
        if key not in self.cache:
            self.cache[key] = self.registry.build("dataset", spec.name, **spec.params)
        return self.cache[key]

    def uint8_images(self, spec: Spec) -> list:
        """Every image of the dataset as uint8 (the form training crops are cut from)."""
        ds = self.get(spec)
        return [ds.uint8(i) for i in range(len(ds))]
