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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import bjontegaard
import numpy as np

from qbench.registry import QbenchError

METHODS = ("pchip", "cubic")


class BDRateError(QbenchError, ValueError):
    """Curves on which a BD metric cannot be computed; the message gives the numbers."""


def _curve(points: Sequence[Sequence[float]], which: str) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise BDRateError(f"{which}: expected a sequence of (bpp, psnr) pairs, got {points!r}")
    if len(arr) < 4:
        raise BDRateError(f"{which}: BD metrics need at least 4 points, got {len(arr)}")
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


def bd_rate(
    anchor: Sequence[Sequence[float]],
    test: Sequence[Sequence[float]],
    method: str = "pchip",
) -> float:
    """BD-rate of ``test`` vs ``anchor`` in percent; each is a sequence of ``(bpp, psnr)``."""
    return _bd(anchor, test, method, bjontegaard.bd_rate, axis=1, unit="dB")


def bd_psnr(
    anchor: Sequence[Sequence[float]],
    test: Sequence[Sequence[float]],
    method: str = "pchip",
) -> float:
    """BD-PSNR of ``test`` vs ``anchor`` in dB; each is a sequence of ``(bpp, psnr)``."""
    return _bd(anchor, test, method, bjontegaard.bd_psnr, axis=0, unit="bpp")
