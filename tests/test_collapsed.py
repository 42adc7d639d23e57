"""A training that collapses without a non-finite loss is said in the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qbench.report.training import LOSS_RISE, collapsed_trainings

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _run(tmp_path, losses: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"job_id": j, "step": 1 + 50 * i, "loss": v}
        for j, values in losses.items()
        for i, v in enumerate(values)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "history.csv", index=False)
    return pd.DataFrame(
        [
            {"job_id": j, "backbone": "b", "quantizer": q, "lambda": 0.01, "seed": 0}
            for j, q in zip(losses, ["sua", "noise", "ste"], strict=False)
        ]
    )


def test_a_loss_that_ends_over_the_factor_is_flagged_and_one_below_is_not(tmp_path):
    ok = _run(
        tmp_path,
        {
            "a": [2.0, 1.0, 40.0, 2.0 * LOSS_RISE * 1.01],  # ends just over the factor
            "b": [2.0, 9.0, 1.5, 2.0 * LOSS_RISE * 0.99],  # a spike, and an end below it
            "c": [2.0, 1.0, 0.8],
        },
    )
    notes, n = collapsed_trainings(tmp_path, ok)
    assert n == 1 and len(notes) == 1 and notes[0].startswith("job a (b, sua, lambda=0.01, seed=0)")
    assert "collapsed in training" in notes[0] and "step 151" in notes[0]


def test_without_history_nothing_is_said(tmp_path):
    ok = pd.DataFrame([{"job_id": "a", "quantizer": "q", "lambda": 0.01, "seed": 0}])
    assert collapsed_trainings(tmp_path, ok) == ([], 0)


def test_the_committed_reference_study_flags_its_collapses_and_nothing_else():
    # on the context model, sua (partial stop-gradient) ended 7 of its 12 fine-tunings at
    # 5-8 dB with ok rows: before this check the report said so only as a non-monotonic curve
    run = RESULTS / "reference" / "reference-networks"
    ok = pd.read_csv(run / "results.csv")
    notes, n = collapsed_trainings(run, ok[ok["status"] == "ok"])
    assert n == len(notes) == 7
    assert all("(mbt2018, sua, lambda=" in note for note in notes)
    # the mean-scale part, fine-tuned at lambdas up to the initialisation's: none
    run = RESULTS / "reference" / "reference-hyperprior"
    ok = pd.read_csv(run / "results.csv")
    assert collapsed_trainings(run, ok[ok["status"] == "ok"]) == ([], 0)


def test_an_empty_history_is_no_history(tmp_path):
    # the bug this reproduces: a run whose history.csv is empty (no step logged) made
    # every report fail with pandas' EmptyDataError
    (tmp_path / "history.csv").write_text("")
    ok = pd.DataFrame([{"job_id": "a", "quantizer": "q", "lambda": 0.01, "seed": 0}])
    assert collapsed_trainings(tmp_path, ok) == ([], 0)
