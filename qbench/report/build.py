"""Reports: RD, BD-rate, mismatch and gradient tables (report.md) and plots (rd_*.png).

Built from ``results.csv`` alone (plus ``schedule.csv`` when present), so a
report can be rebuilt at any time, also for a half-finished run or a
results.csv from an older qbench with fewer columns. What cannot be computed
is said in the report, with the reason, and the rest is built.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from qbench.bdrate import DEFAULT_MIN_OVERLAP, BDRateError, bd_rate_checked
from qbench.registry import QbenchError
from qbench.results import ACCOUNTING, ID_COLUMNS, TAIL_COLUMNS, RunDir


@dataclass
class Report:
    summary: str
    bd_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


#: The rate and distortion axes of every RD table, plot and BD-rate (DESIGN.md's columns).
RD_COLUMNS = ("bpp", "psnr")
#: Columns a qbench row carries besides metric values.
BOOKKEEPING = (
    set(ID_COLUMNS)
    | set(TAIL_COLUMNS)
    | set(ACCOUNTING)
    | {"mode", "interp_weight", "origin", "order", "skipped"}
)
#: Statuses whose values enter the tables (``nonfinite`` rows are flagged in the notes).
USABLE = ("ok", "nonfinite")


def _separate_configurations(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Never average two configurations: a label with rows of several ``config_id`` (a run
    directory extended with ``--append``) becomes one label per configuration."""
    if "config_id" not in df.columns:
        return df
    df = df.copy()
    for (bb, ds, q), g in df.groupby(["backbone", "dataset", "quantizer"], sort=False):
        configs = list(dict.fromkeys(g["config_id"].astype(str)))
        if len(configs) < 2:
            continue
        for cfg in configs:
            rows = g.index[g["config_id"].astype(str) == cfg]
            df.loc[rows, "quantizer"] = f"{q}#{cfg[:6]}"
        notes.append(
            f"{q!r} ({bb}, {ds}) has rows of {len(configs)} configurations; they are shown "
            f"apart as {', '.join(f'{q}#{c[:6]}' for c in configs)}"
        )
    return df


def metric_columns(manifest: dict, df: pd.DataFrame) -> dict[str, list[str]]:
    """``{metric: its declared columns}`` from the manifest (what each metric plugin declared).

    A run directory without that record (an older qbench) gets every numeric
    column that is not bookkeeping, as one group ``other``.
    """
    declared = manifest.get("metric_columns")
    if isinstance(declared, dict) and declared:
        return {str(k): [str(c) for c in v] for k, v in declared.items()}
    other = [c for c in df.columns if c not in BOOKKEEPING and pd.api.types.is_numeric_dtype(df[c])]
    return {"other": other} if other else {}


def _md(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    if "interp_weight" in df.columns:  # -1 marks "not interpolated" for grouping only
        df = df.copy()
        df["interp_weight"] = (
            df["interp_weight"].astype(object).where(df["interp_weight"].astype(float) >= 0, None)
        )
    return tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=floatfmt)


def _t95(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def load_results(run_dir: Path) -> pd.DataFrame:
    """``results.csv`` of a run directory; rebuilt from ``rows/`` when it is missing."""
    path = Path(run_dir) / "results.csv"
    try:
        if path.exists():
            df = pd.read_csv(path)
        else:  # killed before its first merge: the rows are the results
            text = RunDir(run_dir).results_csv()
            if text.count("\n") < 2:
                raise QbenchError(f"{path}: no results.csv and no finished job in this directory")
            df = pd.read_csv(io.StringIO(text))
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise QbenchError(f"{path}: not a readable results table ({type(exc).__name__})") from exc
    for col in ("backbone", "quantizer", "lambda", "dataset", "seed", "status"):
        if col not in df.columns:
            raise QbenchError(f"{path}: column {col!r} is missing; not a qbench results file")
    return df


def _bd_over_seeds(
    ref: pd.DataFrame, test: pd.DataFrame, min_overlap: float, notes: list[str], where: str
) -> dict | None:
    """BD-rate of ``test`` against ``ref`` per seed (the reference's same seed, or all of it),
    then mean and 95% t-interval over seeds, smallest overlap and flags; None if no seed
    could be computed (the reason is in the notes)."""
    per_seed, overlaps, flags = [], [], set()
    for seed, sg in test.groupby("seed"):
        rg = ref[ref["seed"] == seed]
        if rg.empty:
            rg = ref
        try:
            res = bd_rate_checked(
                rg[["bpp", "psnr"]].values.tolist(),
                sg[["bpp", "psnr"]].values.tolist(),
                min_overlap=min_overlap,
            )
        except BDRateError as exc:
            notes.append(f"BD-rate ({where}, seed {seed}): not computed: {exc}")
            continue
        per_seed.append(res.value)
        overlaps.append(res.overlap)
        for flag in res.flags:
            flags.add("low overlap" if "overlap" in flag else "monotone subset")
            notes.append(f"BD-rate ({where}, seed {seed}) flagged: {flag}")
    if not per_seed:
        return None
    n = len(per_seed)
    half = _t95(n) * float(np.std(per_seed, ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return {
        "bd_rate_%": float(np.mean(per_seed)),
        "ci95_%": half,
        "seeds": n,
        "overlap_%": 100 * min(overlaps),
        "flag": ", ".join(sorted(flags)),
    }


def bd_table(
    ok: pd.DataFrame, anchor: str, notes: list[str], min_overlap: float = DEFAULT_MIN_OVERLAP
) -> list[dict]:
    """Per (backbone, dataset, quantizer): BD-rate vs the anchor, mean and 95% CI over seeds.

    Each cell carries the smallest overlap of the curves over its seeds and a
    ``flag`` when a seed's number rests on little overlap or on a curve's
    monotone subset (the reason is in the notes).
    """
    rows = []
    if "bpp" not in ok.columns or "psnr" not in ok.columns:
        notes.append("BD-rate: results have no bpp/psnr columns")
        return rows
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        if anchor not in set(grp["quantizer"]):
            notes.append(f"BD-rate ({bb}, {ds}): anchor {anchor!r} has no finished job")
            continue
        ref = grp[grp["quantizer"] == anchor]
        for q in grp["quantizer"].unique():
            cell = _bd_over_seeds(
                ref, grp[grp["quantizer"] == q], min_overlap, notes, f"{bb}, {ds}, {q}"
            )
            if cell is not None:
                rows.append({"backbone": bb, "dataset": ds, "quantizer": q, **cell})
    return rows


#: How the report names the jobs whose weights derive from other jobs (the ``mode`` column).
DERIVED_KINDS = {"refine": "derived", "interpolate": "interpolated"}


def _method_label(ok: pd.DataFrame, label: str) -> str:
    """The variable-rate method a derived or interpolated label belongs to: the derived
    (``refine``) label it goes back to through ``origin``, or its trained model."""
    seen = set()
    while label not in seen:
        seen.add(label)
        rows = ok[ok["quantizer"] == label]
        if rows.empty or rows["mode"].iloc[0] != "interpolate":
            return label
        label = str(rows["origin"].iloc[0]).split("@")[0]
    return label


def _anchor_rows(grp: pd.DataFrame, mine: pd.DataFrame) -> pd.DataFrame:
    """The trained model(s) a method's derived points start from (``origin = label@lambda``)."""
    origins = mine.loc[mine["mode"] == "refine", "origin"].dropna().astype(str).unique()
    parts = [o.rsplit("@", 1) for o in origins if "@" in o]
    keep = pd.Series(False, index=grp.index)
    for label, lam in parts:
        keep |= (
            (grp["quantizer"] == label)
            & (grp["mode"] == "train")
            & (np.isclose(grp["lambda"].astype(float), float(lam)))
        )
    return grp[keep]


def variable_rate_rows(
    ok: pd.DataFrame, anchor: str, notes: list[str], min_overlap: float = DEFAULT_MIN_OVERLAP
) -> list[dict]:
    """Each variable-rate method against the separately trained ``anchor`` models.

    A *method* is a derived (``refine``) label with the interpolations of it
    (``origin``); its curve is its derived points, its interpolated points,
    and both together. Per (backbone, dataset, method,
    points): BD-rate against the anchor's trained models (mean and 95%
    t-interval over seeds), the rate range covered (likelihood bpp) and the
    share of the trained models' range it spans, parameters trained and
    training seconds per rate (derived points; interpolation trains nothing),
    the anchor model's own training seconds (the model the derived points start
    from, paid once), and the real
    bitstream's overhead over the likelihood bpp.
    """
    if "mode" not in ok.columns or not ok["mode"].isin(list(DERIVED_KINDS)).any():
        return []
    out = []
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        ref = grp[(grp["quantizer"] == anchor) & (grp["mode"] == "train")]
        if ref.empty:
            notes.append(f"variable rate ({bb}, {ds}): no trained {anchor!r} model to compare with")
            continue
        lo_ref, hi_ref = float(ref["bpp"].min()), float(ref["bpp"].max())
        derived = grp[grp["mode"].isin(list(DERIVED_KINDS))]
        methods = {label: _method_label(ok, label) for label in derived["quantizer"].unique()}
        for method in dict.fromkeys(methods.values()):
            mine = derived[derived["quantizer"].map(methods) == method]
            root = _anchor_rows(grp, mine)
            # a blend at a = 0 or 1 is its derived model again: count each model once
            both = mine.drop_duplicates(subset=["seed", "bpp", "psnr"])
            for kind, pts in (
                ("derived", mine[mine["mode"] == "refine"]),
                ("interpolated", mine[mine["mode"] == "interpolate"]),
                ("all", both),
            ):
                if pts.empty or (kind == "all" and pts["mode"].nunique() < 2):
                    continue
                where = f"{bb}, {ds}, {method} {kind} vs trained {anchor}"
                cell = _bd_over_seeds(ref, pts, min_overlap, notes, where) or {
                    "bd_rate_%": math.nan,
                    "ci95_%": math.nan,
                    "seeds": 0,
                    "overlap_%": math.nan,
                    "flag": "not computed",
                }
                lo, hi = float(pts["bpp"].min()), float(pts["bpp"].max())
                span = max(0.0, min(hi, hi_ref) - max(lo, lo_ref)) / max(hi_ref - lo_ref, 1e-12)
                refined = pts[pts["mode"] == "refine"]
                overhead = math.nan
                if "bpp_bitstream" in pts.columns and pts["bpp_bitstream"].notna().any():
                    overhead = 100 * float((pts["bpp_bitstream"] / pts["bpp"] - 1).mean())
                out.append(
                    {
                        "backbone": bb,
                        "dataset": ds,
                        "method": method,
                        "points": kind,
                        "n": len(pts),
                        "bpp_min": lo,
                        "bpp_max": hi,
                        "covers_%": 100 * span,
                        **cell,
                        "params_per_rate": float(refined["trained_parameters"].mean())
                        if len(refined)
                        else 0.0,
                        "train_s_per_rate": float(refined["train_seconds"].mean())
                        if len(refined)
                        else 0.0,
                        "anchor_train_s": float(root["train_seconds"].mean())
                        if len(root)
                        else math.nan,
                        "bitstream_overhead_%": overhead,
                    }
                )
    return out


def _variable_rate_section(rows: list[dict], anchor: str) -> list[str]:
    if not rows:
        return []
    return [
        f"## Variable rate against separately trained models (`{anchor}`)",
        "",
        "Each method starts from one trained model (its anchor): *derived* points refine only "
        "the quantizer's parameters at each lambda (backbone frozen), *interpolated* points "
        f"blend two derived quantizers without training. BD-rate against the `{anchor}` models "
        "trained separately at every lambda (mean and 95% t-interval over seeds; negative = "
        "fewer bits); `covers_%`: share of the trained models' bpp range the points span; "
        "`params_per_rate` and `train_s_per_rate`: what one more rate costs (the anchor model's "
        "training, `anchor_train_s`, is paid once); `bitstream_overhead_%`: real bitstream bpp "
        "over likelihood bpp.",
        "",
        _md(pd.DataFrame(rows), ".3f"),
        "",
    ]


#: relative difference of the likelihood and bitstream bpp beyond which the report says so
RATE_GAP = 0.05


def rate_gaps(ok: pd.DataFrame) -> list[str]:
    """A note per curve whose likelihood bpp and real bitstream bpp differ by more than
    :data:`RATE_GAP` on average: there the likelihood is no proxy for the coded rate."""
    if "bpp" not in ok.columns or "bpp_bitstream" not in ok.columns or ok.empty:
        return []
    gap = ok["bpp_bitstream"] / ok["bpp"] - 1.0
    out = []
    for (bb, ds, q), g in gap.groupby([ok["backbone"], ok["dataset"], ok["quantizer"]]):
        mean = float(g.mean())
        if math.isfinite(mean) and abs(mean) > RATE_GAP:
            out.append(
                f"{bb}, {ds}, {q}: the real bitstream is {100 * mean:+.1f} % off the likelihood "
                f"bpp on average (more than {RATE_GAP:.0%}): read `bpp_bitstream` for its rate"
            )
    return out


def _reference_curves(manifest: dict, settings: dict, notes: list[str]) -> dict[str, list]:
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
    if not references or "bpp" not in ok.columns or "psnr" not in ok.columns:
        return rows
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        for curve in references.get(ds, []):
            ref = pd.DataFrame({"bpp": curve.bpp, "psnr": curve.psnr, "seed": -1})
            for q in grp["quantizer"].unique():
                where = f"{bb}, {ds}, {q} vs {curve.source.name}"
                cell = _bd_over_seeds(ref, grp[grp["quantizer"] == q], min_overlap, notes, where)
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


def bd_table_text(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, default=lambda v: None)
    return pd.DataFrame(rows).to_csv(index=False)


def _manifest(run_dir: Path, notes: list[str]) -> dict:
    """The run's manifest, or ``{}`` with a note when it is missing or unreadable."""
    path = run_dir / "manifest.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        notes.append(f"{path} is not readable JSON ({type(exc).__name__}); built without it")
        return {}


def write_report(
    run_dir: str | Path,
    anchor: str | None = None,
    write: bool = True,
    min_overlap: float | None = None,
) -> Report:
    """(Re)build report.md and the plots of a run directory (nothing written unless ``write``)."""
    run_dir = Path(run_dir)
    df = load_results(run_dir)
    notes: list[str] = []
    manifest = _manifest(run_dir, notes)
    df = _separate_configurations(df, notes)
    labels = list(dict.fromkeys(df["quantizer"]))
    settings = manifest.get("matrix", {}).get("report", {})
    if not anchor:
        anchor = settings.get("anchor") or (labels[0] if labels else "")
    if min_overlap is None:
        min_overlap = float(settings.get("min_overlap", DEFAULT_MIN_OVERLAP))
    if anchor not in labels:
        close = difflib.get_close_matches(anchor, labels, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise QbenchError(
            f"anchor {anchor!r} is not a quantizer label in this run{hint} "
            f"(labels: {', '.join(labels)})"
        )
    usable = df["status"].isin(USABLE)
    bad = df[~usable]
    ok = df[usable].copy()
    flagged = df[df["status"] != "ok"]
    for _, r in flagged.iterrows():
        notes.append(
            f"job {r.get('job_id', '?')} ({r['quantizer']}, lambda={r['lambda']}, "
            f"seed={r['seed']}): {r['status']}: {r.get('reason', '')}"
        )
    for col, what in (("skipped", "images skipped"), ("not_applicable", "not applicable")):
        if col in ok.columns:
            for (ds, text), _ in ok.groupby(["dataset", col], dropna=True):
                if str(text):
                    notes.append(f"{ds}: {what}: {text}")
    notes += rate_gaps(ok)
    n_flag = int((ok["status"] != "ok").sum()) if "status" in ok.columns else 0
    sections = [
        f"# qbench report: {run_dir.name}",
        "",
        f"{len(df)} jobs: {len(ok) - n_flag} ok, {n_flag} with non-finite values (included, "
        f"flagged below), {len(bad)} failed or diverged. "
        f"BD-rate anchor: `{anchor}` (PCHIP, negative = fewer bits than the anchor).",
        "",
    ]

    sections += _setup_section(manifest)
    sections += _quantizer_settings(df, manifest.get("quantizers") or {}, notes)
    declared = metric_columns(manifest, df)
    rd_cols = [c for c in RD_COLUMNS if c in ok.columns]
    keys = ["backbone", "dataset", "quantizer", "lambda"]
    if "interp_weight" in ok.columns and ok["interp_weight"].notna().any():
        keys.append("interp_weight")
        ok["interp_weight"] = ok["interp_weight"].fillna(-1.0)
    rd = pd.DataFrame()
    if rd_cols and not ok.empty:
        g = ok.groupby(keys, sort=False)[rd_cols]
        rd = g.mean().reset_index()
        std = g.std().reset_index()
        rd["seeds"] = g.size().values
        if "interp_weight" in rd.columns:
            rd["interp_weight"] = (
                rd["interp_weight"].astype(object).where(rd["interp_weight"] >= 0, None)
            )
        for c in rd_cols:
            rd[c + "_std"] = std[c].fillna(0.0)
        sections += [
            "## Rate-distortion points (mean and standard deviation over seeds)",
            "",
            _md(rd[keys + rd_cols + [c + "_std" for c in rd_cols] + ["seeds"]]),
            "",
        ]
    summary_table = _md(rd[keys + rd_cols]) if not rd.empty else "(no finished job)"

    vr_rows = variable_rate_rows(ok, anchor, notes, min_overlap)
    variable = _variable_rate_section(vr_rows, anchor)
    bd_rows = bd_table(ok, anchor, notes, min_overlap)
    if bd_rows:
        sections += [
            "## BD-rate against the anchor",
            "",
            f"Mean and 95% t-interval over seeds. `overlap_%`: the smallest common PSNR range "
            f"of the two curves over their union, across seeds; below {min_overlap:.0%} "
            "(`[report] min_overlap`) or on a curve's monotone subset the cell is flagged and "
            "the notes say why.",
            "",
            _md(pd.DataFrame(bd_rows), ".2f"),
            "",
        ]

    references = _reference_curves(manifest, settings, notes)
    ref_rows = reference_rows(ok, references, notes, min_overlap)
    if ref_rows:
        sections += [
            "## Against published curves",
            "",
            "BD-rate of each run curve against each published curve asked for in `[report] "
            "reference_curves` (the published curve is the anchor: negative = fewer bits); "
            "mean and 95% t-interval over seeds, overlap and flags as above. `psnr`: how the "
            "published PSNR was measured (`float`: reconstructions clamped in [0, 1], qbench's "
            "convention; `8bit`: decoded 8-bit images, at most a few hundredths of a dB below "
            "`float`).",
            "",
            _md(pd.DataFrame(ref_rows), ".2f"),
            "",
        ]
    sections += variable
    scheduled = [m for m in manifest.get("schedule_metrics", []) if m in declared]
    if not ok.empty and scheduled:
        sections += _schedule_section(
            ok, {m: declared[m] for m in scheduled}, notes, manifest.get("column_notes", {})
        )
    if not ok.empty:
        sections += ["## Metrics (mean over seeds)", ""]
        for metric, cols in declared.items():
            if metric in scheduled:
                continue
            present = [c for c in cols if c in ok.columns]
            if not present:
                notes.append(f"metric {metric!r}: results.csv has none of its columns {cols}")
                continue
            t = ok.groupby(keys, sort=False)[present].mean(numeric_only=True).reset_index()
            sections += [f"### `{metric}`", "", _md(t), ""]

    summary = summary_table
    if bd_rows:
        summary += "\n\n" + _md(pd.DataFrame(bd_rows), ".2f")
    if notes:
        summary += (
            f"\n\nnotes: {len(notes)} item(s) (not computed, flagged or skipped), see report.md"
        )
    if not write:
        return Report(summary, bd_rows, notes, [])
    try:
        plots = _plots(run_dir, rd, bd_rows, anchor, ok if vr_rows else None, references)
        if plots:
            sections += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
        if notes:
            sections += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        (run_dir / "report.md").write_text("\n".join(sections), encoding="utf-8")
    except OSError as exc:
        raise QbenchError(
            f"{run_dir}: cannot write the report ({exc.strerror or exc}); `qbench report "
            f"{run_dir} --format csv` prints the BD-rate table without writing"
        ) from exc
    return Report(summary, bd_rows, notes, plots)


def _setup_section(manifest: dict) -> list[str]:
    """What was trained, and from what: the backbone entries and the [train] settings.

    A backbone entry with a ``checkpoint`` (DESIGN.md's parameter for starting
    weights) is said to be the initialisation every job is fine-tuned from.
    """
    raw = manifest.get("matrix_file") or {}
    train = (manifest.get("matrix") or {}).get("train") or {}
    entries = (raw.get("matrix") or {}).get("backbones") or []
    if not entries and not train:
        return []
    lines = ["## Setup", ""]
    for entry in entries:
        if isinstance(entry, str):
            entry = {"name": entry}
        params = ", ".join(f"{k} = {v}" for k, v in entry.items() if k not in ("name", "label"))
        line = f"- backbone `{entry.get('label') or entry.get('name')}`: {entry.get('name')}"
        line += f" ({params})" if params else ""
        if entry.get("checkpoint"):
            line += (
                f"; **every job starts from the weights in `{entry['checkpoint']}`**: the "
                "models (with each quantizer) are fine-tuned from that shared initialisation, "
                "not trained from scratch"
            )
        lines.append(line)
    if train:
        keys = ("steps", "batch_size", "crop", "lr", "aux_lr", "clip_max_norm")
        shown = ", ".join(f"{k} = {train[k]}" for k in keys if k in train)
        dataset = (train.get("dataset") or {}).get("name", "?")
        lines.append(f"- training: {shown}, on `{dataset}`")
    return lines + [""]


def _quantizer_settings(df: pd.DataFrame, registered: dict, notes: list[str]) -> list[str]:
    """Each quantizer label's registered name and description (``registered``, from the
    manifest), then per backbone its recorded settings and Gaussian scale bound; an option
    that had nothing to act on (``idle``, a default: set explicitly it is refused) is said
    in the line and in the notes."""
    lines = [
        f"- `{label}`: `{q['name']}`, {q['description']}"
        for label, q in registered.items()
        if q.get("description")
    ]
    if "settings" not in df.columns:
        return ["## Quantizers", "", *lines, ""] if lines else []
    for (bb, label), g in df.groupby(["backbone", "quantizer"], sort=False):
        settings = sorted({str(v) for v in g["settings"].dropna() if str(v)})
        bounds = sorted({float(v) for v in g.get("scale_bound", pd.Series()).dropna()})
        idle = [" | ".join(sorted({str(v) for v in g.get("idle", pd.Series()).dropna() if str(v)}))]
        idle = [i for i in idle if i]
        line = f"- `{label}` on `{bb}`: " + (" | ".join(settings) or "no options")
        if bounds:
            line += "; Gaussian scale bound in training and coding: " + ", ".join(
                f"{b:g}" for b in bounds
            )
        clamped = sorted(
            {str(v) for v in g["settings"].dropna() if re.search(r"step_clamped=[1-9]", str(v))}
        )
        if clamped:
            notes.append(
                f"`{label}` on `{bb}`: a learned quantization step reached its minimum and was "
                f"clamped there in {len(clamped)} configuration(s) (settings: step_clamped)"
            )
        if idle:
            line += f"; **nothing to act on here: {idle[0]}**"
            notes.append(f"`{label}` on `{bb}`: defaults with nothing to act on: {idle[0]}")
        lines.append(line)
    return ["## Quantizers", "", *lines, ""] if lines else []


def _cell(row: pd.Series, col: str, marks: list[str], where: str, notes: list[str]) -> str:
    """``"0.123 [0.100, 0.146]"``; an exact value says so; a caveat gets a mark and a note."""
    value, note = row.get(col), row.get(f"{col}_note")
    note = "" if note is None or (isinstance(note, float) and math.isnan(note)) else str(note)
    if note.startswith("exact"):
        return f"{_num(value)} ({note})"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"not measured ({note})" if note else "not measured"
    text = f"{_num(value)} [{_num(row.get(f'{col}_lo'))}, {_num(row.get(f'{col}_hi'))}]"
    if note:
        marks.append(f"({len(marks) + 1}) {where}: {note}")
        text += f" ({len(marks)})"
    return text


def _negative(v) -> bool:
    return isinstance(v, float) and v < 0  # -1 marks "not interpolated"


def _num(v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "?"
    if math.isnan(v):
        return "?"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _schedule_section(
    ok: pd.DataFrame,
    metrics: dict[str, list[str]],
    notes: list[str],
    column_notes: dict[str, str],
) -> list[str]:
    """Training average and final state of each schedule statistic, with intervals (and,
    under each table, the metric's note on how to read the column)."""
    keys = ["backbone", "quantizer", "lambda"]
    if "interp_weight" in ok.columns and (ok["interp_weight"] >= 0).any():
        keys.append("interp_weight")
    if ok["seed"].nunique() > 1:
        keys.append("seed")
    per_model = ok.drop_duplicates(subset=["train_id"] if "train_id" in ok.columns else keys)
    out = [
        "## Statistics over the training schedule",
        "",
        "Measured at each `[eval] schedule` point of training on one fixed probe set of "
        "training crops, with one number of surrogate draws, and with the quantizers in the "
        "state they had at that point. *Training average*: the area under the schedule over "
        "its length; *final*: the state after training (t = 1), the one evaluated. Brackets: "
        "95 % interval over the probe batches (jackknife, Student t). A value that is zero "
        "by construction (a deterministic surrogate has no gradient variance; a surrogate "
        "equal to rounding has no mismatch) says so and is not a finding. Definitions, "
        "estimators and assumptions: docs/statistics.md.",
        "",
    ]
    for metric, cols in metrics.items():
        for col in cols:
            if col not in per_model.columns:
                notes.append(f"statistic {col!r} ({metric}): not in results.csv")
                continue
            marks: list[str] = []
            rows = []
            for _, r in per_model.iterrows():
                where = " ".join(
                    f"{k}={r[k]}" for k in keys if k != "backbone" and not _negative(r[k])
                )
                rows.append(
                    {
                        **{k: r[k] for k in keys},
                        "training average": _cell(r, f"{col}_avg", marks, where, notes),
                        "final": _cell(r, col, marks, where, notes),
                    }
                )
            t = pd.DataFrame(rows)
            if "interp_weight" in t.columns:
                t["interp_weight"] = t["interp_weight"].where(t["interp_weight"] >= 0, None)
            out += [f"### `{col}` ({metric})", ""]
            if column_notes.get(col):
                out += [column_notes[col], ""]
            out += [_md(t), ""]
            if marks:
                out += [f"- {m}" for m in marks] + [""]
    return out


def _plots(
    run_dir: Path,
    rd: pd.DataFrame,
    bd_rows: list[dict],
    anchor: str,
    variable: pd.DataFrame | None = None,
    references: dict | None = None,
) -> list[Path]:
    from qbench.report.plots import plot_bd, plot_rd, plot_schedule, plot_variable_rate

    # an RD plot needs both axes: a matrix may evaluate neither bpp nor psnr
    has_axes = not rd.empty and {"bpp", "psnr"} <= set(rd.columns)
    plots = plot_rd(rd, run_dir, references) if has_axes else []
    if bd_rows:
        plots += plot_bd(bd_rows, run_dir, anchor)
    if variable is not None:
        derived = variable[variable["mode"].isin(list(DERIVED_KINDS))]
        methods = {q: _method_label(variable, q) for q in derived["quantizer"].unique()}
        plots += plot_variable_rate(variable, methods, anchor, run_dir)
    sched = run_dir / "schedule.csv"
    if sched.exists() and sched.stat().st_size > 0:
        with contextlib.suppress(pd.errors.EmptyDataError):
            plots += plot_schedule(pd.read_csv(sched), run_dir)
    return plots
