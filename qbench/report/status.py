"""What is my run doing? The state of every job, from the run directory alone.

``qbench status RUN_DIR`` reads only files (no scheduler, no lock), so it
works while a run is going on, after it was killed, on a login node while the
jobs run on a cluster. A job is

* ``ok`` / ``failed`` / ``diverged`` / ``nonfinite``: it has a row;
* ``running``: its train group's heartbeat (``running/<train_id>.json``) is
  fresh: written by a live process on this host, or less than
  :data:`STALE_SECONDS` ago from another host;
* ``interrupted``: a heartbeat that is no longer fresh, or a snapshot without
  one: the next ``qbench run`` continues it from its snapshot's step;
* ``pending``: nothing yet (``queued`` when a scheduler submission is recorded).

Scheduler job ids and log paths come from ``submitted/<train_id>.json``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from qbench.registry import QbenchError
from qbench.results import RunDir, process_start, valid_id
from qbench.snapshots import Snapshots

#: a heartbeat from another host older than this is taken as a dead job (seconds)
STALE_SECONDS = 300.0


@dataclass
class JobStatus:
    """One job's line of ``qbench status``."""

    job_id: str
    train_id: str
    describe: str
    state: str
    detail: str = ""
    scheduler_job_id: str = ""
    log: str = ""


class Statuses(list):
    """The :class:`JobStatus` of every job, and ``warnings``: files of the run directory
    that could not be used (each ``"<file>: why"``)."""

    def __init__(self, items: list[JobStatus] = (), warnings: list[str] | None = None) -> None:
        super().__init__(items)
        self.warnings = list(warnings or [])


def _alive(pid: int, started: object = None) -> bool:
    """Whether process ``pid`` lives and, when the heartbeat recorded its start time
    (``started``), is the same process (not a later one given the same pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OverflowError, OSError):
        return False
    if _zombie(pid):  # killed, not yet reaped by its parent (or an init that never reaps)
        return False
    if isinstance(started, int) and not isinstance(started, bool):
        now = process_start(pid)
        return now is None or now == started
    return True


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and only its process-table entry is left (Linux)."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return False


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fresh(beat: dict) -> bool:
    if beat.get("host") == socket.gethostname():
        pid = beat.get("pid")
        return isinstance(pid, int) and _alive(pid, beat.get("started"))
    updated = _number(beat.get("updated"))
    return updated is not None and time.time() - updated < STALE_SECONDS


def _manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise QbenchError(f"{root}: no manifest.json: not a qbench run directory (or not started)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QbenchError(f"{path}: unreadable ({type(exc).__name__})") from exc
    jobs = data.get("jobs", []) if isinstance(data, dict) else None
    if not isinstance(jobs, list):
        raise QbenchError(f"{path}: not a qbench manifest ('jobs' is not a list)")
    for k, entry in enumerate(jobs):
        if not isinstance(entry, dict):
            raise QbenchError(f"{path}: not a qbench manifest (jobs[{k}] is not a record)")
        for key in ("job_id", "train_id"):
            if not valid_id(entry.get(key)):
                raise QbenchError(
                    f"{path}: jobs[{k}].{key} {entry.get(key)!r} is not a qbench id (12 hex digits)"
                )
    return data


def _text(value: object) -> str:
    """A field of a record for the table (anything that is not a plain value: ``?``)."""
    return str(value) if isinstance(value, str | int | float) else "?"


def _set_state(
    status: JobStatus, run_dir: RunDir, row: dict | None, beat: dict | None, sub: dict
) -> None:
    """The job's state and detail from its row, heartbeat, snapshot and submission."""
    snapshot = Snapshots(run_dir.ckpt_dir, status.train_id).latest_step()
    if row is not None:
        status.state = row.get("status", "?")
        status.detail = _text(row.get("reason", "")) or (
            f"resumed from {_text(row['resumed'])}" if row.get("resumed") else ""
        )
        log = run_dir.logs_dir / f"{status.job_id}.log"
        if status.state != "ok" and log.exists():
            status.log = str(log)
    elif beat is not None and _fresh(beat):
        status.state = "running"
        status.detail = f"step {_text(beat.get('step', '?'))}/{_text(beat.get('steps', '?'))} " + (
            f"on {_text(beat.get('host'))} (pid {_text(beat.get('pid'))})"
        )
    elif beat is not None or snapshot is not None:
        status.state = "interrupted"
        status.detail = (
            f"resumes from step {snapshot}" if snapshot is not None else "restarts"
        ) + " at the next qbench run"
    elif sub:
        status.state = "queued"
        status.detail = (
            f"submitted {_text(sub.get('submitted', ''))} (attempt {_text(sub.get('attempt'))})"
        )


def run_status(root: Path) -> Statuses:
    """Every job of the run directory ``root`` with its state (see the module docstring);
    row files that are not rows are left out and named in the result's ``warnings``."""
    run_dir = RunDir(root)
    manifest = _manifest(root)
    rows = {r["job_id"]: r for r in run_dir.rows()}
    running = run_dir.running()
    submitted = run_dir.submissions()
    out = Statuses(warnings=[f"{w}: not counted" for w in run_dir.unreadable])
    for entry in manifest.get("jobs", []):
        job_id, train_id = entry["job_id"], entry["train_id"]
        sub = submitted.get(train_id, {})
        status = JobStatus(
            job_id,
            train_id,
            _text(entry.get("describe", job_id)),
            "pending",
            scheduler_job_id=_text(sub.get("scheduler_job_id", "")),
            log=_text(sub.get("stderr", "")),
        )
        _set_state(status, run_dir, rows.get(job_id), running.get(train_id), sub)
        out.append(status)
    return out


def status_text(statuses: list[JobStatus], verbose: bool = False) -> str:
    """The table ``qbench status`` prints: counts, then each job not finished ``ok``."""
    from tabulate import tabulate

    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    head = f"{len(statuses)} jobs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    head += "".join(f"\nwarning: {w}" for w in getattr(statuses, "warnings", ()))
    shown = [s for s in statuses if verbose or s.state != "ok"]
    if not shown:
        return head
    table = tabulate(
        [[s.state, s.describe, s.detail, s.scheduler_job_id, s.log] for s in shown],
        headers=["state", "job", "detail", "scheduler id", "log"],
    )
    return f"{head}\n\n{table}"
