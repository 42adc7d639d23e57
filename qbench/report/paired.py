"""Paired comparisons over seeds: two arms compared seed by seed, then over the seeds.

Two arms A and B of a run are trained with the same seeds. Seed ``s`` of both
shares what the seed draws (the initial weights, the training crops in their
order, the probe set), so the seed-to-seed spread of one arm (in the committed
``variable-rate`` run, the ``noise`` curve of seed 1 is 5.6 % and of seed 2 7.5 %
cheaper than seed 0's) largely cancels in the comparison of B's seed ``s`` with
A's seed ``s``. Each
comparison is therefore made seed by seed, over the seeds both arms have,
giving one number ``d_s`` per seed (a BD-rate of B's curve against A's, or the
difference ``B_s - A_s`` of a statistic), and the ``n`` numbers are summarised
by the paired t-test's quantities:

* mean: ``d = (1/n) sum_s d_s``;
* spread: ``sd = sqrt(sum_s (d_s - d)^2 / (n - 1))``;
* 95 % interval over seeds: ``d -+ t_{0.975, n-1} sd / sqrt(n)`` (Student t; it
  assumes the ``d_s`` independent and roughly normal, which a handful of seeds
  cannot check);
* agreement: how many ``d_s`` have the sign of ``d`` (``"3/3"``);
* verdict: *resolved* when the interval excludes 0 (the paired t-test rejects
  ``d = 0`` at two-sided 5 %), in the words of the comparison (``better`` /
  ``worse`` for a BD-rate, negative = fewer bits = better; ``lower`` /
  ``higher`` for a statistic); else *not resolved*;
* minimum detectable effect (MDE), said with every "not resolved":
  ``MDE = (t_{0.975, n-1} + t_{0.80, n-1}) sd / sqrt(n)``, the smallest true mean
  difference that the paired t-test at two-sided 5 % finds with 80 % power
  given the observed spread and the number of seeds (the usual approximation
  with central t quantiles: its exact power, from the non-central t, is 77 %
  with 3 seeds, 79 % with 5, 80 % with 10).

With one seed there is no spread: no interval, no verdict
(:data:`ONE_SEED`). Pure functions of numbers; :mod:`qbench.report.pairwise`
builds the per-seed values from a run's rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Confidence level of every interval over seeds.
LEVEL = 0.95
#: Power at which the minimum detectable effect is given.
POWER = 0.80
#: What a comparison resting on one seed says instead of an interval.
ONE_SEED = "one seed: no interval over training"
#: The verdict of a comparison whose interval contains 0.
NOT_RESOLVED = "not resolved"
#: The verdict words of a BD-rate: negative = fewer bits = better.
BD_WORDS = ("better", "worse")
#: The verdict words of a statistic: the arm's value is below / above the other's.
STATISTIC_WORDS = ("lower", "higher")


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (nan if ``dof < 1``)."""
    if dof < 1:
        return math.nan
    from scipy import stats  # scipy only where an interval is computed

    return float(stats.t.ppf(p, dof))


def half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """Half-width of the two-sided t-interval of a mean: ``t_{(1+level)/2, n-1} sd / sqrt(n)``
    (nan with fewer than 2 values)."""
    if n < 2:
        return math.nan
    return t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)


def mde(sd: float, n: int, level: float = LEVEL, power: float = POWER) -> float:
    """Minimum detectable effect of the paired t-test (see the module):
    ``(t_{(1+level)/2, n-1} + t_{power, n-1}) sd / sqrt(n)`` (nan with fewer than 2 seeds)."""
    if n < 2:
        return math.nan
    dof = n - 1
    return (t_quantile(0.5 + level / 2, dof) + t_quantile(power, dof)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class Paired:
    """One comparison summarised over its seeds (see the module for each quantity).

    Attributes:
        values: the per-seed values ``d_s``, in seed order.
        mean, sd: their mean and standard deviation (``sd`` nan with one seed).
        half: the 95 % interval's half-width (nan with one seed).
        mde: the minimum detectable effect (nan with one seed).
        agree: how many values have the sign of the mean (a zero agrees with no sign).
        verdict: a word of ``words``, :data:`NOT_RESOLVED`, or ``""`` with one seed.
    """

    values: tuple[float, ...]
    mean: float
    sd: float
    half: float
    mde: float
    agree: int
    verdict: str

    @property
    def n(self) -> int:
        """The number of seeds compared."""
        return len(self.values)

    @property
    def resolved(self) -> bool:
        """Whether the 95 % interval excludes 0."""
        return self.verdict not in ("", NOT_RESOLVED)

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % interval ``(mean - half, mean + half)`` (nan with one seed)."""
        return self.mean - self.half, self.mean + self.half

    def agreement(self) -> str:
        """``"k/n"``: how many of the ``n`` seeds have the mean's sign."""
        return f"{self.agree}/{self.n}"


def paired(values: Sequence[float], words: tuple[str, str] = STATISTIC_WORDS) -> Paired:
    """The per-seed values ``values`` of one comparison, summarised (see the module).

    ``words``: the verdict when the interval lies below 0, and when it lies above.
    """
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("a paired comparison needs at least one seed")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"non-finite per-seed value in {vals}")
    n = len(vals)
    mean = math.fsum(vals) / n
    sign = (mean > 0) - (mean < 0)
    agree = sum(1 for v in vals if sign and ((v > 0) - (v < 0)) == sign)
    if n < 2:
        return Paired(vals, mean, math.nan, math.nan, math.nan, agree, "")
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = half_width(sd, n)
    if mean + half < 0:
        verdict = words[0]
    elif mean - half > 0:
        verdict = words[1]
    else:
        verdict = NOT_RESOLVED
    return Paired(vals, mean, sd, half, mde(sd, n), agree, verdict)


def verdict_text(p: Paired, unit: str = "", fmt: str = ".2f") -> str:
    """The verdict as a table shows it: the word; "not resolved" with its minimum detectable
    effect (``MDE 1.23 %``, ``fmt`` its format; a difference of exactly 0 on every seed says
    so); with one seed ``no verdict``."""
    if p.n < 2:
        return "no verdict"
    if p.resolved:
        return p.verdict
    if p.sd == 0 and p.mean == 0:
        return f"{NOT_RESOLVED} (equal on every seed)"
    return f"{NOT_RESOLVED} (MDE {p.mde:{fmt}}{unit})"


def interval_text(p: Paired, fmt: str = ".2f") -> str:
    """The 95 % interval over seeds as a table shows it: ``[lo, hi]`` (``fmt``: the numbers'
    format), or :data:`ONE_SEED`."""
    if p.n < 2:
        return ONE_SEED
    lo, hi = p.interval
    return f"[{lo:{fmt}}, {hi:{fmt}}]"
