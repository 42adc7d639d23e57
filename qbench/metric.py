"""The metric contract: columns of ``results.csv`` computed from an evaluation.

A metric declares its ``columns`` and fills them per image (``per_image``) and/or
once per job (``per_job``). Per-image values are reduced over the evaluation
set as the metric declares in ``aggregate`` (``"mean"`` over the finite values
by default; ``"all"``: 1 when every image's value is true). A metric receives
an :class:`ImageEval` or :class:`JobEval` holding everything the evaluation
computed; it must not write files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

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


class Metric:
    """Base class of metrics; subclasses set ``columns`` and override one method.

    Attributes:
        columns: the ``results.csv`` columns this metric fills; the report
            shows every one of them.
        aggregate: ``{column: reduction}`` for per-image columns whose
            reduction over the images is not the mean of the finite values
            (one of :data:`AGGREGATIONS`).
    """

    columns: ClassVar[tuple[str, ...]] = ()
    aggregate: ClassVar[Mapping[str, str]] = {}

    def per_image(self, ev: ImageEval) -> dict[str, float]:
        """Values of (some of) ``columns`` for one image; reduced over the set."""
        return {}

    def per_job(self, ev: JobEval) -> dict[str, float]:
        """Values of (some of) ``columns`` computed once per job."""
        return {}
