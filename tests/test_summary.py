"""``qbench summarize`` (qbench/report/summary.py) on a real run directory: a copy of the
committed quick run (no training), and the README markers it writes between."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from qbench.cli import main
from qbench.registry import QbenchError
from qbench.report import write_report
from qbench.report.summary import BEGIN, END, block_of, duration, summarize, update

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A results folder holding a copy of the committed quick run (without its plots)."""
    shutil.copytree(
        RESULTS / "quick", tmp_path / "res" / "quick", ignore=shutil.ignore_patterns("*.png")
    )
    return tmp_path / "res"


def _section(text: str, heading: str) -> list[str]:
    """The lines of ``text`` from ``heading`` to the next ``###`` heading."""
    lines = text.split("\n")
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("### ")), None)
    return lines[start:end]


def test_a_run_says_what_on_what_how_long_and_its_paired_table(folder):
    text = summarize(folder)
    lines = _section(text, "### `quick/`")
    what = "\n".join(lines)
    assert "- **what**: matrix `quick`, 48 jobs (48 ok)" in what
    assert "  - quantizers: `noise`; `ste`; `mixed`; `sua`" in what
    assert "  - lambdas: 0.0009, 0.0025, 0.0067, 0.018; seeds: 0, 1, 2" in what
    assert (
        "  - training: steps = 200, batch_size = 8, crop = 64, lr = 0.0002, on `embedded`" in what
    )
    assert "1 torch thread(s) each, GPUs: none; qbench 0.1.0, torch " in what
    # the committed manifest was rewritten by a qbench run that found every job finished
    assert "no wall time: the manifest's last `qbench run` started and finished" in what
    assert "8 min 22 s of training and evaluation summed over the rows" in what
    # the paired table is the report's, row for row, on the report's rate
    report = write_report(folder / "quick", write=False)
    rows = report.paired_bd[report.rate]
    table = [line for line in lines if line.startswith("| `")]
    assert len(table) == len(rows) == 6
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == f"`{row['arm']}` vs `{row['against']}`"
        assert cells[1:6] == [
            f"{row['bd_rate_%']:+.2f} %",
            row["per seed"],
            row["ci95_seeds"],
            row["agree"],
            row["verdict"],
        ]
    assert table[0].split("|")[1:3] == [" `ste` vs `noise`   ", " +3.05 % "]
    assert "not resolved (MDE 9.79 %)" in table[0]
    assert "### Published points" not in text  # no published/ folder here


def test_a_session_that_ran_the_jobs_gives_the_wall_time(folder):
    path = folder / "quick" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["started"], manifest["finished"] = (
        "2026-12-07T05:00:00+0000",
        "2026-12-07T05:08:26+0000",
    )
    path.write_text(json.dumps(manifest))
    assert "- **how long**: wall time 8 min 26 s (the manifest's last `qbench run`" in summarize(
        folder
    )


def test_durations():
    assert [duration(s) for s in (42, 501.5, 3491, 4000)] == [
        "42 s",
        "8 min 22 s",
        "58 min 11 s",
        "1 h 06 min",
    ]


def test_nothing_to_summarize_is_said(tmp_path):
    with pytest.raises(QbenchError, match="no run folder"):
        summarize(tmp_path)


def test_update_replaces_only_what_lies_between_the_markers(folder, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Runs\n\nprose\n\n## Generated summary\n\n{BEGIN}\nold\n{END}\n\ntail\n")
    text = summarize(folder)
    assert update(readme, text) is True
    after = readme.read_text()
    assert after == f"# Runs\n\nprose\n\n## Generated summary\n\n{BEGIN}\n{text}{END}\n\ntail\n"
    assert block_of(after, "README.md") == text
    assert update(readme, text) is False  # the same summary: the file is left as it is


@pytest.mark.parametrize(
    "body", ["no markers\n", f"{END}\n{BEGIN}\n", f"{BEGIN}\n{BEGIN}\n{END}\n", f"{BEGIN}\n"]
)
def test_update_without_the_markers_names_the_file(tmp_path, body):
    readme = tmp_path / "README.md"
    readme.write_text(body)
    with pytest.raises(QbenchError, match=f"{readme}: expected one '{BEGIN}' line"):
        update(readme, "summary\n")
    assert readme.read_text() == body


def test_cli_prints_writes_and_updates(folder, tmp_path, capsys):
    assert main(["summarize", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert printed == summarize(folder)
    out = tmp_path / "summary.md"
    assert main(["summarize", str(folder), "--out", str(out)]) == 0
    assert out.read_text() == printed
    readme = tmp_path / "README.md"
    readme.write_text("# Runs\n")
    capsys.readouterr()
    assert main(["summarize", str(folder), "--update", str(readme)]) == 2
    assert f"qbench: error: {readme}: expected one '{BEGIN}'" in capsys.readouterr().err


def test_an_unreadable_manifest_is_named(folder):
    path = folder / "quick" / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(QbenchError, match=f"{path}: not a readable manifest"):
        summarize(folder)


def test_rows_without_timing_columns_sum_to_nothing(folder):
    path = folder / "quick" / "results.csv"
    rows = pd.read_csv(path)
    rows.drop(columns=["train_seconds", "eval_seconds"]).to_csv(path, index=False)
    assert "- **how long**: 0 s of training and evaluation summed over the rows" in summarize(
        folder
    )
