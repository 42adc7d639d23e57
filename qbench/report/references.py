"""The run's curves against published ones (``[report] reference_curves``; the curves
themselves: :mod:`qbench.reference`)."""

from __future__ import annotations

import pandas as pd

from qbench.bdrate import DEFAULT_MIN_OVERLAP
from qbench.registry import QbenchError
from qbench.report.tables import DISTORTION, RATE, bd_over_seeds, has_rd_axes


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
) -> list[dict]:
    """Per (backbone, dataset, quantizer, published curve): the BD-rate of the run's curve
    against the published one, mean and 95% CI over seeds, with overlap and flags."""
    rows: list[dict] = []
    if not references or not has_rd_axes(ok):
        return rows
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        for curve in references.get(ds, []):
            ref = pd.DataFrame({RATE: curve.bpp, DISTORTION: curve.psnr, "seed": -1})
            for q in grp["quantizer"].unique():
                where = f"{bb}, {ds}, {q} vs {curve.source.name}"
                cell = bd_over_seeds(ref, grp[grp["quantizer"] == q], min_overlap, notes, where)
                if cell is not None:
                    rows.append(
                        {
                            "backbone": bb,
                            "dataset": ds,
                            "quantizer": q,
                            "published": curve.source.name,
                            "psnr": curve.source.psnr,
                            **cell,
                        }
                    )
    return rows
