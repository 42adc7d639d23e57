"""The run's curves against published ones (``[report] reference_curves``; the curves
themselves: :mod:`qbench.reference`)."""

from __future__ import annotations

import pandas as pd

from qbench.bdrate import DEFAULT_MIN_OVERLAP
from qbench.registry import QbenchError
from qbench.report.tables import DISTORTION, basis, bd_over_seeds, has_rd_axes, rate_column


def reference_curves(manifest: dict, settings: dict, notes: list[str]) -> dict[str, list]:
    """``{dataset label: [ReferenceCurve]}``: the curves the matrix asked for, on the
    datasets they were measured on (a curve not downloaded is said in the notes)."""
    from qbench.reference import catalogue, load

    names = settings.get("reference_curves") or []
    if not names:
        return {}
    _, sources = catalogue()
    labels = manifest.get("datasets") or {}
    out: dict[str, list] = {}
    for name in names:
        if name not in sources:
            notes.append(f"reference curve {name!r} is not in this qbench's catalogue")
            continue
        on = [label for label, ds in labels.items() if ds == sources[name].dataset]
        if not on:
            notes.append(
                f"reference curve {name!r} was measured on {sources[name].dataset!r}, which "
                "this run does not evaluate"
            )
            continue
        try:
            curve = load(name)
        except QbenchError as exc:
            notes.append(str(exc))
            continue
        for label in on:
            out.setdefault(label, []).append(curve)
    return out


def reference_rows(
    ok: pd.DataFrame,
    references: dict[str, list],
    notes: list[str],
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    rate: str | None = None,
) -> list[dict]:
    """Per (backbone, dataset, quantizer, published curve): the BD-rate of the run's curve
    on the rate column ``rate`` (None: :func:`~qbench.report.tables.rate_column`'s default,
    the bitstream, as the published curves measure) against the published one, each seed
    against the one published curve, then mean and 95 % interval over seeds, with overlap
    and flags."""
    rows: list[dict] = []
    if not references:
        return rows
    rate = rate_column(ok, rate, notes)
    if not has_rd_axes(ok, rate):
        return rows
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        for curve in references.get(ds, []):
            ref = pd.DataFrame({rate: curve.bpp, DISTORTION: curve.psnr})  # one curve, no seed
            for q in grp["quantizer"].unique():
                where = f"{bb}, {ds}, {q} vs {curve.source.name}"
                test = grp[grp["quantizer"] == q]
                cell = bd_over_seeds(ref, test, min_overlap, notes, where, rate)
                if cell is not None:
                    rows.append(
                        {
                            "backbone": bb,
                            "dataset": ds,
                            "quantizer": q,
                            "published": curve.source.name,
                            "psnr": curve.source.psnr,
                            "rate": basis(rate),
                            **cell,
                        }
                    )
    return rows
