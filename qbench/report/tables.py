"""The tables of a report: the results as read, their columns, and BD-rates.

Built from ``results.csv`` alone, so a table can be rebuilt at any time, also
for a half-finished run or a results.csv from an older qbench with fewer
columns. :func:`load_results` gives every row its :class:`~qbench.plan.recipes.Role`
(column ``role``, from the row's ``mode``) once, so no table compares mode
strings.
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from qbench.bdrate import DEFAULT_MIN_OVERLAP, BDRateError, BDResult, bd_rate_checked
from qbench.plan.recipes import TRAINED, Role, role_of
from qbench.registry import QbenchError
from qbench.report.paired import BD_WORDS, paired
from qbench.results import ACCOUNTING, ID_COLUMNS, TAIL_COLUMNS, RunDir

#: The likelihood rate: the ``bpp`` metric's column, the bits per pixel the entropy
#: model's likelihoods promise (no file is written).
LIKELIHOOD = "bpp"
#: The rate of the real bitstream: the ``bpp_bitstream`` metric's column, the size of the
#: file the entropy coder writes (what published curves measure).
BITSTREAM = "bpp_bitstream"
#: ``[report] rate``: each basis in words and its column. The report's tables, BD-rates and
#: plots are on one of them (:func:`rate_column`); the one place the report names them.
RATES = {"bitstream": BITSTREAM, "likelihood": LIKELIHOOD}
#: The basis the report compares on when ``[report] rate`` is not given.
DEFAULT_RATE = "bitstream"
#: The distortion axis: the ``psnr`` metric's column (dB, per image then averaged).
DISTORTION = "psnr"
#: The columns of an RD point: either rate, and the distortion.
RD_COLUMNS = (BITSTREAM, LIKELIHOOD, DISTORTION)
#: Columns a qbench row carries besides metric values (``role``: added by :func:`load_results`;
#: ``entry``: the quantizer label as the matrix wrote it, before configurations are separated).
BOOKKEEPING = (
    set(ID_COLUMNS)
    | set(TAIL_COLUMNS)
    | set(ACCOUNTING)
    | {"mode", "interp_weight", "origin", "anchor", "anchor_lambda", "order", "skipped"}
    | {"role", "entry"}
)
#: Statuses whose values enter the tables (``nonfinite`` rows are flagged in the notes).
USABLE = ("ok", "nonfinite")
#: Columns without which a file is no qbench results table.
REQUIRED = ("backbone", "quantizer", "lambda", "dataset", "seed", "status")


def load_results(run_dir: Path, warnings: list[str] | None = None) -> pd.DataFrame:
    """``results.csv`` of a run directory, each row with its :class:`Role` in column ``role``.

    It is rebuilt from ``rows/`` when it is missing, and, said in ``warnings``, when it
    holds no row or fewer rows than ``rows/`` or ends mid-line (truncated); a truncated file
    without ``rows/`` is read without its cut last line. A row file that is not a row is
    named in ``warnings`` too. Each warning is ``"<file>: what was done"``; with no list
    given they are printed to standard error as ``warning: ...`` lines.
    """
    said: list[str] = []
    try:
        df = _read_results(Path(run_dir), said)
    finally:
        if warnings is None:
            for line in said:
                print(f"warning: {line}", file=sys.stderr)
        else:
            warnings.extend(said)
    path = Path(run_dir) / "results.csv"
    for col in REQUIRED:
        if col not in df.columns:
            raise QbenchError(f"{path}: column {col!r} is missing; not a qbench results file")
    try:
        return with_roles(df)
    except ValueError as exc:
        raise QbenchError(f"{path}: {exc}") from exc


def _read_results(run_dir: Path, said: list[str]) -> pd.DataFrame:
    """The table of :func:`load_results` before its checks (``said``: its warnings)."""
    path = run_dir / "results.csv"
    run = RunDir(run_dir)
    rows = run.rows()
    said += [f"{w}; left out of the report" for w in run.unreadable]

    def rebuilt(why: str) -> pd.DataFrame:
        text = run.results_csv()
        if text.count("\n") < 2:
            raise QbenchError(f"{path}: {why}, and rows/ holds no finished job")
        if why != "missing":
            said.append(f"{path}: {why}; the report is built from rows/ instead")
        return pd.read_csv(io.StringIO(text))

    try:
        if not path.exists():  # killed before its first merge: the rows are the results
            return rebuilt("missing")
        text = path.read_bytes().decode("utf-8")
        lines = text.splitlines()
        if len(lines) < 2:
            return rebuilt("holds no row" + ("" if lines else " (an empty file)"))
        cut = not text.endswith("\n")
        df = pd.read_csv(io.StringIO("\n".join(lines[:-1]) + "\n" if cut else text))
        if len(df) < len(rows):
            how = "ends mid-line (truncated)" if cut else "holds fewer rows than rows/"
            return rebuilt(f"{how}: {len(df) + cut} row(s), rows/ has {len(rows)}")
        if cut and df.empty:
            raise QbenchError(f"{path}: ends mid-line (truncated) and holds no whole row")
        if cut:
            said.append(f"{path}: ends mid-line (truncated): its last line is left out")
        return df
    except OSError as exc:
        raise QbenchError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise QbenchError(f"{path}: not a readable results table ({type(exc).__name__})") from exc


def _role(mode: object) -> Role:
    # a row without a recipe record (an older qbench, a job that failed before its
    # weights were made) is taken as trained; only finished rows enter the tables
    return role_of(mode) if isinstance(mode, str) and mode else TRAINED


def with_roles(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with column ``role``: each row's :class:`Role`, from its ``mode`` column."""
    df = df.copy()
    modes = df["mode"] if "mode" in df.columns else pd.Series(None, index=df.index, dtype=object)
    df["role"] = modes.map(_role).astype(object)
    return df


def has(df: pd.DataFrame, flag: str) -> pd.Series:
    """Which rows' roles have the boolean ``flag`` (``derived``, ``refined``) set."""
    return df["role"].map(lambda role: bool(getattr(role, flag))).astype(bool)


def of_role(df: pd.DataFrame, role: Role) -> pd.DataFrame:
    """The rows of ``df`` whose role is ``role``."""
    return df[df["role"].map(lambda r: r == role).astype(bool)]


def separate_configurations(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Never average two configurations: a label with rows of several ``config_id`` (a run
    directory extended with ``--append``) becomes one label per configuration (column
    ``entry`` keeps the label the matrix gave)."""
    df = df.assign(entry=df["quantizer"])
    if "config_id" not in df.columns:
        return df
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


def md(df: pd.DataFrame, floatfmt: str = ".4f", numparse: bool = True) -> str:
    """A GitHub markdown table (``interp_weight`` -1, "not interpolated", shown empty);
    ``numparse`` false: text cells are shown as they are, never read as numbers."""
    if "interp_weight" in df.columns:  # -1 marks "not interpolated" for grouping only
        df = df.copy()
        df["interp_weight"] = (
            df["interp_weight"].astype(object).where(df["interp_weight"].astype(float) >= 0, None)
        )
    return tabulate(
        df,
        headers="keys",
        tablefmt="github",
        showindex=False,
        floatfmt=floatfmt,
        disable_numparse=not numparse,
    )


def basis(column: str) -> str:
    """The basis word of a rate column (``bitstream``, ``likelihood``)."""
    return {c: word for word, c in RATES.items()}.get(column, column)


def has_values(df: pd.DataFrame, column: str) -> bool:
    """Whether ``df`` has ``column`` with at least one value."""
    return column in df.columns and bool(df[column].notna().any())


def rate_column(ok: pd.DataFrame, rate: str | None, notes: list[str]) -> str:
    """The rate column a report compares on: that of ``rate`` (a basis of :data:`RATES` or
    a column; None: :data:`DEFAULT_RATE`). The bitstream asked of rows without any
    bitstream value falls back to the likelihood rate, said in ``notes``."""
    column = RATES.get(rate or DEFAULT_RATE, rate or "")
    if column not in RATES.values():
        raise QbenchError(f"rate {rate!r}: expected one of {', '.join(RATES)}")
    if column == BITSTREAM and not ok.empty and not has_values(ok, BITSTREAM):
        notes.append(
            f"rate: the real bitstream rate (`{BITSTREAM}`) was asked for (`[report] rate`), "
            f"but these results have no {BITSTREAM} value (the metric was not evaluated): "
            f"every BD-rate, table and plot uses the likelihood estimate (`{LIKELIHOOD}`) "
            "instead"
        )
        return LIKELIHOOD
    return column


@dataclass
class SeedBD:
    """The BD-rate of one curve against another, seed by seed: the results of the seeds
    computed and, for the others, why not (``{seed: reason}``)."""

    results: dict[int, BDResult] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def values(self) -> list[float]:
        """The BD-rates, in seed order."""
        return [self.results[s].value for s in sorted(self.results)]

    def flags(self) -> str:
        """What the cells rest on, in words: ``low overlap``, ``monotone subset``."""
        words = {
            "low overlap" if "overlap" in f else "monotone subset"
            for r in self.results.values()
            for f in r.flags
        }
        return ", ".join(sorted(words))


def bd_per_seed(ref: pd.DataFrame, test: pd.DataFrame, rate: str, min_overlap: float) -> SeedBD:
    """BD-rate of ``test`` against ``ref`` per seed on the rate column ``rate``: each seed of
    ``test`` against the same seed of ``ref`` only (a seed ``ref`` lacks is not computed);
    a ``ref`` without a ``seed`` column is one curve (a published one) for every seed."""
    out = SeedBD()
    for seed, sg in test.groupby("seed"):
        rg = ref[ref["seed"] == seed] if "seed" in ref.columns else ref
        if rg.empty:
            out.failed[int(seed)] = f"the reference has no seed {seed} (compared seed by seed)"
            continue
        try:
            out.results[int(seed)] = bd_rate_checked(
                rg[[rate, DISTORTION]].values.tolist(),
                sg[[rate, DISTORTION]].values.tolist(),
                min_overlap=min_overlap,
            )
        except BDRateError as exc:
            out.failed[int(seed)] = str(exc)
    return out


def bd_over_seeds(
    ref: pd.DataFrame,
    test: pd.DataFrame,
    min_overlap: float,
    notes: list[str],
    where: str,
    rate: str = BITSTREAM,
) -> dict | None:
    """BD-rate of ``test`` against ``ref`` per seed (:func:`bd_per_seed`), then the mean and
    95 % t-interval over seeds (``ci95_seeds_%``: the half-width,
    :func:`~qbench.report.paired.paired`), the smallest overlap and the flags; None if no
    seed could be computed. Every seed not computed and every flag is said in ``notes``."""
    per = bd_per_seed(ref, test, rate, min_overlap)
    for seed, why in per.failed.items():
        notes.append(f"BD-rate ({where}, seed {seed}): not computed: {why}")
    for seed, res in per.results.items():
        notes += [f"BD-rate ({where}, seed {seed}) flagged: {flag}" for flag in res.flags]
    if not per.results:
        return None
    summary = paired(per.values(), BD_WORDS)
    return {
        "bd_rate_%": summary.mean,
        "ci95_seeds_%": summary.half,
        "seeds": summary.n,
        "overlap_%": 100 * min(r.overlap for r in per.results.values()),
        "flag": per.flags(),
    }


def has_rd_axes(df: pd.DataFrame, rate: str = BITSTREAM) -> bool:
    """Whether ``df`` has the rate column ``rate`` and the distortion column."""
    return {rate, DISTORTION} <= set(df.columns)


#: The columns of ``qbench report --format csv|json``, computed cells and not computed ones:
#: ``rate`` names the basis of ``bd_rate_%`` and its interval over seeds; the likelihood
#: rate's figures are beside them (equal to them when ``rate`` is ``likelihood``).
BD_COLUMNS = (
    "backbone",
    "dataset",
    "quantizer",
    "rate",
    "bd_rate_%",
    "ci95_seeds_%",
    "seeds",
    "overlap_%",
    "flag",
    "bd_rate_likelihood_%",
    "ci95_seeds_likelihood_%",
    "reason",
)


def bd_table(
    ok: pd.DataFrame,
    anchor: str,
    notes: list[str],
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    missing: list[dict] | None = None,
    rate: str | None = None,
) -> list[dict]:
    """Per (backbone, dataset, quantizer): BD-rate vs the anchor on ``rate`` (a column or a
    basis; None: :func:`rate_column`'s default), mean and 95 % interval over seeds, with
    the likelihood rate's beside it (``bd_rate_likelihood_%``, ``ci95_seeds_likelihood_%``).

    Each cell carries the smallest overlap of the curves over its seeds and a
    ``flag`` when a seed's number rests on little overlap or on a curve's
    monotone subset (the reason is in the notes). Each cell that could not be
    computed is appended to ``missing`` (when given) with its ``reason``.
    """
    rate = rate_column(ok, rate, notes)
    rows = _bd_cells(ok, anchor, notes, min_overlap, missing, rate)
    if rate == LIKELIHOOD:
        beside = {id(r): r for r in rows}
    else:  # the likelihood figures: their flags are the main cells', their gaps said here
        scratch: list[str] = []
        cells = _bd_cells(ok, anchor, scratch, min_overlap, None, LIKELIHOOD)
        notes += [f"{n} (likelihood rate)" for n in scratch if "not computed" in n]
        by_key = {(r["backbone"], r["dataset"], r["quantizer"]): r for r in cells}
        beside = {id(r): by_key.get((r["backbone"], r["dataset"], r["quantizer"])) for r in rows}
    for row in rows:
        other = beside[id(row)] or {}
        row["bd_rate_likelihood_%"] = other.get("bd_rate_%", math.nan)
        row["ci95_seeds_likelihood_%"] = other.get("ci95_seeds_%", math.nan)
    return rows


def _bd_cells(
    ok: pd.DataFrame,
    anchor: str,
    notes: list[str],
    min_overlap: float,
    missing: list[dict] | None,
    rate: str,
) -> list[dict]:
    """The cells of :func:`bd_table` on one rate column (``rate`` in each)."""
    rows: list[dict] = []
    if not has_rd_axes(ok, rate):
        notes.append(f"BD-rate: results have no {rate}/{DISTORTION} columns")
        if missing is not None:
            missing.append({"rate": basis(rate), "reason": notes[-1]})
        return rows
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        where = {"backbone": bb, "dataset": ds}
        if anchor not in set(grp["quantizer"]):
            notes.append(f"BD-rate ({bb}, {ds}): anchor {anchor!r} has no finished job")
            for q in grp["quantizer"].unique() if missing is not None else ():
                missing.append({**where, "quantizer": q, "seeds": 0, "reason": notes[-1]})
            continue
        ref = grp[grp["quantizer"] == anchor]
        for q in grp["quantizer"].unique():
            before = len(notes)
            cell = bd_over_seeds(
                ref, grp[grp["quantizer"] == q], min_overlap, notes, f"{bb}, {ds}, {q}", rate
            )
            if cell is not None:
                rows.append({**where, "quantizer": q, "rate": basis(rate), **cell})
            elif missing is not None:
                reason = "; ".join(notes[before:])
                missing.append(
                    {**where, "quantizer": q, "rate": basis(rate), "seeds": 0, "reason": reason}
                )
    return rows


def rd_keys(ok: pd.DataFrame) -> list[str]:
    """The columns an RD point is one of: backbone, dataset, quantizer, lambda (and the
    blending weight when some rows are blends)."""
    keys = ["backbone", "dataset", "quantizer", "lambda"]
    if "interp_weight" in ok.columns and ok["interp_weight"].notna().any():
        keys.append("interp_weight")
    return keys


def rd_points(ok: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds of both rates and the distortion of every
    point (:data:`RD_COLUMNS`, those evaluated; ``keys``: :func:`rd_keys`;
    ``interp_weight`` filled with -1 where not a blend); empty when nothing finished or no
    axis was evaluated."""
    rd_cols = [c for c in RD_COLUMNS if c in ok.columns]
    if not rd_cols or ok.empty:
        return pd.DataFrame()
    g = ok.groupby(keys, sort=False)[rd_cols]
    rd = g.mean().reset_index()
    std = g.std().reset_index()
    rd["seeds"] = g.size().values
    if "interp_weight" in rd.columns:
        weight = rd["interp_weight"]
        rd["interp_weight"] = weight.astype(object).where(weight >= 0, None)
    for c in rd_cols:
        rd[c + "_std"] = std[c].fillna(0.0)
    return rd


def bd_table_text(rows: list[dict], fmt: str, missing: list[dict] | tuple = ()) -> str:
    """The BD-rate table as strict JSON (``fmt == "json"``: ``null``, never ``NaN``) or CSV,
    with its header always, and the cells not computed (``missing``) with their reason."""
    table = [{c: r.get(c) for c in BD_COLUMNS} for r in [*rows, *missing]]
    for row in table:
        row["reason"] = row["reason"] or ""
    if fmt == "json":
        return json.dumps(strict_json(table), indent=2, allow_nan=False)
    return pd.DataFrame(table, columns=list(BD_COLUMNS)).to_csv(index=False)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinities) as ``None``: JSON has no NaN,
    and only Python's parser reads the ``NaN`` that :func:`json.dumps` writes by default."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        return strict_json(value.item())
    return value


#: relative difference of the likelihood and bitstream bpp beyond which the report says so
RATE_GAP = 0.05


def rate_gaps(ok: pd.DataFrame) -> list[str]:
    """A note per curve whose likelihood bpp and real bitstream bpp differ by more than
    :data:`RATE_GAP` on average: there the likelihood is no proxy for the coded rate."""
    if LIKELIHOOD not in ok.columns or BITSTREAM not in ok.columns or ok.empty:
        return []
    gap = ok[BITSTREAM] / ok[LIKELIHOOD] - 1.0
    out = []
    for (bb, ds, q), g in gap.groupby([ok["backbone"], ok["dataset"], ok["quantizer"]]):
        mean = float(g.mean())
        if math.isfinite(mean) and abs(mean) > RATE_GAP:
            out.append(
                f"{bb}, {ds}, {q}: the real bitstream is {100 * mean:+.1f} % off the likelihood "
                f"{LIKELIHOOD} on average (more than {RATE_GAP:.0%}): there the likelihood "
                f"estimate is no proxy for the coded rate (`{BITSTREAM}`)"
            )
    return out
