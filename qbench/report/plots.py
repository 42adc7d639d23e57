"""Plots of a report (matplotlib, Agg backend): RD curves, BD-rate bars, schedule statistics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from qbench.plan.recipes import TRAINED  # noqa: E402
from qbench.report.tables import DISTORTION, RATE, has, of_role  # noqa: E402
from qbench.report.variable_rate import DERIVED_ROLES  # noqa: E402


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))


def plot_rd(rd: pd.DataFrame, out: Path, references: dict | None = None) -> list[Path]:
    """One PNG per (backbone, dataset): PSNR vs bpp, a line per quantizer, seed std as bars;
    the published curves of ``references`` (``{dataset: [ReferenceCurve]}``) dashed."""
    paths = []
    for (bb, ds), grp in rd.groupby(["backbone", "dataset"], sort=False):
        fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
        for curve in (references or {}).get(ds, []):
            ax.plot(curve.bpp, curve.psnr, "--", marker="x", alpha=0.7, label=curve.label)
        for q, qg in grp.groupby("quantizer", sort=False):
            qg = qg.sort_values(RATE)
            ax.errorbar(
                qg[RATE],
                qg[DISTORTION],
                xerr=qg.get(f"{RATE}_std"),
                yerr=qg.get(f"{DISTORTION}_std"),
                marker="o",
                capsize=3,
                label=q,
            )
        curves = (references or {}).get(ds, [])
        if curves:  # frame the run's points; the published curves are cut at the frame
            hi = float(grp[RATE].max()) * 2.0
            near = [p for c in curves for b, p in zip(c.bpp, c.psnr) if b <= hi]
            low, top = float(grp[DISTORTION].min()) - 1.0, float(grp[DISTORTION].max()) + 1.0
            ax.set_xlim(0.0, hi)
            ax.set_ylim(low, max([top, *near]) + 0.5)
        ax.set_xlabel("rate [bpp]")
        ax.set_ylabel("PSNR [dB]")
        ax.set_title(f"{bb} on {ds}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small" if curves else None)
        fig.tight_layout()
        path = out / f"rd_{_slug(bb)}_{_slug(ds)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_bd(rows: list[dict], out: Path, anchor: str) -> list[Path]:
    df = pd.DataFrame(rows)
    paths = []
    for (bb, ds), grp in df.groupby(["backbone", "dataset"], sort=False):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        err = grp["ci95_%"].fillna(0).values
        ax.bar(grp["quantizer"], grp["bd_rate_%"], yerr=err, capsize=4, color="tab:blue")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel(f"BD-rate vs {anchor} [%]")
        ax.set_title(f"{bb} on {ds} (lower is better)")
        fig.tight_layout()
        path = out / f"bd_{_slug(bb)}_{_slug(ds)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_schedule(h: pd.DataFrame, out: Path) -> list[Path]:
    """Each schedule statistic against training progress: a line per quantizer (darker =
    larger lambda), the 95 % interval shaded; exact values (zero by construction) drawn
    as hollow markers. Every statistic of ``schedule.csv`` is plotted (a column ``c`` with
    its ``c_exact``, as :func:`qbench.schedule.record` writes it), whichever metric made it."""
    cols = [c for c in h.columns if f"{c}_exact" in h.columns]
    if not cols or h.empty:
        return []
    fig, axes = plt.subplots(1, len(cols), figsize=(3.8 * len(cols), 3.4), dpi=110)
    axes = [axes] if len(cols) == 1 else list(axes)
    quantizers = list(dict.fromkeys(h["quantizer"]))
    lambdas = sorted(h["lambda"].unique())
    colors = plt.get_cmap("tab10")
    for ax, col in zip(axes, cols):
        exact_col = f"{col}_exact"
        for (q, lam), g in h.groupby(["quantizer", "lambda"], sort=False):
            g = g.groupby("progress", as_index=False).first().sort_values("progress")
            color = colors(quantizers.index(q) % 10)
            shade = 0.3 + 0.7 * (lambdas.index(lam) + 1) / len(lambdas)
            label = q if lam == lambdas[-1] else None
            ax.plot(g["progress"], g[col], color=color, alpha=shade, label=label, marker=".")
            if f"{col}_lo" in g.columns:
                ax.fill_between(
                    g["progress"], g[f"{col}_lo"], g[f"{col}_hi"], color=color, alpha=0.08
                )
            if exact_col in g.columns:
                ex = g[g[exact_col].fillna("").astype(str) != ""]
                ax.scatter(ex["progress"], ex[col], facecolors="none", edgecolors=color, s=30)
        ax.set_xlabel("training progress t")
        ax.set_title(col, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="darker = larger lambda", title_fontsize=6)
    fig.suptitle(
        "schedule statistics (shaded: 95% interval; hollow: exact by construction)", fontsize=9
    )
    fig.tight_layout()
    path = out / "schedule.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def _mean_points(grp: pd.DataFrame) -> pd.DataFrame:
    """Rate and distortion per (quantizer, lambda, blending weight), mean over seeds, with
    the points' role."""
    keys = ["quantizer", "lambda", "interp_weight"]
    grp = grp.assign(interp_weight=grp.get("interp_weight", pd.Series(index=grp.index)))
    g = grp.groupby(keys, dropna=False, sort=False)
    mean = g[[RATE, DISTORTION]].mean().reset_index()
    mean["role"] = g["role"].first().values
    return mean


def _draw_method(ax, mine: pd.DataFrame, method: str, colour: str) -> None:
    """One method's points, a style per derived role (``Role.marker``, ``linestyle``,
    ``filled``), labelled ``"<method> <noun>"``."""
    for role in DERIVED_ROLES:
        pts = of_role(mine, role).sort_values(RATE)
        ax.plot(
            pts[RATE],
            pts[DISTORTION],
            linestyle=role.linestyle,
            marker=role.marker,
            color=colour,
            label=f"{method} {role.noun}",
            **({} if role.filled else {"mfc": "none"}),
        )


def plot_variable_rate(
    ok: pd.DataFrame, methods: dict[str, str], anchor: str, out: Path
) -> list[Path]:
    """One PNG per (backbone, dataset): the ``anchor`` models trained at each lambda (line),
    and each variable-rate method's points in one colour per method, a style per derived
    role (``methods``: derived label -> method)."""
    paths = []
    for (bb, ds), grp in ok.groupby(["backbone", "dataset"], sort=False):
        mean = _mean_points(grp)
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        ref = mean[(mean["quantizer"] == anchor) & ~has(mean, "derived")].sort_values(RATE)
        ax.plot(
            ref[RATE],
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
            _draw_method(ax, mean[mean["quantizer"].isin(labels)], method, colour)
        ax.set_xlabel(f"rate [{RATE}, likelihood]")
        ax.set_ylabel("PSNR [dB]")
        ax.set_title(f"variable rate: {bb} on {ds}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"vr_{_slug(bb)}_{_slug(ds)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
