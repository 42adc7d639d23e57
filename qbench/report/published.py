"""Published points against published points: one paper's curve against the curve of the
models it is compared with, computed by qbench's own BD-rate (:mod:`qbench.bdrate`).

A folder of published points (the study's ``results/published/``) holds one JSON
file per curve and ``comparisons.toml``, the comparisons to compute. A curve's
file::

    {"name": "...", "dataset": "kodak",
     "source": {"repository": "...", "commit": "...", "path": "...", "sha256": "...",
                "licence": "...", "paper": "...", "selection": "..."},
     "bpp": [...], "psnr": [...]}

``source`` says where the numbers come from (the published file at a commit, its
SHA-256, its licence, which of its points are kept); the values are the published
ones. ``comparisons.toml`` holds ``[[comparison]]`` tables of ``test``, ``anchor``
(file names in the folder) and ``claim`` (what the comparison checks, in words).

Each comparison is :func:`qbench.bdrate.bd_rate_checked` of ``test`` against
``anchor`` (PCHIP, negative = fewer bits than the anchor, on the PSNR range both
cover), with the overlap of the two PSNR ranges and its flags; the cubic fit of
VCEG-M33 (``method="cubic"``) beside it, since papers use either.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from qbench.bdrate import DEFAULT_MIN_OVERLAP, BDResult, bd_rate, bd_rate_checked
from qbench.registry import QbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The file of a folder of published points that lists its comparisons.
COMPARISONS = "comparisons.toml"


@dataclass(frozen=True)
class PublishedCurve:
    """One published curve: its name, dataset, ``(bpp, psnr)`` points in rate order and
    where they come from (``source``: repository, commit, path, sha256, licence, ...)."""

    file: str
    name: str
    dataset: str
    points: tuple[tuple[float, float], ...]
    source: dict[str, str]

    def psnr_range(self) -> tuple[float, float]:
        """The lowest and highest PSNR of the curve (dB)."""
        psnr = [q for _, q in self.points]
        return min(psnr), max(psnr)


@dataclass(frozen=True)
class PublishedComparison:
    """``test`` against ``anchor``: the BD-rate (PCHIP) with its overlap and flags, and the
    BD-rate with the cubic fit (``cubic``, percent)."""

    test: PublishedCurve
    anchor: PublishedCurve
    claim: str
    result: BDResult
    cubic: float


def load_curve(path: Path) -> PublishedCurve:
    """The curve in ``path`` (:class:`QbenchError` naming the file when it is not one)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QbenchError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(doc, dict):
        raise QbenchError(f"{path}: expected a JSON object with bpp, psnr and source")
    bpp, psnr, source = doc.get("bpp"), doc.get("psnr"), doc.get("source")
    if not isinstance(bpp, list) or not isinstance(psnr, list) or len(bpp) != len(psnr):
        raise QbenchError(f"{path}: bpp and psnr must be two lists of the same length")
    if not bpp or not all(isinstance(v, (int, float)) for v in bpp + psnr):
        raise QbenchError(f"{path}: bpp and psnr must hold numbers")
    if not isinstance(source, dict) or not {"repository", "commit", "licence"} <= set(source):
        raise QbenchError(f"{path}: source must name its repository, commit and licence")
    points = tuple(sorted((float(r), float(q)) for r, q in zip(bpp, psnr)))
    name, dataset = str(doc.get("name", path.stem)), str(doc.get("dataset", ""))
    return PublishedCurve(path.name, name, dataset, points, {k: str(v) for k, v in source.items()})


def compare(
    anchor: PublishedCurve,
    test: PublishedCurve,
    claim: str = "",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> PublishedComparison:
    """The BD-rate of ``test`` against ``anchor`` (see the module)."""
    if anchor.dataset != test.dataset:
        raise QbenchError(
            f"{test.file} ({test.dataset}) and {anchor.file} ({anchor.dataset}) were not "
            "measured on one dataset"
        )
    result = bd_rate_checked(anchor.points, test.points, "pchip", min_overlap)
    cubic = bd_rate(anchor.points, test.points, "cubic")
    return PublishedComparison(test, anchor, claim, result, cubic)


def comparisons(folder: Path) -> list[PublishedComparison]:
    """Every comparison ``folder/comparisons.toml`` lists, computed (none without it)."""
    listing = folder / COMPARISONS
    if not listing.is_file():
        return []
    try:
        table = tomllib.loads(listing.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise QbenchError(f"{listing}: not a readable TOML file ({exc})") from exc
    out = []
    for i, entry in enumerate(table.get("comparison", [])):
        if not isinstance(entry, dict) or not {"test", "anchor"} <= set(entry):
            raise QbenchError(f"{listing}: comparison {i + 1} needs test and anchor")
        curves = [load_curve(folder / str(entry[k])) for k in ("anchor", "test")]
        out.append(compare(*curves, str(entry.get("claim", ""))))
    return out
