"""Paired comparisons over seeds: the statistics (against scipy and by hand), and the report's
pairwise tables rebuilt from the committed runs (no training: their rows are real results)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qbench.report.paired import (
    BD_WORDS,
    NOT_RESOLVED,
    ONE_SEED,
    half_width,
    interval_text,
    mde,
    paired,
    t_quantile,
    verdict_text,
)

# -- the statistics --------------------------------------------------------------------------


def test_t_quantiles_are_students():
    # printed tables: t(0.975, 2) = 4.303, t(0.80, 2) = 1.061, t(0.975, 9) = 2.262
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.80, 2) == pytest.approx(1.060660, abs=1e-6)
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)
    assert math.isnan(t_quantile(0.975, 0))


def test_the_interval_is_the_paired_t_tests():
    a = np.array([25.1, 26.3, 27.0, 27.4, 25.9])
    b = np.array([25.4, 26.2, 27.5, 27.9, 26.3])
    p = paired(b - a)
    res = stats.ttest_rel(b, a)
    ci = res.confidence_interval(0.95)
    assert p.interval == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert p.mean == pytest.approx(float(np.mean(b - a)))
    assert p.sd == pytest.approx(float(np.std(b - a, ddof=1)))
    # resolved exactly when the paired t-test rejects at two-sided 5 %
    assert p.resolved == (res.pvalue < 0.05)
    assert p.n == 5 and p.agreement() == "4/5"  # one seed of five went the other way


def test_mde_is_the_formula_and_has_about_80_percent_power():
    sd, n = 1.7, 3
    expected = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.80, 2)) * sd / math.sqrt(3)
    assert mde(sd, n) == pytest.approx(expected, rel=1e-12)
    assert mde(sd, n) == pytest.approx((4.302653 + 1.060660) * 1.7 / 3**0.5, abs=1e-5)  # by hand
    assert math.isnan(mde(sd, 1))
    # the exact power of the paired t-test at that effect (non-central t): close to 80 %
    for n in (3, 5, 10):
        dof, nc = n - 1, mde(1.0, n) * math.sqrt(n)
        tc = stats.t.ppf(0.975, dof)
        power = 1 - stats.nct.cdf(tc, dof, nc) + stats.nct.cdf(-tc, dof, nc)
        assert 0.76 < power <= 0.80, (n, power)


def test_verdicts_on_constructed_seeds():
    # every seed the same sign, little spread: resolved, in the comparison's words
    better = paired([-3.30, -1.73, -1.86], BD_WORDS)
    assert better.verdict == "better" and better.agreement() == "3/3"
    assert verdict_text(better) == "better"
    assert better.mean == pytest.approx(-2.2967, abs=1e-4)
    assert better.half == pytest.approx(2.1645, abs=1e-4)  # 4.3027 * 0.87134 / sqrt(3)
    assert paired([3.30, 1.73, 1.86], BD_WORDS).verdict == "worse"
    assert paired([0.3, 0.2, 0.25]).verdict == "higher"
    assert paired([-0.3, -0.2, -0.25]).verdict == "lower"
    # same mean, seeds that disagree: not resolved, with what the run could have seen
    mixed = paired([-6.0, 3.0, -4.0], BD_WORDS)
    assert mixed.verdict == NOT_RESOLVED and mixed.agreement() == "2/3"
    sd = float(np.std([-6.0, 3.0, -4.0], ddof=1))
    assert mixed.mde == pytest.approx((4.302653 + 1.060660) * sd / math.sqrt(3), rel=1e-6)
    assert verdict_text(mixed, " %") == f"{NOT_RESOLVED} (MDE {mixed.mde:.2f} %)"
    assert mixed.mde > abs(mixed.mean)  # the effect seen is below what 3 seeds can resolve
    # a difference of exactly zero on every seed is no finding, and says why
    same = paired([0.0, 0.0, 0.0])
    assert same.verdict == NOT_RESOLVED and same.agreement() == "0/3"
    assert verdict_text(same) == f"{NOT_RESOLVED} (equal on every seed)"
    # the same difference on every seed: no spread, resolved
    assert paired([0.5, 0.5]).verdict == "higher" and paired([0.5, 0.5]).half == 0.0


def test_one_seed_gives_no_interval_and_no_verdict():
    one = paired([-2.5], BD_WORDS)
    assert one.n == 1 and one.mean == -2.5 and one.agreement() == "1/1"
    assert one.verdict == "" and not one.resolved
    assert math.isnan(one.half) and math.isnan(one.mde) and math.isnan(one.sd)
    assert interval_text(one) == ONE_SEED == "one seed: no interval over training"
    assert verdict_text(one) == "no verdict"
    assert math.isnan(half_width(1.0, 1))


def test_no_seed_or_a_non_finite_one_is_refused():
    with pytest.raises(ValueError, match="at least one seed"):
        paired([])
    with pytest.raises(ValueError, match="non-finite"):
        paired([1.0, float("nan")])
