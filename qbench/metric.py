"""The metric contract: columns of ``results.csv`` computed from an evaluation.

A metric declares its ``columns`` and fills them per image (``per_image``),
once per job (``per_job``) and/or at every point of the training schedule
(``per_probe``: a *schedule statistic*, measured on the job's fixed probe set
with the quantizers in the state they had at that point; the row gets the
final state, the training average and their 95 % intervals). Per-image
values are reduced over the evaluation set as the metric declares in
``aggregate`` (``"mean"`` over the finite values by default; ``"all"``: 1
when every image's value is true). A metric receives an :class:`ImageEval`,
:class:`JobEval` or :class:`ProbeEval` holding everything the evaluation
computed; it must not write files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from qbench.analysis import Estimate

#: The reductions a metric may declare for a per-image column.
AGGREGATIONS = ("mean", "all")


@dataclass
class ImageEval:
    """One evaluated image.

    Attributes:
        name: image name.
        x: original image, ``1 x 3 x H x W`` in [0, 1] (unpadded).
        x_hat: reconstruction of the eval-mode forward pass, cropped, clamped to [0, 1].
        likelihoods: ``{latent: P}`` of the eval-mode forward pass (padded area).
        num_pixels: ``H * W`` of the unpadded image (the bpp denominator).
        num_bytes: length of the real bitstream.
        bitexact: decoded latents equal the encoder's.
        x_padded: the padded input the model saw.
        model: the backbone (eval mode); a metric that switches modes restores eval.
    """

    name: str
    x: Tensor
    x_hat: Tensor
    likelihoods: dict[str, Tensor]
    num_pixels: int
    num_bytes: int
    bitexact: bool
    x_padded: Tensor
    model: Any


@dataclass
class JobEval:
    """Once per job: the trained model, a fixed training batch, the job's lambda and seed."""

    model: Any
    batch: Tensor
    lmbda: float
    seed: int


@dataclass
class ProbeEval:
    """One point of the training schedule, for a schedule statistic (``Metric.per_probe``).

    Attributes:
        model: the backbone with its weights and quantizers as they were at
            ``progress`` (training or eval mode: the metric picks; the harness
            restores the mode and runs the probe on its own RNG stream).
        batches: the job's fixed probe set: ``[eval] probe_batches`` batches of
            ``[eval] probe_crops`` training crops each, the same at every point.
        lmbda: the job's rate-distortion trade-off.
        seed: the job's seed.
        progress: the training progress ``t`` in [0, 1] of this point.
        draws: ``[eval] draws``, the number of surrogate draws ``K`` every
            schedule statistic takes (one ``K`` for all, so they compare).
        train_pixels: pixels of one training batch (``[train] batch_size``
            crops of ``crop`` pixels), the batch a statistic that depends on
            the batch size is stated for (``grad_var``); 0 when unknown (then
            the probe batch's own).
    """

    model: Any
    batches: list[Tensor]
    lmbda: float
    seed: int
    progress: float
    draws: int
    train_pixels: int = 0


class Metric:
    """Base class of metrics; subclasses set ``columns`` and override one method.

    Attributes:
        columns: the ``results.csv`` columns this metric fills; the report
            shows every one of them.
        aggregate: ``{column: reduction}`` for per-image columns whose
            reduction over the images is not the mean of the finite values
            (one of :data:`AGGREGATIONS`).
        column_notes: ``{column: how to read it}``, one or two sentences that
            the report prints under the column's table (recorded in the run's
            manifest, so a report rebuilt later says the same).
    """

    columns: ClassVar[tuple[str, ...]] = ()
    aggregate: ClassVar[Mapping[str, str]] = {}
    column_notes: ClassVar[Mapping[str, str]] = {}

    def per_image(self, ev: ImageEval) -> dict[str, float]:
        """Values of (some of) ``columns`` for one image; reduced over the set."""
        return {}

    def per_job(self, ev: JobEval) -> dict[str, float]:
        """Values of (some of) ``columns`` computed once per job."""
        return {}

    def per_probe(self, ev: ProbeEval) -> dict[str, Estimate]:
        """Values of (some of) ``columns`` at one point of the training schedule, each an
        :class:`~qbench.analysis.Estimate` (value, 95 % interval over the probe batches,
        and the reason when it is exact by construction). A metric that overrides
        this is a schedule statistic."""
        return {}

    @classmethod
    def measures_schedule(cls) -> bool:
        """Whether this metric is a schedule statistic (overrides :meth:`per_probe`)."""
        return cls.per_probe is not Metric.per_probe
