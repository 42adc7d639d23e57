"""Does qbench reproduce the published numbers? ``qbench verify-zoo``.

Every backbone whose registration names a published curve of its pretrained
models (registration metadata ``reference = "compressai/<zoo name>"``) is
built with ``pretrained = Q`` for each quality, its quantizers set to the
contract's base :class:`qbench.Quantizer` (rounding at test time: what the zoo
models were evaluated with), evaluated on Kodak with qbench's own evaluation
(real bitstream, PSNR of the reconstruction clamped to [0, 1], per image then
averaged: the published files' convention), and compared with the published
point of that quality: bitstream bpp within ``bpp_tolerance`` (relative) and
PSNR within ``psnr_tolerance`` dB. The weights come through CompressAI's own
zoo loader and torch hub's cache; a quality whose weights cannot be had is
skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import qbench
from qbench.reference import load
from qbench.registry import QbenchError, Registry
from qbench.run.evaluate import evaluate

BPP_TOLERANCE = 0.01
PSNR_TOLERANCE = 0.05


@dataclass
class ZooCheck:
    """One (backbone, quality) comparison."""

    backbone: str
    quality: int
    verdict: str  # "ok", "FAIL" or "skipped"
    bpp: float = float("nan")
    bpp_published: float = float("nan")
    psnr: float = float("nan")
    psnr_published: float = float("nan")
    reason: str = ""


def verifiable(registry: Registry) -> dict[str, str]:
    """``{backbone name: reference curve}`` of the backbones that declare one."""
    return {
        e.name: e.metadata["reference"]
        for e in registry.entries("backbone")
        if e.metadata.get("reference")
    }


def verify_zoo(
    registry: Registry,
    kodak: Sequence,
    backbones: Sequence[str] | None = None,
    qualities: Sequence[int] | None = None,
    bpp_tolerance: float = BPP_TOLERANCE,
    psnr_tolerance: float = PSNR_TOLERANCE,
    reference_dir: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[ZooCheck]:
    """Compare each (backbone, quality) with its published point (see the module docstring).

    ``kodak`` is the dataset to evaluate on (the 24 Kodak images for the
    published numbers to apply).
    """
    known = verifiable(registry)
    names = list(backbones) if backbones else list(known)
    for name in names:
        if name not in known:
            raise QbenchError(
                f"backbone {name!r} declares no published curve to verify against "
                f"(these do: {', '.join(sorted(known))})"
            )
    images = [kodak[i] for i in range(len(kodak))]
    image_names = list(getattr(kodak, "names", [str(i) for i in range(len(images))]))
    metrics = [registry.build("metric", m) for m in ("bpp_bitstream", "psnr")]
    out = []
    for name in names:
        curve = load(known[name], reference_dir)
        wanted = qualities or range(1, len(curve.bpp) + 1)
        for q in wanted:
            check = ZooCheck(name, int(q), "skipped")
            out.append(check)
            if not 1 <= q <= len(curve.bpp):
                check.reason = f"the published curve has qualities 1..{len(curve.bpp)}"
                continue
            check.bpp_published, check.psnr_published = curve.bpp[q - 1], curve.psnr[q - 1]
            try:
                model = registry.build("backbone", name, pretrained=int(q))
            except Exception as exc:
                check.reason = f"weights not available: {type(exc).__name__}: {exc}"[:300]
                echo(f"{name} q={q}: skipped ({check.reason})")
                continue
            model.set_quantizers({latent: qbench.Quantizer() for latent in model.latents})
            averages, _ = evaluate(model, images, image_names, metrics)
            check.bpp, check.psnr = averages["bpp_bitstream"], averages["psnr"]
            rel = abs(check.bpp - check.bpp_published) / check.bpp_published
            dpsnr = abs(check.psnr - check.psnr_published)
            good = rel <= bpp_tolerance and dpsnr <= psnr_tolerance
            check.verdict = "ok" if good else "FAIL"
            if not good:
                check.reason = (
                    f"bpp off by {100 * rel:.2f} % (tolerance {100 * bpp_tolerance:g} %), "
                    f"PSNR off by {dpsnr:.3f} dB (tolerance {psnr_tolerance:g} dB)"
                )
            echo(
                f"{name} q={q}: {check.verdict} bpp {check.bpp:.4f} (published "
                f"{check.bpp_published:.4f}), PSNR {check.psnr:.3f} dB (published "
                f"{check.psnr_published:.3f})"
            )
    return out


def checks_table(checks: list[ZooCheck]) -> str:
    from tabulate import tabulate

    rows = [
        [
            c.backbone,
            c.quality,
            c.verdict,
            c.bpp,
            c.bpp_published,
            c.psnr,
            c.psnr_published,
            c.reason,
        ]
        for c in checks
    ]
    return tabulate(
        rows,
        headers=["backbone", "quality", "verdict", "bpp", "published", "psnr", "published", "why"],
        floatfmt=".4f",
    )
