"""report.md of a run directory: its sections in order, the plots, the summary.

Built from ``results.csv`` alone (plus ``manifest.json`` and ``schedule.csv``
when present), so a report can be rebuilt at any time, also for a
half-finished run or a results.csv from an older qbench with fewer columns.
What cannot be computed is said in the report, with the reason, and the rest
is built.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qbench.bdrate import DEFAULT_MIN_OVERLAP
from qbench.registry import QbenchError
from qbench.report import sections
from qbench.report.declared import quantizer_notes
from qbench.report.pairwise import pairwise_bd, pairwise_statistics
from qbench.report.references import reference_curves, reference_rows
from qbench.report.refined import plain_rows, refinement_section
from qbench.report.tables import (
    LIKELIHOOD,
    RATES,
    RD_COLUMNS,
    USABLE,
    bd_table,
    has_rd_axes,
    load_results,
    md,
    metric_columns,
    rate_column,
    rate_gaps,
    rd_keys,
    rd_points,
    separate_configurations,
)
from qbench.report.training import collapsed_trainings
from qbench.report.variable_rate import methods, variable_rate_rows
from qbench.results import atomic_write_text


@dataclass
class Report:
    """What a report found: the summary printed, the BD-rate cells (computed, and not
    computed with their reason), the notes, the plots written, the rate column compared on,
    the paired comparisons (``{rate column: BD-rate rows}``, the statistics' rows) and the
    anchor."""

    summary: str
    bd_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    bd_missing: list[dict] = field(default_factory=list)
    rate: str = ""
    paired_bd: dict[str, list[dict]] = field(default_factory=dict)
    paired_statistics: list[dict] = field(default_factory=list)
    anchor: str = ""


@dataclass
class _Run:
    """What a report is built from: the rows (all, and the usable ``ok`` ones), the
    manifest, its ``[report]`` settings, the anchor, the overlap threshold and the rate
    column every comparison is on."""

    run_dir: Path
    df: pd.DataFrame
    ok: pd.DataFrame
    manifest: dict
    settings: dict
    anchor: str
    min_overlap: float
    rate: str
    collapsed: int = 0


@dataclass
class _Tables:
    """The tables the summary and the plots reuse."""

    keys: list[str]
    rd: pd.DataFrame
    bd_rows: list[dict]
    vr_rows: list[dict]
    references: dict
    bd_missing: list[dict] = field(default_factory=list)
    paired_bd: dict[str, list[dict]] = field(default_factory=dict)
    paired_statistics: list[dict] = field(default_factory=list)


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


def _anchor(anchor: str | None, settings: dict, labels: list[str]) -> str:
    """The BD-rate anchor: as given, else the matrix's, else the first label; it must be one."""
    if not anchor:
        anchor = settings.get("anchor") or (labels[0] if labels else "")
    if anchor not in labels:
        close = difflib.get_close_matches(anchor, labels, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise QbenchError(
            f"anchor {anchor!r} is not a quantizer label in this run{hint} "
            f"(labels: {', '.join(labels)})"
        )
    return anchor


def _job_notes(df: pd.DataFrame, ok: pd.DataFrame) -> list[str]:
    """Jobs not finished ``ok``, images skipped or not applicable, rate gaps."""
    notes = []
    for _, r in df[df["status"] != "ok"].iterrows():
        notes.append(
            f"job {r.get('job_id', '?')} ({r['quantizer']}, lambda={r['lambda']}, "
            f"seed={r['seed']}): {r['status']}: {r.get('reason', '')}"
        )
    for col, what in (("skipped", "images skipped"), ("not_applicable", "not applicable")):
        if col in ok.columns:
            for (ds, text), _ in ok.groupby(["dataset", col], dropna=True):
                if str(text):
                    notes.append(f"{ds}: {what}: {text}")
    return notes + rate_gaps(ok)


def _rate(
    asked: str | None, settings: dict, ok: pd.DataFrame, notes: list[str], where: Path
) -> str:
    """The rate column of every comparison: ``asked`` (``qbench report --rate``), else the
    matrix's ``[report] rate``, else bitstream; the bitstream of a run without bitstream
    values falls back to the likelihood, said in ``notes``
    (:func:`~qbench.report.tables.rate_column`)."""
    chosen = asked or settings.get("rate") or None
    if chosen is not None and chosen not in RATES:
        origin = "--rate" if asked else f"{where / 'manifest.json'}: matrix.report.rate"
        raise QbenchError(f"{origin}: expected one of {', '.join(RATES)}, got {chosen!r}")
    return rate_column(ok, chosen, notes)


def _read(
    run_dir: Path,
    anchor: str | None,
    min_overlap: float | None,
    notes: list[str],
    rate: str | None = None,
) -> _Run:
    """Load the run directory, resolve anchor, threshold and rate, note what the rows say."""
    warned: list[str] = []
    df = load_results(run_dir, warned)
    for line in warned:  # a file of the run directory not used as it is: said, never silently
        print(f"warning: {line}", file=sys.stderr)
    notes += warned
    manifest = _manifest(run_dir, notes)
    df = separate_configurations(df, notes)
    settings = manifest.get("matrix", {}).get("report", {})
    anchor = _anchor(anchor, settings, list(dict.fromkeys(df["quantizer"])))
    if min_overlap is None:
        min_overlap = float(settings.get("min_overlap", DEFAULT_MIN_OVERLAP))
    ok = df[df["status"].isin(USABLE)].copy()
    column = _rate(rate, settings, ok, notes, run_dir)
    notes += _job_notes(df, ok)
    said, collapsed = collapsed_trainings(run_dir, ok)
    notes += said
    return _Run(run_dir, df, ok, manifest, settings, anchor, min_overlap, column, collapsed)


def _header(run: _Run) -> list[str]:
    ok, df = run.ok, run.df
    flagged = int((ok["status"] != "ok").sum())
    bad = int((~df["status"].isin(USABLE)).sum())
    counts = (len(df), len(ok) - flagged, flagged, bad)
    return sections.header(run.run_dir.name, counts, run.anchor, run.rate, run.collapsed)


def _paired(run: _Run, statistics: list[str], notes: list[str]) -> tuple[dict, list[dict]]:
    """The paired comparisons: BD-rate on the report's rate (and on the likelihood beside
    it), and the schedule statistics ``statistics``."""
    rates = list(dict.fromkeys([run.rate, LIKELIHOOD]))
    bd = {
        r: pairwise_bd(run.ok, run.anchor, r, run.min_overlap, notes)
        for r in rates
        if has_rd_axes(run.ok, r)
    }
    return bd, pairwise_statistics(plain_rows(run.ok), run.anchor, statistics)


def _body(run: _Run, notes: list[str]) -> tuple[list[str], _Tables]:
    """Every section before the plots, in order (each adds its notes in that order)."""
    ok, manifest, rate = run.ok, run.manifest, run.rate
    lines = _header(run) + sections.setup_section(manifest)
    registered = manifest.get("quantizers") or {}
    lines += sections.quantizer_settings(run.df, registered, quantizer_notes(manifest), notes)
    keys = rd_keys(ok)
    if "interp_weight" in keys:  # -1: not a blend (groups need a value)
        ok["interp_weight"] = ok["interp_weight"].fillna(-1.0)
    rd = rd_points(ok, keys)
    lines += sections.rd_section(rd, keys)
    vr_rows = variable_rate_rows(ok, run.anchor, notes, run.min_overlap, rate)
    bd_missing: list[dict] = []
    bd_rows = bd_table(ok, run.anchor, notes, run.min_overlap, bd_missing, rate)
    lines += sections.bd_section(bd_rows, run.min_overlap, rate)
    references = reference_curves(manifest, run.settings, notes)
    ref_rows = reference_rows(ok, references, notes, run.min_overlap, rate)
    lines += sections.references_section(ref_rows, rate)
    lines += sections.variable_rate_section(vr_rows, run.anchor, rate)
    declared = metric_columns(manifest, run.df)
    scheduled = [m for m in manifest.get("schedule_metrics", []) if m in declared]
    column_notes = manifest.get("column_notes", {})
    measured = plain_rows(ok)  # a refined twin's statistics are its model's
    schedules = {m: declared[m] for m in scheduled}
    lines += sections.schedule_section(measured, schedules, notes, column_notes)
    paired_bd, paired_stats = _paired(run, [c for m in scheduled for c in declared[m]], notes)
    lines += sections.paired_section(paired_bd, paired_stats)
    lines += refinement_section(ok, paired_bd.get(rate, []), rate)
    rest = {m: cols for m, cols in declared.items() if m not in scheduled}
    lines += sections.metrics_section(ok, rest, keys, notes)
    tables = _Tables(keys, rd, bd_rows, vr_rows, references, bd_missing, paired_bd, paired_stats)
    return lines, tables


def _summary(run: _Run, tables: _Tables, notes: list[str]) -> str:
    """What ``qbench run`` and ``qbench report`` print: RD points, BD-rates, notes count."""
    rd = tables.rd
    rd_cols = [c for c in RD_COLUMNS if c in rd.columns]
    summary = md(rd[tables.keys + rd_cols]) if not rd.empty else "(no finished job)"
    if tables.bd_rows:
        summary += "\n\n" + md(sections.bd_frame(tables.bd_rows, run.rate), ".2f")
    if notes:
        summary += (
            f"\n\nnotes: {len(notes)} item(s) (not computed, flagged or skipped), see report.md"
        )
    return summary


def _plots(run: _Run, tables: _Tables) -> list[Path]:
    from qbench.report.plots import plot_bd, plot_rd, plot_schedule, plot_variable_rate

    run_dir, rd, rate = run.run_dir, tables.rd, run.rate
    # an RD plot needs both axes: a matrix may evaluate neither bpp nor psnr
    drawable = not rd.empty and has_rd_axes(rd, rate)
    plots = plot_rd(rd, run_dir, tables.references, rate) if drawable else []
    if tables.bd_rows:
        plots += plot_bd(tables.bd_rows, run_dir, run.anchor, rate)
    if tables.vr_rows:
        plots += plot_variable_rate(run.ok, methods(run.ok), run.anchor, run_dir, rate)
    sched = run_dir / "schedule.csv"
    if sched.exists() and sched.stat().st_size > 0:
        with contextlib.suppress(pd.errors.EmptyDataError):
            plots += plot_schedule(pd.read_csv(sched), run_dir)
    return plots


def write_report(
    run_dir: str | Path,
    anchor: str | None = None,
    write: bool = True,
    min_overlap: float | None = None,
    rate: str | None = None,
) -> Report:
    """(Re)build report.md and the plots of a run directory (nothing written unless
    ``write``). ``rate``: ``bitstream`` or ``likelihood``, the rate every BD-rate, table and
    plot is on (default: the matrix's ``[report] rate``, else bitstream; a run without
    bitstream values falls back to the likelihood, said in the notes)."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    run = _read(run_dir, anchor, min_overlap, notes, rate)
    lines, tables = _body(run, notes)
    summary = _summary(run, tables, notes)
    found = {
        "rate": run.rate,
        "paired_bd": tables.paired_bd,
        "paired_statistics": tables.paired_statistics,
        "anchor": run.anchor,
    }
    if not write:
        return Report(summary, tables.bd_rows, notes, [], tables.bd_missing, **found)
    try:
        plots = _plots(run, tables)
        lines += sections.closing_sections(plots, notes)
        atomic_write_text(run_dir / "report.md", "\n".join(lines))
    except OSError as exc:
        raise QbenchError(
            f"{run_dir}: cannot write the report ({exc.strerror or exc}); `qbench report "
            f"{run_dir} --format csv` prints the BD-rate table without writing"
        ) from exc
    return Report(summary, tables.bd_rows, notes, plots, tables.bd_missing, **found)
