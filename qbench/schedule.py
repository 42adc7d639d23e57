"""Statistics over the training schedule: where they are measured and how a row sums them up.

A *schedule statistic* is a metric with ``per_probe`` (``mismatch``,
``gradients``). It is measured at the ``[eval] schedule`` points of training
progress ``t`` (default 0.1, 0.25, 0.5, 0.75 and 1.0), always on the job's
fixed probe set, with the same number of draws ``K``, and with the model and
its quantizers in the state they had at that point (a quantizer that anneals
to rounding is measured while it still is a surrogate). One *record* per
point goes to ``schedule.csv``; the job's row gets, for each statistic ``c``:

* ``c``, ``c_lo``, ``c_hi``, ``c_note``: the final state (``t = 1``) with its
  95 % interval over the probe batches;
* ``c_avg``, ``c_avg_lo``, ``c_avg_hi``, ``c_avg_note``: the training average,
  the area under the schedule divided by its length (trapezoid rule over the
  points). Its interval is the same average of the points' interval ends:
  the points share the probe set, so their errors are positively correlated,
  and since the standard deviation of a weighted sum is at most the weighted
  sum of the standard deviations, this interval is conservative.

A ``note`` says when a value is exact by construction ("exact: deterministic
surrogate") or carries a caveat (a flag of the estimator); the report shows
such values as what they are, not as findings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qbench.analysis import Estimate

#: The suffixes of a statistic's columns in a row (final state, then training average).
FINAL_SUFFIXES = ("", "_lo", "_hi", "_note")
AVERAGE_SUFFIXES = ("_avg", "_avg_lo", "_avg_hi", "_avg_note")


def probe_steps(schedule: Sequence[float], steps: int) -> dict[int, float]:
    """``{step: progress}``: each schedule point at the nearest step of a run of ``steps``.

    Points that fall on one step are measured once; ``t = 1`` is ``steps``
    (after the last step, the final state).
    """
    out: dict[int, float] = {}
    for t in schedule:
        step = min(steps, max(0, round(t * steps)))
        out[step] = step / steps if steps else 1.0
    return out


def record(progress: float, step: int, estimates: dict[str, Estimate]) -> dict[str, Any]:
    """One point's row of ``schedule.csv``."""
    out: dict[str, Any] = {"progress": progress, "step": step}
    for name, e in estimates.items():
        out[name] = e.value
        out[f"{name}_lo"] = e.low
        out[f"{name}_hi"] = e.high
        out[f"{name}_exact"] = e.exact
        out[f"{name}_flag"] = e.flag
    return out


def estimate_at(rec: dict[str, Any], name: str) -> Estimate:
    """The estimate of statistic ``name`` stored in a record."""
    return Estimate(
        float(rec[name]),
        float(rec[f"{name}_lo"]),
        float(rec[f"{name}_hi"]),
        rec.get(f"{name}_exact", "") or "",
        rec.get(f"{name}_flag", "") or "",
    )


def _note(e: Estimate) -> str:
    if e.exact:
        return f"exact: {e.exact}"
    return e.flag


def training_average(records: Sequence[dict[str, Any]], name: str) -> Estimate:
    """Trapezoid average of ``name`` over the records' progress (see the module docstring)."""
    pts = sorted((r["progress"], estimate_at(r, name)) for r in records if name in r)
    if len(pts) < 2:
        return Estimate.undefined("fewer than two schedule points (not trained here)")
    span = pts[-1][0] - pts[0][0]

    def area(part: str) -> float:
        total = 0.0
        for (t0, e0), (t1, e1) in zip(pts, pts[1:]):
            total += (t1 - t0) * (getattr(e0, part) + getattr(e1, part)) / 2
        return total / span if span > 0 else float("nan")

    estimates = [e for _, e in pts]
    exact = ""
    if all(e.exact for e in estimates):
        reasons = sorted({e.exact for e in estimates})
        exact = f"at every point ({'; '.join(reasons)})"
    flags = [f"t={t:g}: {e.flag}" for t, e in pts if e.flag]
    zero = [f"{t:g}" for t, e in pts if e.exact]
    if zero and not exact:
        reasons = "; ".join(sorted({e.exact for e in estimates if e.exact}))
        flags.append(f"zero by construction at t={', '.join(zero)} ({reasons})")
    return Estimate(area("value"), area("low"), area("high"), exact, "; ".join(flags))


def row_columns(
    records: Sequence[dict[str, Any]], names: Sequence[str], note: str = ""
) -> dict[str, Any]:
    """The row columns of each statistic in ``names``: final state and training average."""
    out: dict[str, Any] = {}
    final = max(records, key=lambda r: r["progress"]) if records else None
    for name in names:
        if final is None or name not in final or final["progress"] < 1.0:
            e = Estimate.undefined(note or "not measured at the final state")
        else:
            e = estimate_at(final, name)
        out.update(dict(zip((name + s for s in FINAL_SUFFIXES), (*_values(e), _note(e)))))
        # a note means the schedule was not measured here: the final state only
        avg = Estimate.undefined(note) if note else training_average(records, name)
        out.update(dict(zip((name + s for s in AVERAGE_SUFFIXES), (*_values(avg), _note(avg)))))
    return out


def _values(e: Estimate) -> tuple[float | None, float | None, float | None]:
    def clean(v: float) -> float | None:
        return v if math.isfinite(v) else None

    return clean(e.value), clean(e.low), clean(e.high)
