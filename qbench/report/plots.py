"""Plots of a report (matplotlib, Agg backend): RD curves, BD-rate bars, schedule statistics.

Every rate axis and title says which rate it carries (:func:`rate_label`): the
report draws on its ``[report] rate`` (the real bitstream's,
:data:`~qbench.report.tables.BITSTREAM`, unless it asks for the likelihood estimate,
:data:`~qbench.report.tables.LIKELIHOOD`); ``qbench plot``
(:mod:`qbench.report.overlay`) chooses its own.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from qbench.plan.recipes import TRAINED  # noqa: E402
from qbench.report.tables import BITSTREAM, DISTORTION, LIKELIHOOD, has, of_role  # noqa: E402
from qbench.report.variable_rate import DERIVED_ROLES  # noqa: E402

#: Legend text size in points (at the figure's print size): legible on paper.
LEGEND_PT = 9
#: Legends with more entries than this go beside the axes, not over the points.
LEGEND_INSIDE_MAX = 8
#: What the figure widens by, in inches, for a legend beside the axes.
LEGEND_BESIDE_IN = 3.0
#: Width of the schedule grid in inches (panels share it), and each row's height.
SCHEDULE_WIDTH_IN, SCHEDULE_ROW_IN = 11.0, 2.9
#: (colour, format) of the published curves drawn beside a run's, in order.
PUBLISHED_STYLES = (("0.15", "--x"), ("0.4", "-.+"), ("0.55", ":1"), ("0.7", "--2"), ("0.3", ":x"))
#: Resolution of every saved plot.
DPI = 120


def slug(s: str) -> str:
    """``s`` as a file-name part: characters other than letters, digits, ``-_.`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))


def rate_basis(column: str) -> str:
    """What a rate column measures, in words: ``bitstream`` for the real coded rate,
    ``likelihood estimate`` for the rate the entropy model's likelihoods give."""
    return {LIKELIHOOD: "likelihood estimate", BITSTREAM: "bitstream"}.get(column, column)


def rate_label(column: str) -> str:
    """The rate axis label of ``column``: ``rate [bpp, bitstream]`` or
    ``rate [bpp, likelihood estimate]``."""
    return f"rate [bpp, {rate_basis(column)}]"


def place_legend(ax, title: str | None = None) -> None:
    """The axes' legend at :data:`LEGEND_PT`, inside when it is short, else beside the axes
    (save with ``bbox_inches="tight"`` so that it is kept)."""
    n = len(ax.get_legend_handles_labels()[1])
    if n == 0:
        return
    common = {"fontsize": LEGEND_PT, "title": title, "title_fontsize": LEGEND_PT}
    if n <= LEGEND_INSIDE_MAX:
        ax.legend(**common)
        return
    width, height = ax.figure.get_size_inches()
    ax.figure.set_size_inches(width + LEGEND_BESIDE_IN, height)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **common)


def draw_rd(ax, grp: pd.DataFrame, rate: str = BITSTREAM, prefix: str = "", **style) -> list[str]:
    """A line per quantizer of an RD frame (:func:`~qbench.report.tables.rd_points`): mean
    over seeds, their standard deviation as error bars on both axes; labels
    ``prefix + quantizer`` (returned). ``style``: colours (``colors``: quantizer ->
    colour) and line keywords common to every line (``linestyle``, ``marker``)."""
    colors = style.pop("colors", {})
    style = {"marker": "o", **style}
    labels = []
    for q, qg in grp.groupby("quantizer", sort=False):
        qg = qg.sort_values(rate)
        label = f"{prefix}{q}"
        ax.errorbar(
            qg[rate],
            qg[DISTORTION],
            xerr=qg.get(f"{rate}_std"),
            yerr=qg.get(f"{DISTORTION}_std"),
            capsize=3,
            label=label,
            color=colors.get(q),
            **style,
        )
        labels.append(label)
    return labels


def rd_figure(
    grp: pd.DataFrame, title: str, curves: list | None = None, rate: str = BITSTREAM
) -> Figure:
    """One (backbone, dataset) of the report's RD frame on the rate column ``rate``: a line
    per quantizer, seed std as bars; the published ``curves`` (real file sizes) dashed, cut
    at the run's frame."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=DPI)
    for i, curve in enumerate(curves or []):  # greys: the run's colours stay its own
        grey, style = PUBLISHED_STYLES[i % len(PUBLISHED_STYLES)]
        ax.plot(curve.bpp, curve.psnr, style, color=grey, lw=1.2, ms=5, label=curve.label)
    draw_rd(ax, grp, rate)
    if curves:  # frame the run's points; the published curves are cut at the frame
        hi = float(grp[rate].max()) * 2.0
        near = [p for c in curves for b, p in zip(c.bpp, c.psnr) if b <= hi]
        low, top = float(grp[DISTORTION].min()) - 1.0, float(grp[DISTORTION].max()) + 1.0
        ax.set_xlim(0.0, hi)
        ax.set_ylim(low, max([top, *near]) + 0.5)
    return finish_rd_axes(fig, ax, title, rate)


def finish_rd_axes(fig: Figure, ax, title: str, rate: str) -> Figure:
    """The labels, grid and legend every RD figure ends with (``rate``: its rate column,
    said on the axis and in the title)."""
    ax.set_xlabel(rate_label(rate))
    ax.set_ylabel("PSNR [dB]")
    ax.set_title(f"{title} (rate: {rate_basis(rate)})")
    ax.grid(alpha=0.3)
    place_legend(ax)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (legends beside the axes kept) and close it; a PNG carries
    its first axes' title and axis labels as text (``Title``, ``Description``), so that a
    file says which rate it draws."""
    ax = fig.axes[0] if fig.axes else None
    meta = {}
    if ax is not None and path.suffix.lower() == ".png":
        meta = {
            "Title": ax.get_title(),
            "Description": f"x: {ax.get_xlabel()}; y: {ax.get_ylabel()}",
        }
    fig.savefig(path, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return path


def plot_rd(
    rd: pd.DataFrame, out: Path, references: dict | None = None, rate: str = BITSTREAM
) -> list[Path]:
    """One PNG per (backbone, dataset): PSNR vs the rate column ``rate``, a line per
    quantizer, seed std as bars; the published curves of ``references``
    (``{dataset: [ReferenceCurve]}``) dashed."""
    paths = []
    for (bb, ds), grp in rd.groupby(["backbone", "dataset"], sort=False):
        fig = rd_figure(grp, f"{bb} on {ds}", (references or {}).get(ds, []), rate)
        paths.append(save(fig, out / f"rd_{slug(bb)}_{slug(ds)}.png"))
    return paths


def plot_bd(rows: list[dict], out: Path, anchor: str, rate: str = BITSTREAM) -> list[Path]:
    """One PNG per (backbone, dataset): the BD-rate of each quantizer against ``anchor`` on
    the rate column ``rate`` (as the report's table), its 95 % interval over seeds as
    bars."""
    df = pd.DataFrame(rows)
    paths = []
    for (bb, ds), grp in df.groupby(["backbone", "dataset"], sort=False):
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=DPI)
        err = grp["ci95_seeds_%"].fillna(0).values
        ax.bar(grp["quantizer"], grp["bd_rate_%"], yerr=err, capsize=4, color="tab:blue")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel(f"BD-rate vs {anchor} [%] (bars: 95 % over seeds)")
        ax.set_title(f"{bb} on {ds} (rate: {rate_basis(rate)}; lower is better)")
        if max(len(str(q)) for q in grp["quantizer"]) > 60 / len(grp):  # would touch: slant
            plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
        fig.tight_layout()
        paths.append(save(fig, out / f"bd_{slug(bb)}_{slug(ds)}.png"))
    return paths


def _grid(cells: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``cells`` small multiples: 2 to 4 columns."""
    ncols = cells if cells <= 3 else 2 if cells == 4 else 3 if cells in (5, 6, 9) else 4
    return math.ceil(cells / ncols), ncols


def _schedule_panel(ax, h: pd.DataFrame, col: str, colors: dict, shades: dict) -> None:
    """One statistic: a line per (quantizer, lambda), its interval shaded, exact values
    hollow."""
    exact_col = f"{col}_exact"
    for (q, lam), g in h.groupby(["quantizer", "lambda"], sort=False):
        g = g.groupby("progress", as_index=False).first().sort_values("progress")
        color, alpha = colors[q], shades[lam]
        ax.plot(g["progress"], g[col], color=color, alpha=alpha, marker=".", lw=1.2)
        if f"{col}_lo" in g.columns:
            ax.fill_between(g["progress"], g[f"{col}_lo"], g[f"{col}_hi"], color=color, alpha=0.08)
        ex = g[g[exact_col].fillna("").astype(str) != ""]
        ax.scatter(ex["progress"], ex[col], facecolors="none", edgecolors=color, s=30, zorder=3)
    ax.set_title(col, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def _schedule_key(ax, colors: dict, shades: dict) -> None:
    """The legend cell: the quantizers' colours, then (below, else beside them) the
    lambdas' shades and what shading and hollow markers mean. Call after the layout:
    the legends are measured to be stacked."""
    ax.axis("off")
    common = {"loc": "upper left", "fontsize": LEGEND_PT, "title_fontsize": LEGEND_PT}
    first = ax.legend(
        [Line2D([], [], color=c, marker=".") for c in colors.values()],
        list(colors),
        title="quantizer",
        bbox_to_anchor=(0.0, 1.0),
        **common,
    )
    ax.add_artist(first)
    lams = list(shades)
    shown = lams if len(lams) <= 6 else [lams[0], lams[-1]]
    handles = [Line2D([], [], color="k", alpha=shades[lam], marker=".") for lam in shown]
    handles += [
        Patch(color="tab:blue", alpha=0.15),
        Line2D([], [], ls="", marker="o", mfc="none", mec="k"),
    ]
    labels = [f"lambda {lam:g}" for lam in shown] + ["95 % interval", "exact (by construction)"]
    key = ax.legend(handles, labels, title="darker = larger lambda", **common)
    renderer = ax.figure.canvas.get_renderer()
    to_axes = ax.transAxes.inverted()
    top = first.get_window_extent(renderer).transformed(to_axes)
    height = key.get_window_extent(renderer).transformed(to_axes).height
    gap = 0.04
    key.set_bbox_to_anchor(
        (0.0, top.y0 - gap) if top.y0 - gap - height >= -0.1 else (top.x1 + gap, 1.0),
        transform=ax.transAxes,
    )


def schedule_figure(h: pd.DataFrame) -> Figure | None:
    """The statistics of ``schedule.csv`` as small multiples, one panel per statistic
    (a column ``c`` with its ``c_exact``, as :func:`qbench.schedule.record` writes it,
    whichever metric made it) on a shared training-progress axis, plus one legend cell;
    None when there is nothing to draw."""
    cols = [c for c in h.columns if f"{c}_exact" in h.columns]
    if not cols or h.empty:
        return None
    nrows, ncols = _grid(len(cols) + 1)
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=(SCHEDULE_WIDTH_IN, 0.6 + SCHEDULE_ROW_IN * nrows),
        dpi=DPI,
        sharex=True,
        squeeze=False,
    )
    cells = list(grid.flat)
    palette = plt.get_cmap("tab10")
    colors = {q: palette(i % 10) for i, q in enumerate(dict.fromkeys(h["quantizer"]))}
    lambdas = sorted(h["lambda"].unique())
    shades = {lam: 0.3 + 0.7 * (i + 1) / len(lambdas) for i, lam in enumerate(lambdas)}
    for ax, col in zip(cells, cols):
        _schedule_panel(ax, h, col, colors, shades)
    for c in range(ncols):  # the lowest panel of each column carries the shared x axis
        panels = [ax for ax in grid[:, c] if cells.index(ax) < len(cols)]
        if panels:
            panels[-1].xaxis.set_tick_params(labelbottom=True)
            panels[-1].set_xlabel("training progress t", fontsize=9)
    for ax in cells[len(cols) :]:
        ax.axis("off")
    fig.suptitle("statistics over the training schedule", fontsize=11)
    fig.tight_layout()
    _schedule_key(cells[len(cols)], colors, shades)
    return fig


def plot_schedule(h: pd.DataFrame, out: Path) -> list[Path]:
    """``schedule.png``: :func:`schedule_figure` (nothing when there is no statistic)."""
    fig = schedule_figure(h)
    if fig is None:
        return []
    path = out / "schedule.png"
    fig.savefig(path)  # the grid's own size: the legend has its cell
    plt.close(fig)
    return [path]


def _mean_points(grp: pd.DataFrame, rate: str) -> pd.DataFrame:
    """Rate (column ``rate``) and distortion per (quantizer, lambda, blending weight), mean
    over seeds, with the points' role."""
    keys = ["quantizer", "lambda", "interp_weight"]
    grp = grp.assign(interp_weight=grp.get("interp_weight", pd.Series(index=grp.index)))
    g = grp.groupby(keys, dropna=False, sort=False)
    mean = g[[rate, DISTORTION]].mean().reset_index()
    mean["role"] = g["role"].first().values
    return mean


def _draw_method(ax, mine: pd.DataFrame, method: str, colour: str, rate: str) -> None:
    """One method's points, a style per derived role (``Role.marker``, ``linestyle``,
    ``filled``), labelled ``"<method> <noun>"``."""
    for role in DERIVED_ROLES:
        pts = of_role(mine, role).sort_values(rate)
        ax.plot(
            pts[rate],
            pts[DISTORTION],
            linestyle=role.linestyle,
            marker=role.marker,
            color=colour,
            label=f"{method} {role.noun}",
            **({} if role.filled else {"mfc": "none"}),
        )


def variable_rate_figure(
    grp: pd.DataFrame, methods: dict[str, str], anchor: str, title: str, rate: str = BITSTREAM
) -> Figure:
    """One (backbone, dataset) of the usable rows: the ``anchor`` models trained at each
    lambda (line), and each variable-rate method's points in one colour per method, a style
    per derived role (``methods``: derived label -> method), on the rate column ``rate``."""
    mean = _mean_points(grp, rate)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=DPI)
    ref = mean[(mean["quantizer"] == anchor) & ~has(mean, "derived")].sort_values(rate)
    ax.plot(
        ref[rate],
        ref[DISTORTION],
        color="k",
        linestyle=TRAINED.linestyle,
        marker=TRAINED.marker,
        label=f"{anchor} (trained per lambda)",
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(dict.fromkeys(methods.values())):
        labels = [q for q, m in methods.items() if m == method]
        colour = colours[i % len(colours)]
        _draw_method(ax, mean[mean["quantizer"].isin(labels)], method, colour, rate)
    return finish_rd_axes(fig, ax, title, rate)


def plot_variable_rate(
    ok: pd.DataFrame, methods: dict[str, str], anchor: str, out: Path, rate: str = BITSTREAM
) -> list[Path]:
    """One PNG per (backbone, dataset): :func:`variable_rate_figure` on ``rate``."""
    paths = []
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        title = f"variable rate: {bb} on {ds}"
        fig = variable_rate_figure(grp, methods, anchor, title, rate)
        paths.append(save(fig, out / f"vr_{slug(bb)}_{slug(ds)}.png"))
    return paths
