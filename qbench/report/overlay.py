"""``qbench plot``: the RD curves of several run directories in one figure per
(backbone, dataset).

Each run is read as its report reads it (:func:`~qbench.report.tables.load_results`,
:func:`~qbench.report.tables.separate_configurations`, the usable rows,
:func:`~qbench.report.tables.rd_points`), so a curve here is the curve of that
run's report: mean over seeds, the seeds' standard deviation as error bars.
Legend entries are ``"<run>: <quantizer>"``; a quantizer label keeps its colour
across runs and each run has its own line style and marker.

One rate axis never mixes the real bitstream's rate with the likelihood
estimate. ``rate="auto"`` draws the bitstream rate
(:data:`~qbench.report.tables.BITSTREAM`) when every run has it, the likelihood
estimate (:data:`~qbench.report.tables.LIKELIHOOD`) when none has it, and refuses a
mix, naming the runs of each kind; ``rate="likelihood"`` (every run has it when
it evaluated ``bpp``) or ``rate="bitstream"`` asks for one basis. The axis label
and the title say which (:func:`~qbench.report.plots.rate_label`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from qbench.registry import QbenchError  # noqa: E402
from qbench.report.plots import (  # noqa: E402
    draw_rd,
    finish_rd_axes,
    rate_basis,
    rate_label,
    save,
    slug,
)
from qbench.report.tables import (  # noqa: E402
    BITSTREAM,
    DISTORTION,
    LIKELIHOOD,
    RATES,
    USABLE,
    load_results,
    rd_keys,
    rd_points,
    separate_configurations,
)

#: (line style, marker) of the runs, in order.
RUN_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"))
#: Image suffixes that make ``--out`` a file rather than a folder.
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


@dataclass
class RunCurves:
    """One run directory as the overlay reads it: its name in the legend, its path and
    its usable rows (``ok``) with the keys an RD point is one of."""

    name: str
    path: Path
    ok: pd.DataFrame
    keys: list[str]

    def has(self, column: str) -> bool:
        """Whether the run evaluated the rate ``column`` (a value in some usable row)."""
        return column in self.ok.columns and bool(self.ok[column].notna().any())

    def points(self, rate: str) -> pd.DataFrame:
        """The run's RD frame with the rate column ``rate``: columns ``rate``,
        ``rate_std``, the distortion and its std, per (backbone, dataset, quantizer,
        lambda[, blending weight]), as :func:`~qbench.report.tables.rd_points` makes it
        for the report."""
        return rd_points(self.ok, self.keys)


@dataclass
class OverlayFigure:
    """One written overlay: where, which (backbone, dataset), the rate column of its x
    axis and the axis label, the runs drawn and the legend entries."""

    path: Path
    backbone: str
    dataset: str
    rate: str
    xlabel: str
    runs: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def _filters(backbone: str | None, dataset: str | None) -> str:
    """``backbone 'B' and dataset 'D'``: the filters given, in words."""
    parts = []
    if backbone:
        parts.append(f"backbone {backbone!r}")
    if dataset:
        parts.append(f"dataset {dataset!r}")
    return " and ".join(parts)


def read_run(
    path: str | Path, name: str, backbone: str | None = None, dataset: str | None = None
) -> RunCurves:
    """A run directory's usable rows, as its report reads them, on ``backbone`` and
    ``dataset`` when given; a :class:`QbenchError` naming ``path`` when it is no run
    directory or has no finished job with a distortion to draw."""
    path = Path(path)
    if not path.is_dir():
        why = "no such folder" if not path.exists() else "not a folder"
        raise QbenchError(f"{path}: not a run directory ({why})")
    if not (path / "results.csv").exists() and not (path / "rows").is_dir():
        raise QbenchError(f"{path}: not a run directory (no results.csv and no rows/)")
    df = separate_configurations(load_results(path), [])
    ok = df[df["status"].isin(USABLE)]
    if ok.empty:
        statuses = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
        raise QbenchError(f"{path}: no finished job to plot ({statuses or 'no row'})")
    picked = ok
    if backbone:
        picked = picked[picked["backbone"].astype(str) == backbone]
    if dataset:
        picked = picked[picked["dataset"].astype(str) == dataset]
    if picked.empty:
        have = sorted({f"{b} on {d}" for b, d in zip(ok["backbone"], ok["dataset"])})
        raise QbenchError(
            f"{path}: no finished job on {_filters(backbone, dataset)} (it has: {', '.join(have)})"
        )
    if DISTORTION not in picked.columns or picked[DISTORTION].isna().all():
        raise QbenchError(f"{path}: evaluated no {DISTORTION}: no RD curve to draw")
    keys = rd_keys(picked)
    if "interp_weight" in keys:  # -1: not a blend (groups need a value), as in the report
        picked = picked.assign(interp_weight=picked["interp_weight"].fillna(-1.0))
    return RunCurves(name, path, picked.copy(), keys)


def choose_rate(runs: Sequence[RunCurves], rate: str = "auto") -> str:
    """The rate column every run is drawn on (see the module): ``rate`` is ``auto``,
    ``likelihood`` or ``bitstream``; a :class:`QbenchError` naming the runs where no
    one basis serves them all."""
    if rate != "auto":
        if rate not in RATES:
            raise QbenchError(f"rate {rate!r}: expected auto, {', '.join(RATES)}")
        column = RATES[rate]
        lacking = [r.name for r in runs if not r.has(column)]
        if lacking:
            raise QbenchError(
                f"--rate {rate}: {', '.join(lacking)} evaluated no {column} "
                f"({rate_basis(column)}); leave them out or pick another --rate"
            )
        return column
    coded = [r.name for r in runs if r.has(BITSTREAM)]
    if len(coded) == len(runs):
        return BITSTREAM
    if coded:
        estimated = [r.name for r in runs if r.name not in coded]
        raise QbenchError(
            f"{', '.join(coded)} have the real bitstream rate ({BITSTREAM}) and "
            f"{', '.join(estimated)} only the likelihood estimate ({LIKELIHOOD}); one rate axis "
            f"does not mix them: pass --rate likelihood to draw every run on the likelihood "
            f"estimate, or leave out {', '.join(estimated)}"
        )
    neither = [r.name for r in runs if not r.has(LIKELIHOOD)]
    if neither:
        raise QbenchError(
            f"{', '.join(neither)} evaluated neither {BITSTREAM} nor {LIKELIHOOD}: no rate to draw"
        )
    return LIKELIHOOD


def _names(paths: Sequence[Path]) -> list[str]:
    """The legend name of each run: its folder's name, the path as given where two share it."""
    resolved = [p.resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise QbenchError(f"{paths[i]}: given twice")
    names = [p.name for p in resolved]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def _targets(out: Path, groups: list[tuple[str, str]]) -> list[Path]:
    """Where each (backbone, dataset) figure goes: ``out`` itself when it names an image
    file (one figure only), else ``out/overlay_<backbone>_<dataset>.png``."""
    if out.suffix.lower() in IMAGE_SUFFIXES:
        if len(groups) > 1:
            listed = ", ".join(f"{b} on {d}" for b, d in groups)
            raise QbenchError(
                f"--out {out}: a file takes one figure, and these runs make {len(groups)} "
                f"({listed}); give a folder, or choose one with --backbone/--dataset"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    return [out / f"overlay_{slug(b)}_{slug(d)}.png" for b, d in groups]


def _figure(frames: list[tuple[str, pd.DataFrame]], rate: str, title: str):
    """One figure: each run's quantizers (a colour per quantizer label, a line style and
    marker per run), with the labels drawn."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8), dpi=120)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    quantizers = list(dict.fromkeys(q for _, f in frames for q in f["quantizer"]))
    colors = {q: palette[i % len(palette)] for i, q in enumerate(quantizers)}
    labels = []
    for i, (name, grp) in enumerate(frames):
        linestyle, marker = RUN_STYLES[i % len(RUN_STYLES)]
        style = {"linestyle": linestyle, "marker": marker, "colors": colors}
        labels += draw_rd(ax, grp, rate, prefix=f"{name}: ", **style)
    return finish_rd_axes(fig, ax, title, rate), labels


def overlay(
    run_dirs: Sequence[str | Path],
    out: str | Path = ".",
    backbone: str | None = None,
    dataset: str | None = None,
    rate: str = "auto",
) -> list[OverlayFigure]:
    """Overlay the RD curves of ``run_dirs``: one PNG per (backbone, dataset) any of them
    has (on ``backbone``/``dataset`` when given), written to ``out`` (a folder, or an image
    file when there is one figure); what was written, figure by figure."""
    if not run_dirs:
        raise QbenchError("qbench plot: give at least one run directory")
    paths = [Path(p) for p in run_dirs]
    runs = [read_run(p, n, backbone, dataset) for p, n in zip(paths, _names(paths))]
    column = choose_rate(runs, rate)
    points = [(r.name, r.points(column)) for r in runs]
    pairs = (zip(f["backbone"].astype(str), f["dataset"].astype(str)) for _, f in points)
    groups = list(dict.fromkeys(pair for run_pairs in pairs for pair in run_pairs))
    written = []
    for (bb, ds), target in zip(groups, _targets(Path(out), groups)):
        frames = [
            (name, f[(f["backbone"].astype(str) == bb) & (f["dataset"].astype(str) == ds)])
            for name, f in points
        ]
        frames = [(name, f) for name, f in frames if not f.empty]
        fig, labels = _figure(frames, column, f"{bb} on {ds}")
        save(fig, target)
        drawn = [name for name, _ in frames]
        written.append(OverlayFigure(target, bb, ds, column, rate_label(column), drawn, labels))
    return written
