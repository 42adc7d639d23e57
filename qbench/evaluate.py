"""Evaluate a trained backbone on an image set: forward, real bitstream, metrics.

Per image: pad to the backbone's ``multiple`` with zeros (as CompressAI's
``eval_model`` does), run the eval-mode forward pass (hard quantization), run
the real ``compress``/``decompress`` with CompressAI's rANS coder after
``update(force=True)``, crop both reconstructions back, and hand everything
to each metric as a :class:`qbench.ImageEval`. Values are averaged over the
images (``bitexact``: all images).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qbench.backbone import Backbone
from qbench.metric import ImageEval, JobEval, Metric


@dataclass(frozen=True)
class EvalConfig:
    """The ``[eval]`` section of a matrix.

    Attributes:
        metrics: registered metric names, in column order.
        max_images: evaluate the first ``max_images`` images (0: all).
    """

    metrics: tuple[str, ...]
    max_images: int


def pad_to(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Zero-pad ``x`` (N x C x H x W) so both sides are multiples of ``multiple``, centred."""
    h, w = x.shape[-2:]
    new_h = (h + multiple - 1) // multiple * multiple
    new_w = (w + multiple - 1) // multiple * multiple
    left = (new_w - w) // 2
    top = (new_h - h) // 2
    pad = (left, new_w - w - left, top, new_h - h - top)
    return F.pad(x, pad, mode="constant", value=0.0), pad


def crop_back(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_to`."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def count_bytes(strings: Any) -> int:
    """Total length of the (nested lists of) byte strings ``compress`` returned."""
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    return sum(count_bytes(s) for s in strings)


def _aggregate(metrics: Sequence[Metric], rows: list[dict[str, float]]) -> dict[str, float]:
    """Reduce each metric's per-image columns as it declares (``Metric.aggregate``)."""
    out: dict[str, float] = {}
    for metric in metrics:
        how = metric.aggregate
        for col in metric.columns:
            values = [r[col] for r in rows if col in r]
            if not values:
                continue
            if how.get(col) == "all":
                out[col] = float(all(bool(v) for v in values))
            else:
                finite = [v for v in values if math.isfinite(v)]
                out[col] = sum(finite) / len(finite) if finite else float("nan")
    return out


@torch.no_grad()
def evaluate_image(model: Backbone, x: Tensor, name: str) -> ImageEval:
    """Forward pass and real bitstream round trip of one image (``3 x H x W`` or batched)."""
    if x.dim() == 3:
        x = x[None]
    device = next(model.parameters()).device
    x = x.to(device)
    xp, pad = pad_to(x, model.multiple)
    out = model(xp)
    x_hat = crop_back(out["x_hat"], pad).clamp(0, 1)
    enc = model.compress(xp)
    dec = model.decompress(enc["strings"], enc["shape"])
    bitexact = all(
        torch.equal(enc["latents"][k], dec["latents"][k]) for k in enc.get("latents", {})
    ) and bool(enc.get("latents"))
    return ImageEval(
        name=name,
        x=x,
        x_hat=x_hat,
        likelihoods=out["likelihoods"],
        num_pixels=x.shape[-2] * x.shape[-1],
        num_bytes=count_bytes(enc["strings"]),
        bitexact=bitexact,
        x_padded=xp,
        model=model,
    )


def evaluate(
    model: Backbone,
    images: Sequence[Tensor],
    names: Sequence[str],
    metrics: Sequence[Metric],
    *,
    job_eval: JobEval | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate ``model`` on ``images``; return ``(averages, per-image rows)``."""
    model.eval()
    model.update(force=True)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for x, name in zip(images, names):
        ev = evaluate_image(model, x, name)
        row: dict[str, Any] = {"image": name}
        for metric in metrics:
            row.update(metric.per_image(ev))
            model.eval()
        rows.append(row)
    averages = _aggregate(metrics, rows)
    if job_eval is not None:
        for metric in metrics:
            averages.update(metric.per_job(job_eval))
            model.eval()
    averages["eval_seconds"] = time.perf_counter() - start
    return averages, rows
