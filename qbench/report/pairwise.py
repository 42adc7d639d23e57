"""Pairwise comparisons of a run's arms, seed by seed (the statistics: :mod:`qbench.report.paired`).

An *arm* is a quantizer label on one backbone: its RD curve on each dataset,
its schedule statistics. Two arms are compared seed by seed, arm B's seed ``s``
against arm A's seed ``s`` over the seeds both have, then over those seeds
(mean, 95 % t-interval, sign agreement, verdict or minimum detectable effect).

Which pairs (:func:`arm_pairs`): every label against the anchor; and two other
labels when their points are of one kind: blends (labels whose role
``extends_anchor``: interpolated points) with blends, the others (trained and
derived labels: a variable-rate method's derived curve) with each other. The
anchor is always the reference; otherwise the label that comes first in the
run is the arm and the later one the reference (``stanh vs qvrf``: stanh's
curve against qvrf's, negative = stanh needs fewer bits).

* BD-rate (:func:`pairwise_bd`): per (backbone, dataset), the BD-rate of the
  arm's curve of seed ``s`` against the reference's curve of seed ``s``.
* Statistics (:func:`pairwise_statistics`): per backbone (they are measured on
  the training probe set, not on an evaluation dataset), for the final value
  and the training average of each schedule statistic, the per-seed value is
  ``mean over the lambdas both arms have at seed s of (arm - reference)``.
"""

from __future__ import annotations

import math

import pandas as pd

from qbench.report.paired import (
    BD_WORDS,
    STATISTIC_WORDS,
    Paired,
    interval_text,
    paired,
    verdict_text,
)
from qbench.report.tables import basis, bd_per_seed, has

#: The two values of a schedule statistic a row carries: (name in the tables, column suffix).
STATISTIC_VALUES = (("final", ""), ("training average", "_avg"))


def arm_pairs(grp: pd.DataFrame, anchor: str) -> list[tuple[str, str]]:
    """``(arm, reference)`` pairs of the labels of ``grp`` (see the module): each label
    against the anchor first, then the others pairwise, in the run's order."""
    labels = list(dict.fromkeys(grp["quantizer"]))
    blend = {q: bool(has(grp[grp["quantizer"] == q], "extends_anchor").any()) for q in labels}
    pairs = [(q, anchor) for q in labels if q != anchor and anchor in labels]
    others = [q for q in labels if q != anchor]
    for i, a in enumerate(others):
        pairs += [(a, b) for b in others[i + 1 :] if blend[a] == blend[b]]
    return pairs


def _cells(p: Paired, fmt: str, unit: str) -> dict:
    """The columns every comparison shares: seeds, per-seed values, interval, agreement,
    verdict (with the minimum detectable effect when not resolved)."""
    return {
        "seeds": p.n,
        "per seed": ", ".join(f"{v:{fmt}}" for v in p.values),
        "ci95_seeds": interval_text(p, fmt),
        "agree": p.agreement(),
        "verdict": verdict_text(p, unit, fmt),
    }


def pairwise_bd(
    ok: pd.DataFrame, anchor: str, rate: str, min_overlap: float, notes: list[str]
) -> list[dict]:
    """Per (backbone, dataset) and pair of arms: the BD-rate of the arm's curve against the
    reference's on the rate column ``rate``, seed by seed, then over the seeds (mean
    ``bd_rate_%``, its interval, agreement, verdict). A pair with no seed computed is left
    out, and each seed not computed is said in ``notes``."""
    rows = []
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        for arm, ref in arm_pairs(grp, anchor):
            per = bd_per_seed(
                grp[grp["quantizer"] == ref], grp[grp["quantizer"] == arm], rate, min_overlap
            )
            where = f"{bb}, {ds}, {arm} vs {ref}, {basis(rate)} rate"
            notes += _failures(where, per.failed)
            if not per.results:
                continue
            p = paired(per.values(), BD_WORDS)
            cells = _cells(p, ".2f", " %")
            rows.append(
                {
                    "backbone": bb,
                    "dataset": ds,
                    "arm": arm,
                    "against": ref,
                    "bd_rate_%": p.mean,
                    **cells,
                    "flag": per.flags(),
                }
            )
    return rows


def _failures(where: str, failed: dict[int, str]) -> list[str]:
    """A note per reason a pair's seeds were not computed, naming the seeds."""
    seeds: dict[str, list[int]] = {}
    for seed, why in failed.items():
        seeds.setdefault(why, []).append(seed)
    return [
        f"paired BD-rate ({where}, seed{'s' if len(ss) > 1 else ''} "
        f"{', '.join(map(str, ss))}): not computed: {why}"
        for why, ss in seeds.items()
    ]


def _per_seed(grp: pd.DataFrame, label: str, column: str) -> dict[int, pd.Series]:
    """``{seed: the label's finite values of column, by lambda}`` on one backbone."""
    rows = grp[(grp["quantizer"] == label) & grp[column].notna()]
    out = {}
    for seed, g in rows.groupby("seed"):
        values = g.groupby("lambda")[column].mean()
        out[int(seed)] = values[values.map(math.isfinite)]
    return out


def _differences(grp: pd.DataFrame, arm: str, ref: str, column: str) -> tuple[list[float], int]:
    """Per seed both have, the mean over their common lambdas of ``arm - ref`` on
    ``column``; and the fewest common lambdas of a seed (0: nothing to compare)."""
    mine, theirs = _per_seed(grp, arm, column), _per_seed(grp, ref, column)
    values, points = [], []
    for seed in sorted(set(mine) & set(theirs)):
        common = mine[seed].index.intersection(theirs[seed].index)
        if len(common):
            values.append(float((mine[seed][common] - theirs[seed][common]).mean()))
            points.append(len(common))
    return values, min(points, default=0)


def pairwise_statistics(ok: pd.DataFrame, anchor: str, columns: list[str]) -> list[dict]:
    """Per backbone, schedule statistic (``columns``), its final value and training average,
    and pair of arms: ``arm - reference`` seed by seed (mean over the lambdas both have),
    then over the seeds. One row per trained model (``train_id``): a statistic does not
    depend on the evaluation dataset."""
    models = ok.drop_duplicates(subset=["train_id"]) if "train_id" in ok.columns else ok
    rows = []
    for bb, grp in models.groupby("backbone", sort=False):
        pairs = arm_pairs(grp, anchor)
        for col in columns:
            for value, suffix in STATISTIC_VALUES:
                if f"{col}{suffix}" not in grp.columns:
                    continue
                for arm, ref in pairs:
                    values, points = _differences(grp, arm, ref, f"{col}{suffix}")
                    if not values:
                        continue
                    p = paired(values, STATISTIC_WORDS)
                    head = {"backbone": bb, "statistic": col, "value": value}
                    pair = {"arm": arm, "against": ref, "lambdas": points}
                    rows.append({**head, **pair, "difference": p.mean, **_cells(p, ".3g", "")})
    return rows
