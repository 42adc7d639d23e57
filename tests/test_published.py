"""Published points against published points (qbench/report/published.py): STanH's
published Kodak points against the separately trained Zou 2022 models, by qbench's BD-rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qbench.registry import QbenchError
from qbench.report.published import COMPARISONS, compare, comparisons, load_curve

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"


def test_stanh_against_the_separately_trained_models():
    (c,) = comparisons(PUBLISHED)
    assert (c.test.file, c.anchor.file) == ("stanh-kodak.json", "stf-cnn-kodak.json")
    # PCHIP (qbench's BD-rate, the CTC spreadsheet's): +4.350 %, computed on the 52 % of the
    # PSNR range both cover (STanH's 30.71-35.09 dB inside STF's 29.22-37.72 dB), so flagged
    assert c.result.value == pytest.approx(4.3501, abs=1e-4)
    assert c.result.overlap == pytest.approx(0.5153, abs=1e-4)
    assert c.result.flags == ["the curves overlap on 52% of their PSNR range (< 75%)"]
    assert c.cubic == pytest.approx(4.2012, abs=1e-4)  # the cubic fit of VCEG-M33
    assert c.test.psnr_range() == pytest.approx((30.7053, 35.0858), abs=1e-4)
    assert c.anchor.psnr_range() == (29.22, 37.72)


def test_the_points_are_the_published_ones_with_their_source():
    stanh = load_curve(PUBLISHED / "stanh-kodak.json")
    stf = load_curve(PUBLISHED / "stf-cnn-kodak.json")
    assert len(stanh.points) == 7 and len(stf.points) == 6
    kinds = json.loads((PUBLISHED / "stanh-kodak.json").read_text())["type_of_point"]
    assert sorted(set(kinds)) == ["Anchor", "Derivation"] and kinds.count("Anchor") == 1
    for curve in (stanh, stf):
        assert curve.dataset == "kodak"
        assert len(curve.source["commit"]) == 40 and len(curve.source["sha256"]) == 64
        assert curve.source["licence"]
    assert stf.points[0] == (0.127, 29.22)


def test_a_bad_curve_or_listing_names_its_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bpp": [0.1, 0.2], "psnr": [30.0]}))
    with pytest.raises(QbenchError, match="bad.json: bpp and psnr"):
        load_curve(bad)
    (tmp_path / COMPARISONS).write_text('[[comparison]]\ntest = "bad.json"\n')
    with pytest.raises(QbenchError, match="comparisons.toml: comparison 1 needs test and anchor"):
        comparisons(tmp_path)
    assert comparisons(tmp_path / "none") == []


def test_curves_of_two_datasets_are_not_compared():
    stanh = load_curve(PUBLISHED / "stanh-kodak.json")
    other = load_curve(PUBLISHED / "stf-cnn-kodak.json")
    other = type(other)(other.file, other.name, "clic", other.points, other.source)
    with pytest.raises(QbenchError, match="not measured on one dataset"):
        compare(other, stanh)
