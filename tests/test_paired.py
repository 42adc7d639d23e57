"""Paired comparisons over seeds: the statistics (against scipy and by hand), and the report's
pairwise tables rebuilt from the committed runs (no training: their rows are real results)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qbench.report import write_report
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


# -- the report's pairwise tables, rebuilt from the committed runs ---------------------------

RESULTS = Path(__file__).resolve().parents[1] / "results"


def copy_run(name: str, tmp_path: Path, seeds: list[int] | None = None) -> Path:
    """A committed run directory copied under ``tmp_path`` (its plots and report removed),
    with only the rows of ``seeds`` when given."""
    dst = tmp_path / name
    shutil.copytree(RESULTS / name, dst, ignore=shutil.ignore_patterns("*.png", "report.md"))
    if seeds is not None:
        for table in ("results.csv", "schedule.csv", "per_image.csv", "history.csv"):
            path = dst / table
            if path.exists():
                rows = pd.read_csv(path)
                if "seed" in rows.columns:
                    rows[rows["seed"].isin(seeds)].to_csv(path, index=False)
    return dst


def seed_0_rows() -> pd.DataFrame:
    """The committed quick run's rows of seed 0."""
    rows = pd.read_csv(RESULTS / "quick" / "results.csv")
    return rows[rows["seed"] == 0]


def printed_table(text: str, heading: str) -> list[dict[str, str]]:
    """The markdown table under the first line of ``text`` starting with ``heading``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|") and rows:
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header, _, *body = rows
    return [dict(zip(header, r)) for r in body]


def by_hand(run: Path, arm: str, against: str, rate: str) -> list[float]:
    """The BD-rate of ``arm`` against ``against`` seed by seed (the seeds both have),
    straight from results.csv with the bjontegaard package (PCHIP, as qbench's BD-rates)."""
    import bjontegaard

    rows = pd.read_csv(run / "results.csv")
    seeds = [set(rows.loc[rows["quantizer"] == q, "seed"]) for q in (arm, against)]
    out = []
    for seed in sorted(seeds[0] & seeds[1]):
        a = rows[(rows["quantizer"] == against) & (rows["seed"] == seed)].sort_values(rate)
        b = rows[(rows["quantizer"] == arm) & (rows["seed"] == seed)].sort_values(rate)
        out.append(
            bjontegaard.bd_rate(
                a[rate].values,
                a["psnr"].values,
                b[rate].values,
                b["psnr"].values,
                method="pchip",
                require_matching_points=False,
                min_overlap=0,
            )
        )
    return out


@pytest.mark.parametrize(("rate", "word"), [("bpp_bitstream", "bitstream"), ("bpp", "likelihood")])
@pytest.mark.parametrize(("arm", "against"), [("stanh", "stanh-authors"), ("stanh", "qvrf")])
def test_the_printed_paired_bd_rates_are_recomputed_by_hand(tmp_path, arm, against, rate, word):
    run = copy_run("variable-rate", tmp_path)
    report = write_report(run)
    assert report.rate == "bpp_bitstream"  # the default: the real bitstream
    text = (run / "report.md").read_text()
    heading = f"### BD-rate, `mbt2018-mean` on `kodak` (rate: {word}, `{rate}`)"
    table = printed_table(text, heading)
    (row,) = [r for r in table if r["arm"] == arm and r["against"] == against]
    values = by_hand(run, arm, against, rate)
    assert len(values) == 3 and all(v < 0 for v in values)  # every seed: fewer bits
    test = stats.ttest_1samp(values, 0.0)
    lo, hi = test.confidence_interval(0.95)
    assert row[f"bd_rate_{word}_%"] == f"{np.mean(values):.2f}"
    assert row["per seed"] == ", ".join(f"{v:.2f}" for v in values)
    assert row[f"ci95_seeds_{word}_%"] == f"[{lo:.2f}, {hi:.2f}]"
    assert row["seeds"] == "3" and row["agree"] == "3/3"
    assert hi < 0 and row["verdict"] == "better"  # resolved: the interval excludes 0


def test_the_review_figures_on_the_likelihood_rate(tmp_path):
    """What the review computed on the likelihood bpp, and how far the bitstream moves it."""
    run = copy_run("variable-rate", tmp_path)
    report = write_report(run, write=False)
    rows = {(r["arm"], r["against"]): r for r in report.paired_bd["bpp"]}
    mine = rows[("stanh", "stanh-authors")]
    by_seed = by_hand(run, "stanh", "stanh-authors", "bpp")
    assert [round(v, 2) for v in by_seed] == [-3.30, -1.73, -1.86]
    assert mine["bd_rate_%"] == pytest.approx(-2.30, abs=5e-3)
    assert mine["ci95_seeds"] == "[-4.46, -0.13]"
    assert rows[("stanh", "qvrf")]["bd_rate_%"] == pytest.approx(-1.48, abs=5e-3)
    coded = {(r["arm"], r["against"]): r for r in report.paired_bd["bpp_bitstream"]}
    assert coded[("stanh", "stanh-authors")]["bd_rate_%"] == pytest.approx(-3.41, abs=5e-3)
    assert coded[("stanh", "qvrf")]["bd_rate_%"] == pytest.approx(-1.12, abs=5e-3)
    # blends are compared with blends, never with another method's derived curve
    assert ("stanh", "qvrf-interp") not in coded and ("stanh-interp", "qvrf-interp") in coded
    assert all(b == "noise" for a, b in coded if a == "noise" or b == "noise")


def test_one_seed_gives_no_interval_and_no_verdict_in_the_report(tmp_path):
    run = copy_run("quick", tmp_path, seeds=[0])
    report = write_report(run)
    text = (run / "report.md").read_text()
    for word, rate in (("bitstream", "bpp_bitstream"), ("likelihood", "bpp")):
        table = printed_table(text, f"### BD-rate, `mbt2018-mean` on `embedded` (rate: {word}")
        assert [(r["arm"], r["against"]) for r in table] == [
            ("ste", "noise"),
            ("mixed", "noise"),
            ("sua", "noise"),
            ("ste", "mixed"),
            ("ste", "sua"),
            ("mixed", "sua"),
        ]
        assert all(r[f"ci95_seeds_{word}_%"] == ONE_SEED for r in table)
        assert all(r["verdict"] == "no verdict" and r["seeds"] == "1" for r in table)
        # the one seed's figure is still shown: the BD-rate against the anchor's same seed
        (ste,) = [c for c in report.bd_rows if c["quantizer"] == "ste"]
        key = "bd_rate_%" if rate == report.rate else "bd_rate_likelihood_%"
        assert table[0][f"bd_rate_{word}_%"] == f"{ste[key]:.2f}"
    statistics = printed_table(text, "### Schedule statistics, `mbt2018-mean`")
    assert len(statistics) == 6 * 2 * 6  # 6 statistics, final and training average, 6 pairs
    assert all(r["ci95_seeds"] == ONE_SEED and r["verdict"] == "no verdict" for r in statistics)
    # the schedule tables say what their brackets are over; one seed: no over-seeds table
    assert "final [95 % over probe batches]" in text and "Over seeds (" not in text


def three_seeds(tmp_path: Path, shifts: dict[int, float]) -> Path:
    """The quick run's seed 0 with seeds 1 and 2 made of copies of its rows, in which
    `ste`'s final mismatch_rate is moved by ``shifts[seed]`` at every lambda (and each
    trained model keeps a train_id of its own)."""
    run = copy_run("quick", tmp_path, seeds=[0])
    rows = pd.read_csv(run / "results.csv")
    more = []
    for seed, shift in shifts.items():
        copy = rows.assign(seed=seed, train_id=rows["train_id"] + f"-{seed}")
        copy.loc[copy["quantizer"] == "ste", "mismatch_rate"] += shift
        more.append(copy)
    pd.concat([rows, *more]).to_csv(run / "results.csv", index=False)
    return run


def test_statistics_are_compared_seed_by_seed(tmp_path):
    run = three_seeds(tmp_path, {1: 0.004, 2: -0.002})
    report = write_report(run)
    rows = seed_0_rows()
    final = rows.set_index(["quantizer", "lambda"])["mismatch_rate"]
    d0 = float((final["ste"] - final["noise"]).mean())  # seed 0, over the 4 lambdas
    expected = paired([d0, d0 + 0.004, d0 - 0.002])
    (row,) = [
        r
        for r in report.paired_statistics
        if (r["statistic"], r["value"], r["arm"], r["against"])
        == ("mismatch_rate", "final", "ste", "noise")
    ]
    assert row["difference"] == pytest.approx(expected.mean, abs=1e-12)
    assert row["seeds"] == 3 and row["lambdas"] == 4 and row["agree"] == "3/3"
    assert row["ci95_seeds"] == interval_text(expected, ".3g")
    assert expected.resolved and row["verdict"] == "lower"  # ste mismatches less than noise
    # mixed vs noise did not move: the same difference on every seed, no spread
    (same,) = [
        r
        for r in report.paired_statistics
        if (r["statistic"], r["value"], r["arm"], r["against"])
        == ("mismatch_dist", "final", "mixed", "noise")
    ]
    assert same["per seed"].count(",") == 2 and len(set(same["per seed"].split(", "))) == 1
    # the BD-rates of identical seeds: every seed the same number, so no spread either
    bd = {(r["arm"], r["against"]): r for r in report.paired_bd[report.rate]}
    assert bd[("ste", "noise")]["agree"] == "3/3" and bd[("ste", "noise")]["verdict"] == "worse"
    # the schedule tables: a row per seed over the probe batches, then a table over seeds
    text = (run / "report.md").read_text()
    per_model = printed_table(text, "### `mismatch_rate` (mismatch)")
    assert {r["seed"] for r in per_model} == {"0", "1", "2"}
    assert "final [95 % over probe batches]" in per_model[0]
    over = printed_table(text, "Over seeds (95% t-interval over the seeds' values):")
    (ste,) = [r for r in over if r["quantizer"] == "ste" and r["lambda"] == "0.0009"]
    values = [final["ste", 0.0009] + s for s in (0.0, 0.004, -0.002)]
    lo, hi = paired(values).interval
    assert ste["final: mean [95 % over seeds]"].endswith("(3 seeds)")
    assert f"[{lo:.3g}, {hi:.3g}]" in ste["final: mean [95 % over seeds]"]


def test_a_statistic_that_changes_sign_is_not_resolved_and_says_its_mde(tmp_path):
    rows = seed_0_rows()
    final = rows.set_index(["quantizer", "lambda"])["mismatch_rate"]
    d0 = float((final["ste"] - final["noise"]).mean())  # about -0.067
    run = three_seeds(tmp_path, {1: -2 * d0 + 0.05, 2: -2 * d0 + 0.01})
    report = write_report(run, write=False)
    (row,) = [
        r
        for r in report.paired_statistics
        if (r["statistic"], r["value"], r["arm"], r["against"])
        == ("mismatch_rate", "final", "ste", "noise")
    ]
    expected = paired([d0, -d0 + 0.05, -d0 + 0.01])
    assert not expected.resolved and row["agree"] == "2/3"
    assert row["verdict"] == f"not resolved (MDE {expected.mde:.3g})"


def test_only_the_seeds_both_arms_have_are_compared(tmp_path):
    run = copy_run("variable-rate", tmp_path)
    rows = pd.read_csv(run / "results.csv")
    rows = rows[~((rows["quantizer"] == "stanh-authors") & (rows["seed"] == 2))]
    rows.to_csv(run / "results.csv", index=False)
    report = write_report(run, write=False)
    coded = {(r["arm"], r["against"]): r for r in report.paired_bd[report.rate]}
    pair = coded[("stanh", "stanh-authors")]
    assert pair["seeds"] == 2  # seed 2 of stanh has no partner: left out, and said
    assert pair["per seed"] == ", ".join(
        f"{v:.2f}" for v in by_hand(run, "stanh", "stanh-authors", "bpp_bitstream")
    )
    assert any(
        "stanh vs stanh-authors" in n and "seed 2" in n and "no seed 2" in n for n in report.notes
    )
    assert coded[("stanh", "qvrf")]["seeds"] == 3
