"""Bjøntegaard-delta rate and PSNR between two rate-distortion curves.

``bd_rate(anchor, test)`` is the average bitrate difference of ``test``
against ``anchor`` in percent at equal quality, over the PSNR range both
curves cover (negative: ``test`` needs fewer bits). ``bd_psnr`` is the
average PSNR difference in dB at equal rate, over the overlapping log-rate
range. Both interpolate log10(rate) against quality:

* ``method="pchip"``: piecewise cubic Hermite interpolation, as in the JCT-VC /
  JVET common-test-conditions spreadsheet;
* ``method="cubic"``: the third-order polynomial fit of VCEG-M33
  (G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves",
  2001).

The interpolation and integration are those of the well-kept ``bjontegaard``
package (FAU-LMS; its PCHIP matches the CTC spreadsheet to 10 decimals);
qbench adds the input checks below, with errors that say what is wrong.

:func:`bd_rate_checked` is what the report uses: it says how far a number
can be trusted instead of hiding it. It returns the value with the curves'
*overlap* (the common part of the two quality ranges over their union, as
the ``bjontegaard`` package defines it), flagged when the overlap is below
``min_overlap`` (default: the package's own, 0.75); a curve that is not
monotonic is reduced to its longest monotonic run of points (in rate order)
when at least 4 remain, and flagged as such.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qbench.registry import QbenchError

METHODS = ("pchip", "cubic")
#: The fewest points of a curve a BD metric is computed on.
MIN_POINTS = 4
#: The bjontegaard package's own minimum overlap before it warns.
DEFAULT_MIN_OVERLAP = 0.75


class BDRateError(QbenchError, ValueError):
    """Curves on which a BD metric cannot be computed; the message gives the numbers."""


def _curve(points: Sequence[Sequence[float]], which: str) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise BDRateError(f"{which}: expected a sequence of (bpp, psnr) pairs, got {points!r}")
    if len(arr) < MIN_POINTS:
        raise BDRateError(f"{which}: BD metrics need at least {MIN_POINTS} points, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise BDRateError(f"{which}: non-finite values in {arr.tolist()}")
    if (arr[:, 0] <= 0).any():
        raise BDRateError(f"{which}: rates must be positive, got {arr[:, 0].tolist()}")
    arr = arr[np.argsort(arr[:, 0])]
    if not (np.diff(arr[:, 0]) > 0).all() or not (np.diff(arr[:, 1]) > 0).all():
        raise BDRateError(
            f"{which}: the curve is not monotonic (quality must rise with rate): "
            + ", ".join(f"({r:.4g}, {q:.4g})" for r, q in arr)
        )
    return arr[:, 0], arr[:, 1]


def _check(method: str) -> None:
    if method not in METHODS:
        raise BDRateError(f"method must be one of {METHODS}, got {method!r}")


def _bd(anchor, test, method: str, fn, axis: int, unit: str) -> float:
    _check(method)
    ra, qa = _curve(anchor, "anchor")
    rt, qt = _curve(test, "test")
    a, t = (ra, rt) if axis == 0 else (qa, qt)
    if max(a.min(), t.min()) >= min(a.max(), t.max()):
        what = "rate" if axis == 0 else "quality"
        raise BDRateError(
            f"the curves' {what} ranges do not overlap: anchor {a.min():.4g}-{a.max():.4g} "
            f"{unit}, test {t.min():.4g}-{t.max():.4g} {unit}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            fn(ra, qa, rt, qt, method=method, require_matching_points=False, min_overlap=0)
        )


@dataclass
class BDResult:
    """A BD-rate with what it rests on.

    Attributes:
        value: the BD-rate in percent.
        overlap: the curves' common quality range over their union, in [0, 1].
        flags: why the value deserves caution (low overlap, points dropped); empty if none.
    """

    value: float
    overlap: float
    flags: list[str] = field(default_factory=list)


def overlap(anchor: Sequence[Sequence[float]], test: Sequence[Sequence[float]]) -> float:
    """Common PSNR range of the two curves over the union of their ranges (0 to 1)."""
    qa = np.asarray(anchor, dtype=float)[:, 1]
    qt = np.asarray(test, dtype=float)[:, 1]
    union = max(qa.max(), qt.max()) - min(qa.min(), qt.min())
    common = min(qa.max(), qt.max()) - max(qa.min(), qt.min())
    return max(common, 0.0) / union if union > 0 else 0.0


def monotone(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The longest run of points, in rate order, whose quality rises strictly with rate."""
    pts = sorted((float(r), float(q)) for r, q in points)
    best: list[list[tuple[float, float]]] = []
    for i, (r, q) in enumerate(pts):
        chain = [(r, q)]
        for j in range(i):
            if pts[j][0] < r and pts[j][1] < q and len(best[j]) + 1 > len(chain):
                chain = best[j] + [(r, q)]
        best.append(chain)
    return max(best, key=len) if best else []


def bd_rate_checked(
    anchor: Sequence[Sequence[float]],
    test: Sequence[Sequence[float]],
    method: str = "pchip",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> BDResult:
    """BD-rate of ``test`` vs ``anchor`` with its overlap and flags (see the module docstring).

    Raises :class:`BDRateError` when no number can be given (fewer than 4
    points, or fewer than 4 monotonic ones, non-finite values, no overlap).
    """
    flags = []
    curves = []
    for which, points in (("anchor", anchor), ("test", test)):
        _curve_shape(points, which)
        kept = monotone(points)
        if len(kept) < len(points) and len(kept) >= 4:
            dropped = sorted(set(map(tuple, np.asarray(points, dtype=float).tolist())) - set(kept))
            flags.append(
                f"{which} is not monotonic: computed on {len(kept)} of {len(points)} points "
                "(dropped " + ", ".join(f"({r:.4g}, {q:.4g})" for r, q in dropped) + ")"
            )
            points = kept
        curves.append(points)
    value = bd_rate(curves[0], curves[1], method)
    ov = overlap(curves[0], curves[1])
    if ov < min_overlap:
        flags.append(f"the curves overlap on {ov:.0%} of their PSNR range (< {min_overlap:.0%})")
    return BDResult(value, ov, flags)


def _curve_shape(points: Sequence[Sequence[float]], which: str) -> None:
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise BDRateError(f"{which}: expected a sequence of (bpp, psnr) pairs, got {points!r}")
    if not np.isfinite(arr).all():
        raise BDRateError(f"{which}: non-finite values in {arr.tolist()}")


def bd_rate(
    anchor: Sequence[Sequence[float]],
    test: Sequence[Sequence[float]],
    method: str = "pchip",
) -> float:
    """BD-rate of ``test`` vs ``anchor`` in percent; each is a sequence of ``(bpp, psnr)``."""
    import bjontegaard  # imports matplotlib.pyplot: only when a BD metric is computed

    return _bd(anchor, test, method, bjontegaard.bd_rate, axis=1, unit="dB")


def bd_psnr(
    anchor: Sequence[Sequence[float]],
    test: Sequence[Sequence[float]],
    method: str = "pchip",
) -> float:
    """BD-PSNR of ``test`` vs ``anchor`` in dB; each is a sequence of ``(bpp, psnr)``."""
    import bjontegaard

    return _bd(anchor, test, method, bjontegaard.bd_psnr, axis=0, unit="bpp")
