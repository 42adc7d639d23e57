"""The metric contract: columns of ``results.csv`` computed from an evaluation.

A metric declares its ``columns`` and fills them per image (``per_image``,
averaged over the evaluation set by qbench) and/or once per job
(``per_job``). It receives an :class:`ImageEval` or :class:`JobEval` holding
everything the evaluation computed; it must not write files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


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
        x_dec: reconstruction decoded from the bitstream, cropped.
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
    x_dec: Tensor
    bitexact: bool
    x_padded: Tensor
    model: Any
    lmbda: float = 0.0


@dataclass
class JobEval:
    """Once per job: the trained model and a fixed training batch."""

    model: Any
    batch: Tensor
    lmbda: float
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)


class Metric:
    """Base class of metrics; subclasses set ``columns`` and override one method."""

    columns: tuple[str, ...] = ()

    def per_image(self, ev: ImageEval) -> dict[str, float]:
        """Values of (some of) ``columns`` for one image; averaged over the set."""
        return {}

    def per_job(self, ev: JobEval) -> dict[str, float]:
        """Values of (some of) ``columns`` computed once per job."""
        return {}
