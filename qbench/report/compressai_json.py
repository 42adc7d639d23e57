"""A run's curves as CompressAI results files (``qbench report RUN --format compressai-json``).

One JSON file per curve, a curve being one backbone, quantizer label and
evaluation dataset, in the format CompressAI's ``eval_model`` writes and its
published results use, which ``python -m compressai.utils.plot`` draws::

    {"name": "...", "description": "...",
     "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...]}}

* **Points**: one per lambda (and blending weight, for blends), sorted by
  rate. CompressAI's files hold one value per point, the mean over the
  images; a qbench row is already that mean, and the rows of a point's seeds
  are averaged, as the report's RD tables do (the description says over how
  many seeds). A point whose rate or distortion is not finite is left out
  and counted in the description.
* **bpp**: the real bitstream's (:data:`~qbench.report.tables.BITSTREAM`, the
  rate CompressAI's ``eval_model`` measures) when every point of the curve
  has it, else the likelihood estimate (:data:`~qbench.report.tables.LIKELIHOOD`);
  the description says which, and ``qbench.bpp_from`` names the column.
* **psnr-rgb**: the report's distortion column
  (:data:`~qbench.report.tables.DISTORTION`).
* **further keys** of CompressAI's vocabulary (:data:`EXTRA_KEYS`) are written
  when the run has the column CompressAI's naming gives (``ms-ssim-rgb``: the
  key without ``-rgb``, ``-`` read as ``_``) and every point of the curve has
  a finite value of it.

A top-level ``qbench`` entry records where the curve comes from (run,
backbone, quantizer, dataset, lambdas, seeds); CompressAI's tools ignore it.
Built from the run directory alone, like the report.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from qbench.registry import QbenchError
from qbench.report.tables import (
    BITSTREAM,
    DISTORTION,
    LIKELIHOOD,
    USABLE,
    load_results,
    rd_keys,
    separate_configurations,
)

#: Keys of CompressAI's results besides ``bpp`` and ``psnr-rgb`` that a run may fill.
EXTRA_KEYS = ("ms-ssim-rgb",)
#: What each rate column is, for the description.
RATE_MEANING = {
    BITSTREAM: "bits per pixel of the real bitstream (CompressAI's rANS coder)",
    LIKELIHOOD: "bits per pixel estimated from the likelihoods (no bitstream measured)",
}


def column_of(key: str) -> str:
    """The qbench column CompressAI's results key ``key`` reads by its naming
    (``ms-ssim-rgb`` -> ``ms_ssim``)."""
    return key.removesuffix("-rgb").replace("-", "_")


def _finite(values: pd.Series) -> bool:
    """Whether ``values`` is not empty and every value is a finite number."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    return bool(len(numbers)) and bool(numbers.map(math.isfinite).all())


def _points(curve: pd.DataFrame, point_keys: list[str]) -> tuple[pd.DataFrame, int, str]:
    """``(points, left out, rate column)``: the curve's mean over seeds per point, the
    number of points without a finite rate or distortion, and the rate column used."""
    rate = BITSTREAM if BITSTREAM in curve.columns and _finite(curve[BITSTREAM]) else LIKELIHOOD
    columns = [rate, DISTORTION] + [
        column_of(k) for k in EXTRA_KEYS if column_of(k) in curve.columns
    ]
    columns = list(dict.fromkeys(columns))
    grouped = curve.groupby(point_keys, sort=False)
    # a seed without a value makes the point's mean NaN: no mean over fewer seeds unsaid
    points = grouped[columns].agg(lambda s: s.astype(float).mean(skipna=False)).reset_index()
    points["seeds"] = grouped.size().values
    usable = points[rate].map(math.isfinite) & points[DISTORTION].map(math.isfinite)
    return points[usable].sort_values(rate, kind="stable"), int((~usable).sum()), rate


def _document(
    curve: pd.DataFrame, point_keys: list[str], run: str, several_datasets: bool
) -> dict[str, Any] | None:
    """The CompressAI results document of one curve (None when no point is drawable)."""
    first = curve.iloc[0]
    backbone, quantizer, dataset = (
        str(first["backbone"]),
        str(first["quantizer"]),
        str(first["dataset"]),
    )
    points, left_out, rate = _points(curve, point_keys)
    if points.empty:
        return None
    results: dict[str, list[float]] = {
        "bpp": [float(v) for v in points[rate]],
        "psnr-rgb": [float(v) for v in points[DISTORTION]],
    }
    for key in EXTRA_KEYS:
        if column_of(key) in points.columns and _finite(points[column_of(key)]):
            results[key] = [float(v) for v in points[column_of(key)]]
    seeds = sorted(int(s) for s in curve["seed"].unique())
    counts = sorted(set(int(n) for n in points["seeds"]))
    over = "/".join(str(n) for n in counts)
    description = (
        f"qbench run {run}: backbone {backbone}, quantizer {quantizer}, evaluated on "
        f"{dataset}; each point the mean over the images, then over {over} seed(s) "
        f"(seeds {', '.join(map(str, seeds))}); bpp: {RATE_MEANING[rate]}"
    )
    if left_out:
        description += f"; {left_out} point(s) without a finite rate or PSNR left out"
    provenance: dict[str, Any] = {
        "run": run,
        "backbone": backbone,
        "quantizer": quantizer,
        "dataset": dataset,
        "bpp_from": rate,
        "lambda": [float(v) for v in points["lambda"]],
        "seeds": seeds,
    }
    if "interp_weight" in points.columns:
        provenance["interp_weight"] = [
            float(w) if w >= 0 else None for w in points["interp_weight"].astype(float)
        ]
    name = f"{backbone}, {quantizer}" + (f", {dataset}" if several_datasets else "")
    return {"name": name, "description": description, "results": results, "qbench": provenance}


def curves(run_dir: str | Path) -> list[dict[str, Any]]:
    """The CompressAI results document of every curve of the run (see the module docstring),
    in the order the curves first appear in ``results.csv``."""
    run_dir = Path(run_dir)
    df = load_results(run_dir)
    if DISTORTION not in df.columns or LIKELIHOOD not in df.columns:
        raise QbenchError(
            f"{run_dir}: CompressAI's results need the {LIKELIHOOD} and {DISTORTION} columns; "
            "this run did not evaluate them"
        )
    ok = separate_configurations(df[df["status"].isin(USABLE)].copy(), [])
    keys = rd_keys(ok)
    if "interp_weight" in keys:  # -1: not a blend (groups need a value)
        ok["interp_weight"] = ok["interp_weight"].fillna(-1.0)
    point_keys = [k for k in keys if k not in ("backbone", "dataset", "quantizer")]
    several = ok["dataset"].nunique() > 1
    docs = []
    for _, curve in ok.groupby(["backbone", "dataset", "quantizer"], sort=False):
        doc = _document(curve, point_keys, run_dir.name, several)
        if doc is not None:
            docs.append(doc)
    return docs


def _file_name(doc: dict[str, Any], taken: set[str]) -> str:
    info = doc["qbench"]
    parts = (info["backbone"], info["quantizer"], info["dataset"])
    stem = "_".join(re.sub(r"[^A-Za-z0-9_-]+", "-", str(p)).strip("-") or "x" for p in parts)
    name, n = f"{stem}.json", 2
    while name in taken:
        name, n = f"{stem}-{n}.json", n + 1
    taken.add(name)
    return name


def write_compressai_json(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write one CompressAI results file per curve of the run into ``out`` (default
    ``RUN/compressai/``); returns the files written."""
    run_dir = Path(run_dir)
    docs = curves(run_dir)
    if not docs:
        raise QbenchError(f"{run_dir}: no finished job with a finite rate and PSNR")
    folder = Path(out) if out is not None else run_dir / "compressai"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        paths = []
        for doc in docs:
            path = folder / _file_name(doc, taken)
            path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            paths.append(path)
    except OSError as exc:
        raise QbenchError(f"{folder}: cannot write ({exc.strerror or exc})") from exc
    return paths
