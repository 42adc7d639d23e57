"""Does qbench reproduce the published numbers? ``qbench verify-zoo``'s second half.

Every backbone whose registration names a published curve of its pretrained
models (registration metadata ``reference = "compressai/<zoo name>"``) is
measured for each quality by :class:`qbench.run.zoo.ZooMeter` (qbench's own
evaluation on the dataset the curve was measured on: for CompressAI's curves
the 24 Kodak images, real bitstream, PSNR of the reconstruction clamped to
[0, 1], per image then averaged: the published files' convention) and
compared here with the published point of that quality: bitstream bpp within
``bpp_tolerance`` (relative) and PSNR within ``psnr_tolerance`` dB. A quality
whose weights cannot be had is skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qbench.reference import catalogue, load
from qbench.registry import QbenchError, Registry
from qbench.report.tables import BITSTREAM, DISTORTION

BPP_TOLERANCE = 0.01
PSNR_TOLERANCE = 0.05
#: the measured columns compared with a published point's bpp and PSNR (the metrics of the
#: same names measure them): the real bitstream's rate and the distortion
MEASURED = (BITSTREAM, DISTORTION)


@dataclass
class ZooCheck:
    """One (backbone, quality) comparison."""

    backbone: str
    quality: int
    verdict: str  # "ok", "FAIL" or "skipped" ("pending" until measured)
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


def _selected(registry: Registry, backbones: Sequence[str] | None) -> dict[str, str]:
    """``{backbone: reference curve}`` of ``backbones`` (default: every one that declares
    a curve); a backbone without one is an error naming those that have one."""
    known = verifiable(registry)
    names = list(backbones) if backbones else list(known)
    for name in names:
        if name not in known:
            raise QbenchError(
                f"backbone {name!r} declares no published curve to verify against "
                f"(these do: {', '.join(sorted(known))})"
            )
    return {name: known[name] for name in names}


def published_dataset(registry: Registry, backbones: Sequence[str] | None = None) -> str:
    """The dataset the published curves of ``backbones`` were measured on (the catalogue's);
    curves measured on several is an error asking for one."""
    _, sources = catalogue()
    curves = _selected(registry, backbones).values()
    on = sorted({sources[c].dataset for c in curves if c in sources})
    if len(on) != 1:
        raise QbenchError(
            f"the published curves were measured on {', '.join(on) or 'no known dataset'}: "
            "name the dataset to evaluate on (--dataset)"
        )
    return on[0]


def planned_checks(
    registry: Registry,
    backbones: Sequence[str] | None = None,
    qualities: Sequence[int] | None = None,
    reference_dir: str | None = None,
) -> list[ZooCheck]:
    """A check per (backbone, quality) with its published point (``pending``), or
    ``skipped`` with the reason when the curve has no such quality."""
    out = []
    for name, reference in _selected(registry, backbones).items():
        curve = load(reference, reference_dir)
        for q in qualities or range(1, len(curve.bpp) + 1):
            check = ZooCheck(name, int(q), "skipped")
            out.append(check)
            if not 1 <= q <= len(curve.bpp):
                check.reason = f"the published curve has qualities 1..{len(curve.bpp)}"
                continue
            check.verdict = "pending"
            check.bpp_published, check.psnr_published = curve.bpp[q - 1], curve.psnr[q - 1]
    return out


def unavailable(check: ZooCheck, why: str) -> str:
    """Mark ``check`` skipped for want of weights (``why``); the line to print."""
    check.verdict = "skipped"
    check.reason = f"weights not available: {why}"  # whole: it ends with what to do
    return f"{check.backbone} q={check.quality}: skipped ({check.reason})"


def judge(
    check: ZooCheck,
    measured: Mapping[str, float],
    bpp_tolerance: float = BPP_TOLERANCE,
    psnr_tolerance: float = PSNR_TOLERANCE,
) -> str:
    """Compare the ``measured`` averages (:data:`MEASURED` columns) with the published point;
    the verdict goes into ``check``, the line to print comes back."""
    rate, distortion = MEASURED
    check.bpp, check.psnr = measured[rate], measured[distortion]
    rel = abs(check.bpp - check.bpp_published) / check.bpp_published
    dpsnr = abs(check.psnr - check.psnr_published)
    good = rel <= bpp_tolerance and dpsnr <= psnr_tolerance
    check.verdict = "ok" if good else "FAIL"
    if not good:
        check.reason = (
            f"bpp off by {100 * rel:.2f} % (tolerance {100 * bpp_tolerance:g} %), "
            f"PSNR off by {dpsnr:.3f} dB (tolerance {psnr_tolerance:g} dB)"
        )
    return (
        f"{check.backbone} q={check.quality}: {check.verdict} bpp {check.bpp:.4f} (published "
        f"{check.bpp_published:.4f}), PSNR {check.psnr:.3f} dB (published "
        f"{check.psnr_published:.3f})"
    )


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
