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


def test_overlap_is_common_range_over_union():
    from qbench.bdrate import overlap

    a = [(0.1, 30.0), (0.2, 32.0), (0.4, 34.0), (0.8, 36.0)]
    t = [(0.1, 31.0), (0.2, 33.0), (0.4, 35.0), (0.8, 37.0)]
    assert overlap(a, t) == pytest.approx(5 / 7)  # common 31-36 over union 30-37
    assert overlap(a, a) == 1.0


def test_low_overlap_is_computed_and_flagged():
    from qbench.bdrate import bd_rate_checked

    a = [(0.1, 30.0), (0.2, 32.0), (0.4, 34.0), (0.8, 36.0)]
    t = [(0.5, 35.9), (0.7, 37.0), (1.0, 38.0), (1.5, 39.0)]  # overlap 0.1 dB of 9 dB
    res = bd_rate_checked(a, t)
    assert res.overlap == pytest.approx(0.1 / 9)
    assert any("overlap on 1%" in f for f in res.flags)
    assert res.value == pytest.approx(bd_rate(a, t))  # the number is the same, now with its caveat
    assert not bd_rate_checked(a, a).flags


def test_non_monotonic_curve_uses_its_monotone_points():
    from qbench.bdrate import bd_rate_checked, monotone

    a = [(0.1, 30.0), (0.2, 32.0), (0.3, 33.0), (0.4, 34.0), (0.8, 36.0)]
    bent = [(0.1, 30.5), (0.2, 32.5), (0.3, 32.4), (0.4, 34.5), (0.8, 36.5)]
    assert monotone(bent) == [(0.1, 30.5), (0.2, 32.5), (0.4, 34.5), (0.8, 36.5)]
    res = bd_rate_checked(a, bent)
    assert any("computed on 4 of 5 points" in f and "(0.3, 32.4)" in f for f in res.flags)
    assert res.value == pytest.approx(bd_rate(a, [p for p in bent if p != (0.3, 32.4)]))
    with pytest.raises(BDRateError, match="not monotonic"):  # 3 monotone points are too few
        bd_rate_checked(a, [(0.1, 30.5), (0.2, 32.5), (0.3, 32.4), (0.4, 32.3)])


def test_report_shows_overlap_and_flags(tmp_path):
    from qbench.report import write_report

    rows = ["backbone,quantizer,lambda,dataset,seed,job_id,status,bpp,psnr"]
    curves = {
        "noise": [(0.1, 30.0), (0.2, 32.0), (0.4, 34.0), (0.8, 36.0)],
        "far": [(0.5, 35.9), (0.7, 37.0), (1.0, 38.0), (1.5, 39.0)],
        "bent": [(0.1, 30.5), (0.2, 32.5), (0.3, 32.4), (0.4, 34.5), (0.8, 36.5)],
    }
    for q, pts in curves.items():
        for i, (r, p) in enumerate(pts):
            rows.append(f"b,{q},{0.001 * (i + 1)},d,0,{q}{i},ok,{r},{p}")
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    rep = write_report(tmp_path, anchor="noise")
    cells = {r["quantizer"]: r for r in rep.bd_rows}
    assert cells["far"]["flag"] == "low overlap" and cells["far"]["overlap_%"] < 2
    assert cells["bent"]["flag"] == "monotone subset" and cells["noise"]["flag"] == ""
    text = (tmp_path / "report.md").read_text()
    assert "overlap_%" in text and "flagged: the curves overlap on 1%" in text
    strict = write_report(tmp_path, anchor="noise", write=False, min_overlap=0.0)
    assert {r["quantizer"]: r["flag"] for r in strict.bd_rows}["far"] == ""
