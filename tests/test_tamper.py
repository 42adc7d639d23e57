"""A run directory whose files were changed by someone else: one-line errors or correct
results, never a traceback, never a write outside the run directory; the user's own files
are never written over; heartbeats tell a reused pid; Slurm jobs are resubmitted only when
Slurm says they are gone."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

import qbench.plugins
from qbench.cli import main
from qbench.plan.matrix import load_matrix
from qbench.report.status import run_status
from qbench.results import RunDir, RunDirError, atomic_write_text
from qbench.snapshots import Snapshots

from .test_runner import tiny

PATHLIKE = "../../../../x"


def listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative), to compare before and after."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """One real finished run of two jobs (plus a snapshot record, a heartbeat and a
    submission record, written by the code that writes them) and its matrix file."""
    base = tmp_path_factory.mktemp("finished")
    qbench.plugins.reset()
    matrix = tiny(base, '["noise"]', "[0.01, 0.1]", steps=2)
    out = base / "run"
    assert main(["run", str(matrix), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    run_dir = RunDir(out)
    train_id = run_dir.rows()[0]["train_id"]
    Snapshots(run_dir.ckpt_dir, train_id).save(1, {"steps": 2, "weights": [1.0, 2.0]})
    run_dir.mark_running(train_id, {"step": 1, "steps": 2})
    run_dir.record_submission(
        train_id,
        {"executor": "submitit-local", "scheduler_job_id": "4242_0", "attempt": 1},
    )
    return matrix, out


def copy_run(finished, tmp_path) -> tuple[Path, Path]:
    matrix, out = finished
    case = tmp_path / "case"
    case.mkdir()
    shutil.copytree(out, case / "run")
    return matrix, case / "run"


# -- names read from files never become paths outside ------------------------------------
def test_tampered_run_id_moves_nothing_outside(finished, tmp_path):
    matrix, out = copy_run(finished, tmp_path)
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "id": PATHLIKE}))
    before = listing(tmp_path.parent)
    identity = load_matrix(matrix, qbench.plugins.get_plugins().registry).identity()
    said = RunDir(out).claim(identity, force=True, append=False)  # what `run --force` does
    after = listing(tmp_path.parent)
    inside = f"{tmp_path.name}/case/run/"
    assert {p for p in after - before if not p.startswith(inside)} == set()
    assert "superseded" in said and PATHLIKE not in said
    assert list((out / "superseded").iterdir())[0].name.startswith("unknown-")
    (out / "run.json").write_text(json.dumps({**record, "id": PATHLIKE}))
    shutil.copytree(
        out / "superseded" / next((out / "superseded").iterdir()).name / "rows",
        out / "rows",
        dirs_exist_ok=True,
    )
    with pytest.raises(RunDirError, match=r"run\.json: not a qbench run record \(id '\.\./"):
        RunDir(out).claim(identity, force=False, append=False)


def test_tampered_row_ids_are_refused_by_a_run(finished, tmp_path):
    _, out = copy_run(finished, tmp_path)
    first = sorted((out / "rows").glob("*.json"))[0]
    row = json.loads(first.read_text())
    first.write_text(json.dumps({**row, "job_id": PATHLIKE}))
    run_dir = RunDir(out)
    assert len(run_dir.rows()) == 1
    assert run_dir.unreadable == [
        f"rows/{first.name}: job_id {PATHLIKE!r} is not this file's id {first.stem!r}"
    ]
    with pytest.raises(RunDirError) as err:
        run_dir.finished()
    assert first.name in str(err.value) and "\n" not in str(err.value)


def test_tampered_manifest_job_id_is_an_error(finished, tmp_path, capsys):
    _, out = copy_run(finished, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["jobs"][0]["train_id"] = PATHLIKE
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["status", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "jobs[0].train_id '../../../../x' is not a qbench id" in err


# -- the user's own files ---------------------------------------------------------------
def test_out_with_the_users_files_is_refused(finished, tmp_path, capsys):
    matrix, _ = finished
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("report.md", "results.csv", "manifest.json"):
        (out / name).write_text(f"my own {name}\n")
    before = listing(tmp_path)
    argv = ["run", str(matrix), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json, report.md, results.csv" in err
    assert listing(tmp_path) == before
    assert all((out / n).read_text() == f"my own {n}\n" for n in ("report.md", "results.csv"))


def test_an_empty_out_and_one_left_before_the_claim_are_used(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    RunDir(empty).check_ours()
    started = tmp_path / "started"  # killed after ensure(), before run.json
    RunDir(started).ensure()
    (started / ".qbench.lock").write_bytes(b"")
    RunDir(started).check_ours()
    (started / "rows" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds rows"):
        RunDir(started).check_ours()


# -- modes and atomic report ------------------------------------------------------------
def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_report_md_is_replaced_whole(finished, tmp_path):
    """An atomic write replaces report.md; writing into it would change a hard link's other
    name (and leave a half file to a reader or a kill)."""
    _, out = copy_run(finished, tmp_path)
    other = tmp_path / "elsewhere.md"
    other.write_text("mine\n")
    (out / "report.md").unlink()
    os.link(other, out / "report.md")
    assert main(["report", str(out)]) == 0
    assert other.read_text() == "mine\n"
    assert (out / "report.md").read_text().startswith("#")


# -- results.csv and rows that do not tell the whole run ----------------------------------
@pytest.mark.parametrize(
    "cut, said",
    [("header", "holds no row"), ("half", "ends mid-line (truncated)")],
)
def test_a_cut_results_csv_is_said_and_rebuilt_from_rows(finished, tmp_path, capsys, cut, said):
    _, out = copy_run(finished, tmp_path)
    text = (out / "results.csv").read_text()
    cut_text = text.splitlines(True)[0] if cut == "header" else text[: len(text) * 3 // 4]
    (out / "results.csv").write_text(cut_text)
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"warning: {out / 'results.csv'}: {said}" in captured.err
    assert "2 jobs" in (out / "report.md").read_text() or "| 0.1 " in captured.out
    assert said in (out / "report.md").read_text()
    assert len(run_status(out)) == 2


def test_header_only_results_without_rows_is_an_error(finished, tmp_path, capsys):
    _, out = copy_run(finished, tmp_path)
    shutil.rmtree(out / "rows")
    (out / "results.csv").write_text((out / "results.csv").read_text().splitlines(True)[0])
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no row, and rows/ holds no finished job" in err


def test_a_corrupt_row_file_is_named_not_dropped_silently(finished, tmp_path, capsys):
    _, out = copy_run(finished, tmp_path)
    (out / "results.csv").unlink()
    bad = sorted((out / "rows").glob("*.json"))[0]
    bad.write_text('{"job_id": ')
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: rows/{bad.name}: not readable JSON (JSONDecodeError)" in err
    assert f"rows/{bad.name}" in (out / "report.md").read_text()
    assert main(["status", str(out)]) == 0
    assert f"warning: rows/{bad.name}" in capsys.readouterr().out


# -- heartbeats and Slurm ---------------------------------------------------------------
def test_a_heartbeat_of_a_reused_pid_is_not_running(tmp_path):
    from qbench.results import process_start

    if process_start(os.getpid()) is None:
        pytest.skip("no /proc/<pid>/stat on this system")
    run_dir = RunDir(tmp_path)
    train_id, job_id = "a" * 12, "b" * 12
    (tmp_path / "manifest.json").write_text(
        json.dumps({"jobs": [{"job_id": job_id, "train_id": train_id, "describe": "j"}]})
    )
    run_dir.mark_running(train_id, {"step": 1, "steps": 9})
    assert [s.state for s in run_status(tmp_path)] == ["running"]
    beat = json.loads((tmp_path / "running" / f"{train_id}.json").read_text())
    assert beat["pid"] == os.getpid() and beat["started"] == process_start(os.getpid())
    beat["started"] -= 1  # the pid is alive, but it is another process's now
    (tmp_path / "running" / f"{train_id}.json").write_text(json.dumps(beat))
    assert [s.state for s in run_status(tmp_path)] == ["interrupted"]


def _fake_slurm(folder: Path, sacct: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, body in (("sbatch", "echo 'Submitted batch job 4242'"), ("srun", "exit 1")):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
    (folder / "sacct").write_text(f"#!/bin/sh\n{sacct}\n")
    for p in folder.iterdir():
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.mark.parametrize(
    "sacct, expect",
    [
        ("exit 0", None),  # Slurm does not know the job: submitted again
        ("echo '4242_0|COMPLETED'", None),
        ("echo '4242_0|RUNNING'; echo '4242_0.batch|RUNNING'", "4242_0"),
        ("echo 'slurmdbd: connection refused' >&2; exit 1", "error"),
    ],
)
def test_reattach_resubmits_only_a_job_slurm_does_not_have(tmp_path, monkeypatch, sacct, expect):
    pytest.importorskip("submitit")
    from qbench.plan.configs import ExecutorConfig
    from qbench.run.executors import Dispatch, ExecutorError, build_executor

    from .test_executors import SETTINGS

    bin_dir = _fake_slurm(tmp_path / "bin", sacct)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    m = load_matrix(tiny(tmp_path, steps=2), qbench.plugins.get_plugins().registry)
    executor = build_executor(ExecutorConfig(**{**SETTINGS, "kind": "slurm"}))
    run_dir = RunDir(tmp_path / "run")
    run_dir.ensure()
    job = m.jobs[0]
    run_dir.record_submission(job.train_id, {"executor": "slurm", "scheduler_job_id": "4242_0"})
    if expect == "error":
        with pytest.raises(ExecutorError, match="Slurm job 4242_0 .*connection refused"):
            executor.reattach([(0, job)], Dispatch(run_dir))
        return
    found = executor.reattach([(0, job)], Dispatch(run_dir))
    assert (found and found.job_id) == expect
    run_dir.record_submission(job.train_id, {"executor": "slurm", "scheduler_job_id": PATHLIKE})
    with pytest.raises(ExecutorError, match="is not a Slurm job id"):
        executor.reattach([(0, job)], Dispatch(run_dir))


# -- every file of a finished run, tampered in turn -------------------------------------
def _pathlike(value):
    """``value`` with every string (keys kept) replaced by a path-like string."""
    if isinstance(value, str):
        return PATHLIKE
    if isinstance(value, dict):
        return {k: _pathlike(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pathlike(v) for v in value]
    return value


def _wrong_type(value):
    """A list where the record is (a dict where the list is)."""
    return [value] if isinstance(value, dict) else {"value": value}


def _tamperings(path: Path) -> list[tuple[str, bytes]]:
    data = path.read_bytes()
    cases = [("empty", b""), ("half", data[: len(data) // 2])]
    if path.suffix == ".json":
        record = json.loads(data)
        cases += [
            ("wrong-type", json.dumps(_wrong_type(record)).encode()),
            ("path-like", json.dumps(_pathlike(record)).encode()),
        ]
    elif path.suffix == ".csv":
        lines = data.decode().splitlines()
        cells = [",".join(PATHLIKE if not _number(c) else c for c in ln.split(",")) for ln in lines]
        cases.append(("path-like", "\n".join(lines[:1] + cells[1:]).encode() + b"\n"))
    return cases


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _one_line_or_ok(rc: int, err: str, what: str) -> None:
    assert "Traceback" not in err, f"{what}: traceback\n{err}"
    assert rc in (0, 1, 2), f"{what}: exit {rc}\n{err}"
    if rc:
        errors = [ln for ln in err.splitlines() if ln.startswith("qbench: error: ")]
        assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], f"{what}: {err}"


@pytest.mark.slow
def test_every_file_tampered_in_turn(finished, tmp_path, capsys):
    matrix, out = finished
    files = sorted(
        p.relative_to(out)
        for p in out.rglob("*")
        if p.is_file() and not p.name.startswith(".qbench.lock") and p.suffix != ".png"
    )
    assert {"run.json", "manifest.json", "results.csv"} <= {str(f) for f in files}
    assert any(f.parts[0] == "running" for f in files) and any(".snap-" in f.name for f in files)
    argv_run = ["run", str(matrix), "--device", "cpu", "--no-progress", "--out"]
    n = 0
    for rel in files:
        for how, data in _tamperings(out / rel):
            case = tmp_path / f"c{n}"
            n += 1
            case.mkdir()
            shutil.copytree(out, case / "run")
            (case / "run" / rel).write_bytes(data)
            before = listing(case)
            for argv in (
                ["status", str(case / "run")],
                ["report", str(case / "run")],
                [*argv_run, str(case / "run")],
            ):
                rc = main(argv)
                captured = capsys.readouterr()
                _one_line_or_ok(rc, captured.err, f"{argv[0]} with {rel} {how}")
                outside = {p for p in listing(case) - before if not p.startswith("run")}
                assert not outside, f"{argv[0]} with {rel} {how} wrote {outside}"
                if argv[0] == "run" and rc == 0:  # a correct result: both jobs ok, none re-run
                    assert "2 jobs (2 ok)" in captured.out and "0 to run" in captured.out
                if argv[0] == "report" and rc == 0:
                    assert (case / "run" / "report.md").read_text().startswith("#")
            shutil.rmtree(case)
    assert n > 40
