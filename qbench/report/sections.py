"""The markdown sections of report.md, each a list of lines (empty: the section is left out).

Every section takes what it shows (tables already computed, the manifest) and
adds what it could not show to ``notes``; :mod:`qbench.report.document`
puts them in order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from qbench.report.paired import LEVEL, ONE_SEED, paired
from qbench.report.tables import BITSTREAM, LIKELIHOOD, RD_COLUMNS, basis, md
from qbench.report.training import LOSS_RISE
from qbench.report.variable_rate import DERIVED_ROLES


def rate_words(rate: str) -> str:
    """The rate column ``rate`` in words, as every table heading says it."""
    if rate == BITSTREAM:
        return f"the real bitstream's bpp (`{BITSTREAM}`)"
    return f"the likelihood estimate of the bpp (`{LIKELIHOOD}`)"


def header(
    run_name: str,
    counts: tuple[int, int, int, int],
    anchor: str,
    rate: str = BITSTREAM,
    collapsed: int = 0,
) -> list[str]:
    """The title, the job counts ``(jobs, ok, with non-finite values, failed)``, the
    trainings that collapsed without a non-finite value (said when there are any:
    :mod:`qbench.report.training`), the anchor and the rate every comparison is on."""
    total, good, flagged, bad = counts
    rose = (
        f" Of the ok jobs, {collapsed} collapsed in training (the loss ended over "
        f"{LOSS_RISE:g} times its start; included, flagged below)."
        if collapsed
        else ""
    )
    return [
        f"# qbench report: {run_name}",
        "",
        f"{total} jobs: {good} ok, {flagged} with non-finite values (included, "
        f"flagged below), {bad} failed or diverged.{rose} "
        f"BD-rate anchor: `{anchor}` (PCHIP, negative = fewer bits than the anchor). "
        f"Rate of every BD-rate, comparison and plot: {rate_words(rate)} (`[report] rate`).",
        "",
    ]


def setup_section(manifest: dict) -> list[str]:
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


def _texts(g: pd.DataFrame, col: str) -> list[str]:
    """The distinct non-empty texts of column ``col`` of ``g``, sorted (none if absent)."""
    return sorted({str(v) for v in g.get(col, pd.Series()).dropna() if str(v)})


def _recorded(text: str) -> dict[str, str]:
    """A row's ``settings`` column (``"k=v; k=v"``, as the worker writes it) as a mapping."""
    parts = (part.partition("=") for part in text.split("; "))
    return {k.strip(): v.strip() for k, sep, v in parts if sep}


def _nonzero(value: str) -> bool:
    try:
        return float(value) != 0
    except ValueError:
        return value.lower() not in ("", "false", "none")


def _declared_notes(where: str, settings: list[str], declared: Mapping[str, str]) -> list[str]:
    """A note per setting the quantizer declares (``Quantizer.report_notes``) that is non-zero
    in some of ``settings`` (the distinct settings texts of a label on a backbone)."""
    out = []
    for key, meaning in declared.items():
        hits = [s for s in settings if _nonzero(_recorded(s).get(key, "0"))]
        if hits:
            out.append(f"{where}: {meaning} in {len(hits)} configuration(s) (settings: {key})")
    return out


def _quantizer_line(g: pd.DataFrame, where: str, declared: Mapping, notes: list[str]) -> str:
    """One label on one backbone: its recorded settings, scale bound, idle defaults and what
    it has reduced to at the end of training (column ``final_form``)."""
    settings = _texts(g, "settings")
    bounds = sorted({float(v) for v in g.get("scale_bound", pd.Series()).dropna()})
    idle = " | ".join(_texts(g, "idle"))
    line = f"- {where}: " + (" | ".join(settings) or "no options")
    if bounds:
        line += "; Gaussian scale bound in training and coding: " + ", ".join(
            f"{b:g}" for b in bounds
        )
    notes += _declared_notes(where, settings, declared)
    if idle:
        line += f"; **nothing to act on here: {idle}**"
        notes.append(f"{where}: defaults with nothing to act on: {idle}")
    final = " | ".join(_texts(g, "final_form"))
    if final:
        line += f"; **at the end of training (t = 1) it is {final}**"
        notes.append(
            f"{where}: at the end of training (t = 1) the surrogate is {final}: the statistics "
            "of its final state (the `final` columns) describe that surrogate, not its "
            "annealing; the training average covers the schedule"
        )
    return line


def quantizer_settings(
    df: pd.DataFrame, registered: dict, declared: dict[str, Mapping], notes: list[str]
) -> list[str]:
    """Each quantizer label's registered name and description (``registered``, from the
    manifest), then per backbone its recorded settings and Gaussian scale bound. An option
    that had nothing to act on (``idle``, a default: set explicitly it is refused) and each
    setting the quantizer declares worth a note (``declared``: ``{label: report_notes}``)
    are said in the notes."""
    lines = [
        f"- `{label}`: `{q['name']}`, {q['description']}"
        for label, q in registered.items()
        if q.get("description")
    ]
    if "settings" in df.columns:
        if "entry" not in df.columns:
            df = df.assign(entry=df["quantizer"])
        for (bb, label, entry), g in df.groupby(["backbone", "quantizer", "entry"], sort=False):
            where = f"`{label}` on `{bb}`"
            lines.append(_quantizer_line(g, where, declared.get(entry, {}), notes))
    return ["## Quantizers", "", *lines, ""] if lines else []


def rd_section(rd: pd.DataFrame, keys: list[str]) -> list[str]:
    """The RD points (:func:`~qbench.report.tables.rd_points`): mean and standard deviation
    over seeds of both rates (those evaluated) and the PSNR."""
    if rd.empty:
        return []
    rd_cols = [c for c in RD_COLUMNS if c in rd.columns]
    shown = keys + rd_cols + [c + "_std" for c in rd_cols] + ["seeds"]
    return [
        "## Rate-distortion points (mean and standard deviation over seeds)",
        "",
        f"`{BITSTREAM}`: the real bitstream's bits per pixel (the coded file); `{LIKELIHOOD}`: "
        "the likelihood estimate of the entropy model; `_std`: standard deviation over seeds "
        "(training), a description of each arm, not a comparison.",
        "",
        md(rd[shown]),
        "",
    ]


def bd_frame(rows: list[dict], rate: str) -> pd.DataFrame:
    """BD-rate rows as a report table shows them: the figures' columns named after their
    rate (``bd_rate_bitstream_%``, ``ci95_seeds_bitstream_%``), the likelihood rate's
    beside them when the table is on the bitstream, no ``rate`` column; a cell of one seed
    says :data:`~qbench.report.paired.ONE_SEED` instead of an interval."""
    df = pd.DataFrame(rows).drop(columns=["rate"], errors="ignore")
    if rate == LIKELIHOOD:
        df = df.drop(columns=["bd_rate_likelihood_%", "ci95_seeds_likelihood_%"], errors="ignore")
    one = df["seeds"] == 1  # no interval over training: said, not shown as nan
    for col in ("ci95_seeds_%", "ci95_seeds_likelihood_%"):
        if col in df.columns and one.any():
            df[col] = df[col].astype(object).where(~one, ONE_SEED)
    word = basis(rate)
    return df.rename(
        columns={"bd_rate_%": f"bd_rate_{word}_%", "ci95_seeds_%": f"ci95_seeds_{word}_%"}
    )


def bd_section(bd_rows: list[dict], min_overlap: float, rate: str = BITSTREAM) -> list[str]:
    """The BD-rate of every curve against the anchor's, on ``rate`` (the likelihood beside)."""
    if not bd_rows:
        return []
    beside = (
        " The likelihood rate's BD-rate and interval are beside them "
        "(`bd_rate_likelihood_%`, `ci95_seeds_likelihood_%`)."
        if rate != LIKELIHOOD
        else ""
    )
    return [
        f"## BD-rate against the anchor (rate: {basis(rate)}, `{rate}`)",
        "",
        "Each seed's curve against the anchor's curve of the same seed, then the mean and "
        f"`ci95_seeds_{basis(rate)}_%`: the half-width of the 95 % t-interval over seeds "
        "(training). `overlap_%`: the smallest common PSNR range of the two curves over their "
        f"union, across seeds; below {min_overlap:.0%} (`[report] min_overlap`) or on a "
        "curve's monotone subset the cell is flagged and the notes say why." + beside + " "
        "Verdicts, and the comparisons of the arms with each other: *Paired comparisons* below.",
        "",
        md(bd_frame(bd_rows, rate), ".2f"),
        "",
    ]


def references_section(ref_rows: list[dict], rate: str = BITSTREAM) -> list[str]:
    """The BD-rate of every curve against each published curve asked for."""
    if not ref_rows:
        return []
    caveat = (
        ""
        if rate == BITSTREAM
        else " **The run's rate here is the likelihood estimate while the published curves "
        "measure real files**: the BD-rates mix the two."
    )
    return [
        f"## Against published curves (rate: {basis(rate)}, `{rate}`)",
        "",
        "BD-rate of each run curve against each published curve asked for in `[report] "
        "reference_curves` (the published curve is the anchor: negative = fewer bits; its "
        "rates are the sizes of real files)" + caveat + " Mean and half-width of the 95 % "
        "t-interval over the run's seeds, overlap and flags as above. `psnr`: how the "
        "published PSNR was measured (`float`: reconstructions clamped in [0, 1], qbench's "
        "convention; `8bit`: decoded 8-bit images, at most a few hundredths of a dB below "
        "`float`).",
        "",
        md(bd_frame(ref_rows, rate), ".2f"),
        "",
    ]


def variable_rate_section(rows: list[dict], anchor: str, rate: str = BITSTREAM) -> list[str]:
    """The variable-rate table; each derived role says what its points are (``Role.meaning``)."""
    if not rows:
        return []
    kinds = ", ".join(f"*{role.noun}* points {role.meaning}" for role in DERIVED_ROLES)
    return [
        f"## Variable rate against separately trained models (`{anchor}`; rate: "
        f"{basis(rate)}, `{rate}`)",
        "",
        f"Each method starts from one trained model (its anchor): {kinds}. BD-rate against "
        f"the `{anchor}` models trained separately at every lambda, seed by seed (mean and "
        "half-width of the 95 % t-interval over seeds; negative = fewer bits); the methods "
        "against each other: *Paired comparisons* below. "
        f"`{rate}_min`, `{rate}_max`: the rate range of the points; `covers_%`: share of "
        "the trained models' range the points span; `params_per_rate` and "
        "`train_s_per_rate`: what one more rate costs (the anchor model's training, "
        "`anchor_train_s`, is paid once); `bitstream_overhead_%`: real bitstream bpp over "
        "likelihood bpp.",
        "",
        md(bd_frame(rows, rate), ".3f"),
        "",
    ]


def metrics_section(
    ok: pd.DataFrame, declared: dict[str, list[str]], keys: list[str], notes: list[str]
) -> list[str]:
    """A table per metric (``declared``: ``{metric: columns}``), mean over seeds."""
    if ok.empty:
        return []
    out = ["## Metrics (mean over seeds)", ""]
    for metric, cols in declared.items():
        present = [c for c in cols if c in ok.columns]
        if not present:
            notes.append(f"metric {metric!r}: results.csv has none of its columns {cols}")
            continue
        t = ok.groupby(keys, sort=False)[present].mean(numeric_only=True).reset_index()
        out += [f"### `{metric}`", "", md(t), ""]
    return out


def _num(v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "?"
    if math.isnan(v):
        return "?"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _cell(row: pd.Series, col: str, marks: list[str], where: str) -> str:
    """``"0.123 [0.100, 0.146]"``; an exact value says so; a caveat gets a mark."""
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


#: the columns of a schedule table: one trained model's value, its interval over the probe
#: batches (the measurement), and the mean over seeds with its interval over seeds (training)
PROBE_COLUMNS = ("training average [95 % over probe batches]", "final [95 % over probe batches]")
SEED_COLUMNS = ("training average: mean [95 % over seeds]", "final: mean [95 % over seeds]")

#: what the schedule section says before its tables
SCHEDULE_INTRO = (
    "Measured at each `[eval] schedule` point of training on one fixed probe set of "
    "training crops, with one number of surrogate draws, and with the quantizers in the "
    "state they had at that point. *Training average*: the area under the schedule over "
    "its length; *final*: the state after training (t = 1), the one evaluated. Two sources "
    "of variation, in columns of their own: **`[95 % over probe batches]`** is the "
    "interval over the probe batches of one trained model (the measurement: jackknife, "
    "Student t), which says nothing of how another training seed would differ; "
    "**`[95 % over seeds]`** (with several seeds, the second table of each statistic) is "
    "the t-interval over the seeds' values (training). Neither compares two quantizers: "
    "*Paired comparisons* does, seed by seed. A value that is zero by construction (a "
    "deterministic surrogate has no gradient variance; a path of a surrogate that equals "
    "rounding has no mismatch there) says so and is not a finding. The probe set's shape "
    "is in results.csv (probe_batches, probe_pixels, probe_images). Definitions, "
    "estimators and assumptions: docs/statistics.md."
)


def _statistic_table(per_model: pd.DataFrame, col: str, keys: list[str]) -> list[str]:
    """The table of one schedule statistic (a row per trained model, intervals over the
    probe batches), then its marks (caveats of single cells)."""
    marks: list[str] = []
    rows = []
    for _, r in per_model.iterrows():
        where = " ".join(f"{k}={r[k]}" for k in keys if k != "backbone" and not _negative(r[k]))
        rows.append(
            {
                **{k: r[k] for k in keys},
                PROBE_COLUMNS[0]: _cell(r, f"{col}_avg", marks, where),
                PROBE_COLUMNS[1]: _cell(r, col, marks, where),
            }
        )
    t = pd.DataFrame(rows)
    if "interp_weight" in t.columns:
        t["interp_weight"] = t["interp_weight"].where(t["interp_weight"] >= 0, None)
    out = [md(t), ""]
    return out + ([f"- {m}" for m in marks] + [""] if marks else [])


def _over_seeds(values: pd.Series) -> str:
    """The finite values of one model's seeds: ``mean [lo, hi]`` (95 % t-interval over
    seeds), the one value with :data:`~qbench.report.paired.ONE_SEED`, or not measured."""
    finite = [float(v) for v in pd.to_numeric(values, errors="coerce") if math.isfinite(v)]
    if not finite:
        return "not measured"
    p = paired(finite)
    if p.n < 2:
        return f"{_num(p.mean)} ({ONE_SEED})"
    lo, hi = p.interval
    return f"{_num(p.mean)} [{_num(lo)}, {_num(hi)}] ({p.n} seeds)"


def _seed_table(per_model: pd.DataFrame, col: str, keys: list[str]) -> list[str]:
    """One statistic over the seeds of each model (``keys``: without ``seed``): the mean and
    the 95 % t-interval over seeds of the training average and of the final value."""
    rows = []
    for point, g in per_model.groupby(keys, sort=False, dropna=False):
        rows.append(
            {
                **dict(zip(keys, point)),
                SEED_COLUMNS[0]: _over_seeds(g.get(f"{col}_avg", pd.Series(dtype=float))),
                SEED_COLUMNS[1]: _over_seeds(g[col]),
            }
        )
    t = pd.DataFrame(rows)
    if "interp_weight" in t.columns:
        t["interp_weight"] = t["interp_weight"].where(t["interp_weight"] >= 0, None)
    return [f"Over seeds ({LEVEL:.0%} t-interval over the seeds' values):", "", md(t), ""]


def schedule_section(
    ok: pd.DataFrame,
    metrics: dict[str, list[str]],
    notes: list[str],
    column_notes: dict[str, str],
) -> list[str]:
    """Training average and final state of each schedule statistic, with intervals over the
    probe batches, and with several seeds a second table over the seeds (under each table,
    the metric's note on how to read the column)."""
    if ok.empty or not metrics:
        return []
    keys = ["backbone", "quantizer", "lambda"]
    if "interp_weight" in ok.columns and (ok["interp_weight"] >= 0).any():
        keys.append("interp_weight")
    seeds = ok["seed"].nunique() > 1
    per_model = ok.drop_duplicates(
        subset=["train_id"] if "train_id" in ok.columns else [*keys, "seed"]
    )
    out = ["## Statistics over the training schedule", "", SCHEDULE_INTRO, ""]
    for metric, cols in metrics.items():
        for col in cols:
            if col not in per_model.columns:
                notes.append(f"statistic {col!r} ({metric}): not in results.csv")
                continue
            out += [f"### `{col}` ({metric})", ""]
            if column_notes.get(col):
                out += [column_notes[col], ""]
            out += _statistic_table(per_model, col, [*keys, "seed"] if seeds else keys)
            if seeds:
                out += _seed_table(per_model, col, keys)
    return out


#: what the paired comparisons say before their tables
PAIRED_INTRO = (
    "Every arm against the anchor, and against each other arm of its backbone whose points "
    "are of its kind (blends with blends; trained and derived curves, a variable-rate "
    "method's own, with each other), **seed by seed**: arm's seed s against the other's "
    "seed s, over the seeds both have, so that what a seed does to both cancels. Then over "
    "those seeds: the mean, the 95 % interval over seeds (Student t: the paired t-test's), "
    "`per seed` values, `agree` (how many seeds have the mean's sign) and the verdict: "
    "resolved when the interval excludes 0, else *not resolved* with the minimum detectable "
    "effect (MDE) of the paired t-test at two-sided 5 % and 80 % power given the observed "
    "spread sd of the per-seed values and their number n: (t(0.975, n-1) + t(0.80, n-1)) "
    "sd / sqrt(n), what this run could have seen. With one seed there is no interval over "
    "training and no verdict. `X vs Y`: X's curve against Y's (the anchor is always Y; "
    "else Y is the label later in the run). Definitions: docs/statistics.md."
)


def _pairwise_table(g: pd.DataFrame, value: str, fmt, renames: dict[str, str]) -> str:
    """One pairwise table: the mean column ``value`` written by ``fmt``, every cell shown as
    written (a per-seed list or an interval is never read as a number)."""
    shown = g.drop(columns=[c for c in ("backbone", "dataset") if c in g.columns])
    shown = shown.assign(**{value: shown[value].map(fmt)}).astype(str)
    return md(shown.rename(columns=renames), numparse=False)


def paired_section(bd: dict[str, list[dict]], statistics: list[dict]) -> list[str]:
    """The paired comparisons (:mod:`qbench.report.pairwise`): BD-rate per (backbone,
    dataset) on each rate of ``bd`` (``{rate column: rows}``, the report's rate first),
    then the schedule statistics per backbone."""
    if not any(bd.values()) and not statistics:
        return []
    out = ["## Paired comparisons (over seeds)", "", PAIRED_INTRO, ""]
    for rate, rows in bd.items():
        word = basis(rate)
        cells = pd.DataFrame(rows)
        for (bb, ds), g in cells.groupby(["backbone", "dataset"], sort=False) if rows else ():
            out += [f"### BD-rate, `{bb}` on `{ds}` (rate: {word}, `{rate}`)", ""]
            renames = {"bd_rate_%": f"bd_rate_{word}_%", "ci95_seeds": f"ci95_seeds_{word}_%"}
            out += [_pairwise_table(g, "bd_rate_%", "{:.2f}".format, renames), ""]
    stats = pd.DataFrame(statistics)
    for bb, g in stats.groupby("backbone", sort=False) if statistics else ():
        out += [
            f"### Schedule statistics, `{bb}`",
            "",
            "`difference`: arm minus the other, per seed the mean over the lambdas both have "
            "(`lambdas`, the fewest of a seed); `higher` / `lower`: the arm's value. Measured "
            "on the training probe set, the same for every evaluation dataset.",
            "",
            _pairwise_table(g, "difference", _num, {}),
            "",
        ]
    return out


def closing_sections(plots: list, notes: list[str]) -> list[str]:
    """The plots (``Path``s beside report.md) and the notes."""
    out = []
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return out
