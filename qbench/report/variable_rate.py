"""Variable rate: each method's derived and interpolated points against trained models.

A *method* is a derived label (its role is ``derived`` and does not
``extends_anchor``) together with the labels whose points extend it (blends
of its models, which name it as their ``anchor``). Which rows are which comes
from their :class:`~qbench.plan.recipes.Role` (column ``role``) and the
structured ``anchor`` / ``anchor_lambda`` columns the recipes write
(:meth:`~qbench.plan.recipes.Origin.columns`); nothing is parsed from the
``origin`` display column. A results.csv without those columns predates them:
the report says so and leaves the table out.
"""

from __future__ import annotations

import math

import pandas as pd

from qbench.bdrate import DEFAULT_MIN_OVERLAP
from qbench.plan.recipes import ROLES
from qbench.report.tables import (
    BITSTREAM,
    DISTORTION,
    LIKELIHOOD,
    basis,
    bd_over_seeds,
    has,
    of_role,
    rate_column,
    with_roles,
)

#: the columns that say which trained model a derived point starts from
ANCHOR_COLUMNS = ("anchor", "anchor_lambda")
#: every role of derived points, in the order the tables and plots show them
DERIVED_ROLES = tuple(role for role in ROLES.values() if role.derived)
#: a method's cell when no seed's BD-rate could be computed
NOT_COMPUTED = {
    "bd_rate_%": math.nan,
    "ci95_seeds_%": math.nan,
    "seeds": 0,
    "overlap_%": math.nan,
    "flag": "not computed",
}


def method_of(ok: pd.DataFrame, label: str) -> str:
    """The variable-rate method ``label`` belongs to: the label itself, or, for points that
    extend their anchor's method (``Role.extends_anchor``), their anchor's method."""
    seen = set()
    while label not in seen:
        seen.add(label)
        rows = ok[ok["quantizer"] == label]
        if rows.empty or not rows["role"].iloc[0].extends_anchor:
            return label
        label = str(rows["anchor"].iloc[0])
    return label


def methods(ok: pd.DataFrame) -> dict[str, str]:
    """``{derived label: its method}`` of every derived label of ``ok``."""
    derived = ok[has(ok, "derived")]
    return {label: method_of(ok, label) for label in derived["quantizer"].unique()}


def anchor_rows(grp: pd.DataFrame, mine: pd.DataFrame) -> pd.DataFrame:
    """The trained model(s) a method's refined points start from: the rows of ``grp`` of a
    trained ``anchor`` label at exactly the ``anchor_lambda`` the refined rows name."""
    starts = mine.loc[has(mine, "refined"), list(ANCHOR_COLUMNS)].dropna().drop_duplicates()
    trained = ~has(grp, "derived")
    keep = pd.Series(False, index=grp.index)
    for label, lam in starts.itertuples(index=False):
        keep |= (grp["quantizer"] == label) & trained & (grp["lambda"] == lam)
    return grp[keep]


def predates_anchors(ok: pd.DataFrame) -> str:
    """The note for a results.csv with derived points but without the anchor columns
    ('' when the table can be built)."""
    missing = [c for c in ANCHOR_COLUMNS if c not in ok.columns]
    if not missing or not has(ok, "derived").any():
        return ""
    return (
        f"variable rate: this run predates structured anchors (results.csv has no "
        f"{' or '.join(f'`{c}`' for c in missing)} column); re-run it with this qbench for the "
        "variable-rate table"
    )


def variable_rate_rows(
    ok: pd.DataFrame,
    anchor: str,
    notes: list[str],
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    rate: str | None = None,
) -> list[dict]:
    """Each variable-rate method against the separately trained ``anchor`` models.

    A method's curve is its derived points, its interpolated points, and both
    together (one kind per derived role, then ``all``). Per (backbone,
    dataset, method, points): BD-rate against the anchor's trained models on
    the rate column ``rate`` (None: :func:`~qbench.report.tables.rate_column`'s
    default), seed by seed, mean and 95 % t-interval over seeds, the
    likelihood rate's beside it; the rate range covered and the share of the
    trained models' range it spans, parameters
    trained and training seconds per rate (refined points; interpolation
    trains nothing), the anchor model's own training seconds (the model the
    refined points start from, paid once), and the real bitstream's overhead
    over the likelihood bpp. ``ok`` holds the rows with their roles
    (:func:`qbench.report.tables.load_results`).
    """
    if "role" not in ok.columns:
        ok = with_roles(ok)
    if ok.empty or not has(ok, "derived").any():
        return []
    rate = rate_column(ok, rate, notes)
    note = predates_anchors(ok)
    if note:
        notes.append(note)
        return []
    out = []
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        ref = grp[(grp["quantizer"] == anchor) & ~has(grp, "derived")]
        if ref.empty:
            notes.append(f"variable rate ({bb}, {ds}): no trained {anchor!r} model to compare with")
            continue
        derived = grp[has(grp, "derived")]
        labels = {label: method_of(ok, label) for label in derived["quantizer"].unique()}
        for method in dict.fromkeys(labels.values()):
            mine = derived[derived["quantizer"].map(labels) == method]
            head = {"backbone": bb, "dataset": ds, "method": method}
            root = anchor_rows(grp, mine)
            out += _method_rows(head, (ref, mine, root), anchor, notes, min_overlap, rate)
    return out


def _method_rows(
    head: dict,
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    anchor: str,
    notes: list[str],
    min_overlap: float,
    rate: str,
) -> list[dict]:
    """The rows of one method (``head``: its backbone, dataset, name; ``frames``: the
    anchor's trained rows, the method's rows, the model its refined points start from):
    one per kind of point it has (a derived role's points, then ``all`` of them when there
    are several kinds)."""
    ref, mine, root = frames
    # a blend at a = 0 or 1 is its derived model again (same lambda, same point): count each
    # model once, as derived (file sizes of two models can be equal where likelihoods differ)
    first = mine.assign(_blend=has(mine, "extends_anchor")).sort_values("_blend", kind="stable")
    both = first.drop_duplicates(subset=["seed", "lambda", rate, DISTORTION])
    both = both.drop(columns="_blend")
    kinds = [(role.noun, of_role(mine, role)) for role in DERIVED_ROLES] + [("all", both)]
    out = []
    for kind, pts in kinds:
        if pts.empty or (kind == "all" and pts["role"].nunique() < 2):
            continue
        where = f"{', '.join(map(str, head.values()))} {kind} vs trained {anchor}"
        cell = bd_over_seeds(ref, pts, min_overlap, notes, where, rate) or NOT_COMPUTED
        beside = cell
        if rate != LIKELIHOOD:  # its flags are the cell's; only what it could not compute
            scratch: list[str] = []
            beside = bd_over_seeds(ref, pts, min_overlap, scratch, where, LIKELIHOOD) or {}
            notes += [f"{n} (likelihood rate)" for n in scratch if "not computed" in n]
        likelihood = {
            "bd_rate_likelihood_%": beside.get("bd_rate_%", math.nan),
            "ci95_seeds_likelihood_%": beside.get("ci95_seeds_%", math.nan),
        }
        out.append(
            {
                **head,
                "points": kind,
                "n": len(pts),
                **_coverage(pts, ref, rate),
                "rate": basis(rate),
                **cell,
                **likelihood,
                **_costs(pts, root),
            }
        )
    return out


def _coverage(pts: pd.DataFrame, ref: pd.DataFrame, rate: str) -> dict:
    """The range of ``pts`` on the rate column ``rate`` and the share of the trained models'
    range it spans."""
    lo_ref, hi_ref = float(ref[rate].min()), float(ref[rate].max())
    lo, hi = float(pts[rate].min()), float(pts[rate].max())
    span = max(0.0, min(hi, hi_ref) - max(lo, lo_ref)) / max(hi_ref - lo_ref, 1e-12)
    return {f"{rate}_min": lo, f"{rate}_max": hi, "covers_%": 100 * span}


def _costs(pts: pd.DataFrame, root: pd.DataFrame) -> dict:
    """What one more rate costs (refined points), the anchor's training, the bitstream's
    overhead over the likelihood rate."""
    refined = pts[has(pts, "refined")]
    overhead = math.nan
    if BITSTREAM in pts.columns and pts[BITSTREAM].notna().any():
        overhead = 100 * float((pts[BITSTREAM] / pts[LIKELIHOOD] - 1).mean())
    return {
        "params_per_rate": float(refined["trained_parameters"].mean()) if len(refined) else 0.0,
        "train_s_per_rate": float(refined["train_seconds"].mean()) if len(refined) else 0.0,
        "anchor_train_s": float(root["train_seconds"].mean()) if len(root) else math.nan,
        "bitstream_overhead_%": overhead,
    }
