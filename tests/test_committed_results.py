"""A committed study cannot drift from the code that produced it.

Every run folder under ``results/`` (a folder holding ``manifest.json`` and
``report.md``) is rebuilt from its CSV files and manifest by qbench's own report
code (:func:`qbench.report.write_report`, what ``qbench report`` runs) in a
temporary folder of the same name, and the rebuilt ``report.md`` must equal the
committed one, line for line. Plots are not compared. The generated part of
``results/README.md`` is what ``qbench summarize results/`` writes from the same files.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from qbench.registry import QbenchError
from qbench.report import write_report
from qbench.report.summary import block_of, run_folders, summarize

RESULTS = Path(__file__).resolve().parents[1] / "results"
#: Every committed run folder: a folder under results/ with a manifest.json and a report.md.
RUNS = run_folders(RESULTS)


def _missing_curves(run: Path) -> list[str]:
    """The published curves the run's report draws that are not downloaded here (the report
    says in its notes that a curve is missing, so it rebuilds differently without them)."""
    import json

    from qbench.reference import load

    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    names = manifest.get("matrix", {}).get("report", {}).get("reference_curves") or []
    missing = []
    for name in names:
        try:
            load(name)
        except QbenchError:
            missing.append(name)
    return missing


def rebuild(run: Path, tmp_path: Path) -> str:
    """The report.md that ``qbench report`` writes for a copy of ``run`` (its CSV files and
    manifest, without its report and plots) in a folder of the same name."""
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.png", "report.md"))
    write_report(copy)
    return (copy / "report.md").read_text(encoding="utf-8")


def test_the_committed_runs_are_found():
    assert {"quick", "variable-rate", "stanh-vr"} <= {r.name for r in RUNS}


@pytest.mark.parametrize("run", RUNS, ids=[str(r.relative_to(RESULTS)) for r in RUNS])
def test_report_rebuilds_line_for_line(run, tmp_path):
    missing = _missing_curves(run)
    if missing:
        pytest.skip(
            f"{run.name}: its report draws published curves not downloaded here "
            f"({', '.join(missing)}): `qbench reference-curves --download {' '.join(missing)}`"
        )
    expected = (run / "report.md").read_text(encoding="utf-8").split("\n")
    rebuilt = rebuild(run, tmp_path).split("\n")
    diff = difflib.unified_diff(
        expected, rebuilt, f"results/{run.name}/report.md (committed)", "rebuilt", lineterm=""
    )
    assert rebuilt == expected, "\n".join(diff)


def test_the_readme_holds_the_summary_of_the_committed_runs():
    """results/README.md's generated part is what ``qbench summarize results/`` writes from
    the committed CSV files, manifests and published points (``--update`` rewrites it)."""
    readme = RESULTS / "README.md"
    block = block_of(readme.read_text(encoding="utf-8"), str(readme))
    generated = summarize(RESULTS)
    diff = difflib.unified_diff(
        block.split("\n"), generated.split("\n"), "results/README.md", "generated", lineterm=""
    )
    assert block == generated, (
        "\n".join(diff) + "\n(`qbench summarize results/ --update results/README.md`)"
    )
