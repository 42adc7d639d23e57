"""Plots of a report (matplotlib, Agg backend): RD curves, BD-rate bars, history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))


def plot_rd(rd: pd.DataFrame, out: Path) -> list[Path]:
    """One PNG per (backbone, dataset): PSNR vs bpp, a line per quantizer, seed std as bars."""
    paths = []
    for (bb, ds), grp in rd.groupby(["backbone", "dataset"], sort=False):
        fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
        for q, qg in grp.groupby("quantizer", sort=False):
            qg = qg.sort_values("bpp")
            ax.errorbar(
                qg["bpp"],
                qg["psnr"],
                xerr=qg.get("bpp_std"),
                yerr=qg.get("psnr_std"),
                marker="o",
                capsize=3,
                label=q,
            )
        ax.set_xlabel("rate [bpp]")
        ax.set_ylabel("PSNR [dB]")
        ax.set_title(f"{bb} on {ds}")
        ax.grid(alpha=0.3)
        ax.legend()
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


def plot_history(h: pd.DataFrame, out: Path) -> list[Path]:
    """Mismatch and gradient variance against training progress, a line per quantizer."""
    cols = [c for c in ("mismatch_rate", "mismatch_dist", "grad_var") if c in h.columns]
    if not cols or h.empty:
        return []
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.6), dpi=120)
    axes = [axes] if len(cols) == 1 else list(axes)
    quantizers = list(dict.fromkeys(h["quantizer"]))
    lambdas = sorted(h["lambda"].unique())
    colors = plt.get_cmap("tab10")
    for ax, col in zip(axes, cols):
        for (q, lam), g in h.groupby(["quantizer", "lambda"], sort=False):
            g = g.groupby("progress")[col].mean().reset_index()
            shade = 0.35 + 0.65 * (lambdas.index(lam) + 1) / len(lambdas)
            first = lam == lambdas[-1]
            ax.plot(
                g["progress"],
                g[col],
                color=colors(quantizers.index(q) % 10),
                alpha=shade,
                label=q if first else None,
            )
        ax.set_xlabel("training progress")
        ax.set_ylabel(col)
        if col == "grad_var":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="darker = larger lambda", title_fontsize=7)
    fig.suptitle(
        "mismatch and gradient variance over training (a zero variance is not drawn)", fontsize=9
    )
    fig.tight_layout()
    path = out / "history.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]
