"""BD-rate and BD-PSNR: analytic cases, the VCEG-M33 polynomial, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.bdrate import BDRateError, bd_psnr, bd_rate

ANCHOR = [(0.2, 28.1), (0.4, 30.9), (0.8, 33.8), (1.2, 35.6)]
TEST = [(0.19, 28.3), (0.38, 31.1), (0.75, 33.9), (1.1, 35.7)]


def vceg_m33_bd_rate(anchor, test):
    """The original VCEG-M33 algorithm written out: cubic fit of log rate vs PSNR."""
    ra, qa = np.log(np.array(anchor)[:, 0]), np.array(anchor)[:, 1]
    rt, qt = np.log(np.array(test)[:, 0]), np.array(test)[:, 1]
    pa, pt = np.polyfit(qa, ra, 3), np.polyfit(qt, rt, 3)
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    ia, it = np.polyint(pa), np.polyint(pt)
    avg = (
        (np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ia, hi) - np.polyval(ia, lo))
    ) / (hi - lo)
    return (np.exp(avg) - 1) * 100


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_identical_curves_give_zero(method):
    assert bd_rate(ANCHOR, ANCHOR, method) == pytest.approx(0, abs=1e-9)
    assert bd_psnr(ANCHOR, ANCHOR, method) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("factor", [0.9, 1.25])
def test_scaled_rates_give_exact_percentage(method, factor):
    test = [(r * factor, q) for r, q in ANCHOR]
    assert bd_rate(ANCHOR, test, method) == pytest.approx((factor - 1) * 100, abs=1e-6)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_shifted_psnr_gives_exact_bd_psnr(method):
    test = [(r, q + 0.5) for r, q in ANCHOR]
    assert bd_psnr(ANCHOR, test, method) == pytest.approx(0.5, abs=1e-6)


def test_cubic_matches_vceg_m33_reference():
    assert bd_rate(ANCHOR, TEST, "cubic") == pytest.approx(vceg_m33_bd_rate(ANCHOR, TEST), abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = np.sort(rng.uniform(0.05, 2.0, 4))
        q = np.sort(rng.uniform(25, 40, 4))
        a = list(zip(r, q))
        t = list(zip(r * rng.uniform(0.8, 1.2), q + rng.uniform(-0.3, 0.3)))
        assert bd_rate(a, t, "cubic") == pytest.approx(vceg_m33_bd_rate(a, t), abs=1e-6)


def test_readme_example_better_curve_is_negative():
    value = bd_rate(ANCHOR, TEST)
    assert -15 < value < -3


def test_errors_name_the_problem():
    with pytest.raises(BDRateError, match="at least 4 points, got 3"):
        bd_rate(ANCHOR[:3], TEST)
    with pytest.raises(BDRateError, match="not monotonic"):
        bd_rate(ANCHOR, [(0.2, 28.0), (0.4, 27.0), (0.8, 33.0), (1.2, 35.0)])
    with pytest.raises(BDRateError, match="do not overlap"):
        bd_rate(ANCHOR, [(r, q + 20) for r, q in ANCHOR])
    with pytest.raises(BDRateError, match="method"):
        bd_rate(ANCHOR, TEST, "akima2")
