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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qbench.analysis import isolated_rng
from qbench.backbone import Backbone
from qbench.metric import ImageEval, JobEval, Metric
from qbench.plan.configs import EvalConfig
from qbench.registry import QbenchError


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


def _count(counts: dict[str, int], n: int) -> str:
    """``"psnr 1/24; ms_ssim 24/24"`` for ``{column: count}`` over ``n`` images."""
    return "; ".join(f"{c} {k}/{n}" for c, k in counts.items() if k)


def _aggregate(metrics: Sequence[Metric], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce each metric's per-image columns as it declares (``Metric.aggregate``).

    A value of ``None`` means "not applicable to this image" (MS-SSIM of an
    image too small for its five scales) and a NaN or infinite value a failed
    computation; neither enters the mean, and both are counted in the
    ``not_applicable`` and ``nonfinite`` columns, so a row says what each
    average is over.
    """
    out: dict[str, Any] = {}
    nonfinite: dict[str, int] = {}
    missing: dict[str, int] = {}
    for metric in metrics:
        how = metric.aggregate
        for col in metric.columns:
            values = [r[col] for r in rows if col in r]
            if not values:
                continue
            present = [float(v) for v in values if v is not None]
            missing[col] = len(values) - len(present)
            finite = [v for v in present if math.isfinite(v)]
            nonfinite[col] = len(present) - len(finite)
            if how.get(col) == "all":
                out[col] = float(all(bool(v) for v in present)) if present else float("nan")
            else:
                out[col] = sum(finite) / len(finite) if finite else float("nan")
    out["images"] = len(rows)
    out["nonfinite"] = _count(nonfinite, len(rows))
    out["not_applicable"] = _count(missing, len(rows))
    return out


def evaluate_image(model: Backbone, x: Tensor, name: str, refiner=None) -> ImageEval:
    """Forward pass and real bitstream round trip of one image (``3 x H x W`` or batched);
    with a ``refiner`` (:class:`qbench.run.refine.LatentRefiner`) the latents it refines
    are the ones the forward pass and the coder see."""
    if x.dim() == 3:
        x = x[None]
    device = next(model.parameters()).device
    x = x.to(device)
    xp, pad = pad_to(x, model.multiple)
    latents = refiner(model, xp, x, lambda t: crop_back(t, pad)) if refiner else None
    with torch.no_grad():
        return _coded(model, x, xp, pad, name, latents)


def _coded(model, x, xp, pad, name, latents) -> ImageEval:
    """The eval forward and the real bitstream of ``xp`` (from ``latents`` when given)."""
    out = model(xp) if latents is None else model.forward_latents(latents)
    x_hat = crop_back(out["x_hat"], pad).clamp(0, 1)
    enc = model.compress(xp) if latents is None else model.compress_latents(latents)
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
    refiner: Any = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate ``model`` on ``images``; return ``(averages, per-image rows)``.

    ``averages`` holds each metric column and the :data:`ACCOUNTING` columns. With a
    ``refiner`` every image's latents are refined before they are coded.
    """
    model.eval()
    model.update(force=True)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for x, name in zip(images, names):
        ev = evaluate_image(model, x, name, refiner)
        row: dict[str, Any] = {"image": name}
        for metric in metrics:
            row.update(metric.per_image(ev))
            model.eval()
        rows.append(row)
    averages = _aggregate(metrics, rows)
    if job_eval is not None:
        failed = []
        for metric in metrics:
            values = metric.per_job(job_eval)
            model.eval()
            failed += [c for c, v in values.items() if v is not None and not math.isfinite(v)]
            averages.update({c: float("nan") if v is None else v for c, v in values.items()})
        if failed:
            job_level = "; ".join(f"{c} (per job)" for c in failed)
            averages["nonfinite"] = "; ".join(x for x in (averages["nonfinite"], job_level) if x)
    averages["eval_seconds"] = time.perf_counter() - start
    return averages, rows


def select_images(ds: Any, config: EvalConfig) -> tuple[list[int], list[str]]:
    """``(indices, skipped)``: the dataset's first ``[eval] max_images`` images (all when 0)
    that have at most ``max_pixels`` pixels, and why the others (and any the dataset itself
    skipped) are not evaluated. Sizes come from the images' headers where the dataset knows
    them (:func:`qbench.images.image_size`), so an image left out is never decoded."""
    from qbench.images import image_size

    n = config.max_images or len(ds)
    skipped = [why for _, why in getattr(ds, "skipped", [])]
    idx = []
    for i in range(min(n, len(ds))):
        h, w = image_size(ds, i)
        if h * w > config.max_pixels:
            skipped.append(
                f"{ds.names[i]}: {w}x{h} is {h * w / 1e6:.1f} MP, more than [eval] "
                f"max_pixels = {config.max_pixels} ({config.max_pixels / 1e6:.1f} MP)"
            )
        else:
            idx.append(i)
    return idx, skipped


def evaluate_dataset(
    model: Backbone,
    ds: Any,
    label: str,
    metrics: Sequence[Metric],
    job_eval: JobEval,
    config: EvalConfig,
    device: torch.device,
    refiner: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Evaluate ``model`` on the selected images of dataset ``ds`` (called ``label``);
    ``(averages, per-image rows, skipped)``, on an RNG stream of its own (a dataset's rows do
    not depend on the datasets evaluated before it)."""
    idx, skipped = select_images(ds, config)
    if not idx:
        raise QbenchError(f"no image of {label!r} to evaluate: {skipped}")
    images, names = [ds[i] for i in idx], [ds.names[i] for i in idx]
    with isolated_rng(device):
        averages, per_image = evaluate(
            model, images, names, metrics, job_eval=job_eval, refiner=refiner
        )
    return averages, per_image, skipped
