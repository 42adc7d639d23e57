"""Encoding-time refinement in the report: each refined arm against its plain arm.

A matrix with ``[eval] refine_latents`` evaluates the chosen entries' models twice:
as trained (the arm ``noise``) and with each image's latents refined before coding
(the arm ``noise+refine-sga``, whose rows name the plain arm in ``refined_of``). The
two share the model, so their seeds pair exactly; this section gives, per refined
arm, the refinement's settings, its time per image and the paired BD-rate against
the plain arm (from the paired comparisons the report computed). The schedule
statistics of a refined arm are its model's, measured in training: they are shown
for the plain arm only (:func:`plain_rows`).
"""

from __future__ import annotations

import pandas as pd

from qbench.report.tables import basis, md


def refined(ok: pd.DataFrame) -> pd.Series:
    """Which rows are of a refined arm (a non-empty ``refined_of``)."""
    if "refined_of" not in ok.columns:
        return pd.Series(False, index=ok.index)
    return ok["refined_of"].fillna("").astype(str) != ""


def plain_rows(ok: pd.DataFrame) -> pd.DataFrame:
    """The rows whose statistics were measured for them (not a refined twin's copies)."""
    return ok[~refined(ok)]


def refinement_section(ok: pd.DataFrame, paired_bd: list[dict], rate: str) -> list[str]:
    """The section (empty without refined arms): per refined arm on a backbone and dataset,
    its encoder, steps, learning rate, seconds per image (mean over its rows) and the
    paired BD-rate against its plain arm on ``rate``."""
    rows = ok[refined(ok)]
    if rows.empty:
        return []
    verdicts = {(r["backbone"], r["dataset"], r["arm"], r["against"]): r for r in paired_bd}
    table = []
    for (bb, ds, arm), g in rows.groupby(["backbone", "dataset", "quantizer"], sort=False):
        plain = str(g["refined_of"].iloc[0])
        pair = verdicts.get((bb, ds, arm, plain), {})
        table.append(
            {
                "backbone": bb,
                "dataset": ds,
                "arm": arm,
                "against": plain,
                "encoder": g["refine_quantizer"].iloc[0],
                "settings": str(g["refine_settings"].fillna("").iloc[0]),
                "steps": int(g["refine_steps"].iloc[0]),
                "lr": float(g["refine_lr"].iloc[0]),
                "s_per_image": float(g["refine_seconds_per_image"].mean()),
                "bd_rate_%": pair.get("bd_rate_%", float("nan")),
                "ci95_seeds": pair.get("ci95_seeds", ""),
                "verdict": pair.get("verdict", "not computed (see the notes)"),
                "flag": pair.get("flag", ""),
            }
        )
    return [
        f"## Encoding-time refinement (rate: {basis(rate)}, `{rate}`)",
        "",
        "The same trained models coded twice: as trained, and with each image's latents "
        "optimised before coding through the encoder's surrogate (`[eval] refine_latents`; "
        "Yang, Bamler & Mandt 2020). `bd_rate_%`: the refined arm's curve against the plain "
        "arm's, seed by seed (negative = fewer bits at equal PSNR); `s_per_image`: the "
        "refinement's seconds per image (mean over the rows); `flag`: as in the paired "
        "comparisons (low overlap: the refined curve shares little of the plain one's PSNR "
        "range, so the BD-rate extrapolates). The schedule statistics of a "
        "refined arm are its model's: the tables above show them for the plain arm only.",
        "",
        md(pd.DataFrame(table), ".3g"),
        "",
    ]
