"""A run made in several ``qbench run`` sessions keeps its whole wall time in its manifest."""

from __future__ import annotations

import json

import pandas as pd

import qbench.plugins
from qbench.plan.matrix import load_matrix
from qbench.report.summary import _how_long
from qbench.run.runner import run_matrix

from .test_runner import tiny


def _run(matrix, out):
    return run_matrix(
        matrix, out, workers=1, device="cpu", show_progress=False, echo=lambda *_: None
    )


def test_each_session_that_ran_jobs_is_recorded_and_a_resume_with_none_adds_none(tmp_path):
    plugins = qbench.plugins.get_plugins()
    m = load_matrix(tiny(tmp_path, lambdas="[0.01, 0.02]"), plugins.registry)
    out = tmp_path / "run"
    _run(m, out)
    first = json.loads((out / "manifest.json").read_text())["sessions"]
    assert len(first) == 1 and first[0]["jobs"] == 2 and first[0]["workers"] == 1
    assert first[0]["started"] <= first[0]["last_job"] <= first[0]["finished"]

    # one job's row removed: the next session runs that job alone, the first is kept
    next(iter(sorted((out / "rows").glob("*.json")))).unlink()
    _run(m, out)
    second = json.loads((out / "manifest.json").read_text())["sessions"]
    assert second[0] == first[0] and len(second) == 2 and second[1]["jobs"] == 1

    _run(m, out)  # everything finished: a session that ran nothing is no session
    assert json.loads((out / "manifest.json").read_text())["sessions"] == second


def test_the_wall_time_is_the_sum_of_the_sessions_a_killed_one_to_its_last_job():
    manifest = {
        "started": "2026-12-07T09:00:00+0000",
        "finished": "2026-12-07T09:00:00+0000",  # the last `qbench run` ran nothing
        "sessions": [
            {"started": "2026-12-07T05:00:00+0000", "last_job": "2026-12-07T05:40:00+0000"},
            {"started": "2026-12-07T06:00:00+0000", "finished": "2026-12-07T06:30:30+0000"},
        ],
    }
    line = _how_long(manifest, pd.DataFrame())
    assert (
        "wall time 1 h 10 min (2 `qbench run` sessions summed, the run resumed 1 time(s))" in line
    )
