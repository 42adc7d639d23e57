"""Run directories: one atomic row file per job, merged into ``results.csv``.

Layout of a run directory::

    rows/<job_id>.json     one finished (or failed) job, written atomically
    results.csv            merged from rows/ (atomically replaced)
    per_image.csv          per-image metric values of every job
    history.csv            per-job training loss, bpp and mse over steps
    schedule.csv           per-job schedule statistics at each probe point
    manifest.json          versions, device, matrix, plugins
    checkpoints/<train_id>.pt  trained weights (shared by jobs that differ
                           only in the evaluation dataset)
    checkpoints/<train_id>.snap-[ab].pt|json  resumable snapshots of a training
                           under way (qbench/snapshots.py)
    running/<train_id>.json    a group being produced now: host, pid, step
                           (a heartbeat; removed when its rows are written)
    submitted/<train_id>.json  the scheduler job id and log paths of its
                           last submission (submitit and Slurm executors)
    submitit/              submitit's own job folders (logs, pickles)
    monitor/<logger>/      live loggers' files (e.g. TensorBoard events)
    run.json               which matrix the directory holds (one per directory)
    .qbench.lock           held by the one qbench run that owns the directory
    .qbench.lock.pid       the pid of the run holding ``.qbench.lock``
    superseded/            earlier runs set aside by ``--force`` with another matrix

A kill at any instant leaves every row file either complete or absent, and
``results.csv`` is only ever replaced whole, so no row is lost, partial or
duplicated; a resumed run skips the job ids whose row exists.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qbench.registry import QbenchError

#: Leading columns of results.csv (metric columns follow in matrix order).
ID_COLUMNS = ["backbone", "quantizer", "lambda", "dataset", "seed", "job_id", "status", "reason"]
TAIL_COLUMNS = [
    "train_seconds",
    "eval_seconds",
    "steps",
    "trained_parameters",
    "train_id",
    "config_id",
]
#: Columns the evaluation adds about what it averaged (besides the metrics' own).
ACCOUNTING = ("images", "nonfinite", "not_applicable", "eval_seconds")
#: ``qbench export --half`` stores floating tensors of at least this many elements as float16.
HALF_MIN_NUMEL = 4096
#: The tables merged from the rows.
MERGED = ("results.csv", "per_image.csv", "history.csv", "schedule.csv")
#: Row fields that hold a list of records (each merged into its own table).
NESTED = ("per_image", "history", "schedule")


#: A job, train or matrix id: the 12 hex digits of :func:`qbench.plan.jobs.stable_hash`.
ID_PATTERN = re.compile(r"[0-9a-f]{12}")


def valid_id(value: object) -> bool:
    """Whether ``value`` is a qbench id (12 lowercase hex digits), safe as a file name."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def _umask() -> int:
    """This process's umask (read without changing it where the OS says it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (Linux: ``/proc/<pid>/stat`` field 22, clock ticks since
    boot), or None where that cannot be read (another OS, no such process). Two processes
    with the same pid have different start times."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, OverflowError):
        return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, whole.

    The file gets the mode any tool's new file gets (``0o666`` less the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


class RunDirError(QbenchError):
    """A run directory that cannot be used (in use, another matrix's, not writable)."""


class RunDir:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.rows_dir = self.root / "rows"
        self.ckpt_dir = self.root / "checkpoints"
        self.logs_dir = self.root / "logs"
        #: ``"rows/<file>: why"`` of each row file the last :meth:`rows` could not use
        self.unreadable: list[str] = []

    #: what a qbench run makes in a directory before it records its matrix in ``run.json``
    BEFORE_CLAIM = ("rows", "checkpoints", "logs", ".qbench.lock", ".qbench.lock.pid")

    def check_ours(self) -> None:
        """Refuse a directory that is neither empty, nor one qbench made (it has ``run.json``),
        naming what it holds: a run writes ``results.csv``, ``report.md``, ``manifest.json``
        and more, and must not overwrite the user's own files."""
        if not self.root.is_dir() or (self.root / "run.json").exists():
            return
        try:
            names = sorted(p.name for p in self.root.iterdir())
        except OSError as exc:
            raise RunDirError(
                f"{self.root}: cannot read the run directory ({exc.strerror or exc}); choose "
                "another --out"
            ) from exc
        foreign = [
            n
            for n in names
            if n not in self.BEFORE_CLAIM
            or ((self.root / n).is_dir() and any((self.root / n).iterdir()))
        ]
        if foreign:
            shown = ", ".join(foreign[:6]) + (
                f" and {len(foreign) - 6} more" if foreign[6:] else ""
            )
            raise RunDirError(
                f"{self.root} is not a qbench run directory (no run.json) and is not empty: it "
                f"holds {shown}; a run would write its files there, so choose an empty or new "
                "--out"
            )

    def ensure(self) -> None:
        try:
            for d in (self.rows_dir, self.ckpt_dir, self.logs_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".qbench-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(
                f"{self.root}: cannot create or write the run directory "
                f"({exc.strerror or exc}); choose another --out"
            ) from exc

    # -- ownership ---------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock for a run: a second run on it is refused, naming the first.

        An OS file lock on ``.qbench.lock`` (``filelock``: ``flock`` on POSIX,
        ``LockFileEx`` on Windows): the OS releases it when its process ends in any
        way, ``kill -9`` included, so a dead run leaves no stale lock. The holder's pid
        is kept beside it in ``.qbench.lock.pid`` (not in the lock file: filelock before
        3.30 truncates the lock file on every attempt, and Windows locks its first byte
        against reading), removed while the lock is still held.
        """
        from filelock import FileLock, Timeout

        path = self.root / ".qbench.lock"
        holder = self.root / ".qbench.lock.pid"
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                pid = holder.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise RunDirError(
                f"{self.root} is in use by another qbench run (pid {pid}); wait for it "
                "to finish or use another --out"
            ) from None
        try:
            holder.write_text(str(os.getpid()), encoding="utf-8")
            yield
        finally:
            with contextlib.suppress(OSError):
                holder.unlink()
            lock.release()

    def claim(self, identity: dict[str, Any], *, force: bool, append: bool) -> str:
        """Make this directory ``identity``'s (a matrix: ``id``, ``name``, ``source``, ``jobs``).

        A directory holds the rows of one matrix. Another matrix's directory is
        refused, naming both, unless ``append`` (the directory then holds both,
        each row with its own configuration) or ``force`` (the earlier content is
        moved to ``superseded/<id>-<time>/``, nothing is deleted). Returns what
        was done, for the log (``""`` when the directory was new or the same).
        """
        path = self.root / "run.json"
        held, problem = read_run_record(path)
        if held is None and not self.rows():
            atomic_write_text(path, json.dumps({**identity, "appended": []}, indent=2))
            return ""
        if held is None:  # rows without a usable record: treat as another matrix
            if not force:
                raise RunDirError(
                    f"{path}: {problem or 'missing'}, and rows/ holds rows of a run; use another "
                    "--out, or --force to move that run to superseded/"
                )
            held = {"id": "unknown", "name": "unknown", "source": "unknown", "jobs": "?"}
        known = [held.get("id")] + [a.get("id") for a in held.get("appended", [])]
        if identity["id"] in known:
            return ""
        changed = code_changes(held, identity)
        if changed and not force:
            return self._supersede_stale(held, identity, changed)
        if append:
            held.setdefault("appended", []).append(identity)
            atomic_write_text(path, json.dumps(held, indent=2))
            return f"appended matrix {identity['name']!r} to the run of {held['name']!r}"
        if force:
            where = self.root / "superseded" / f"{held['id']}-{time.strftime('%Y%m%d-%H%M%S')}"
            where.mkdir(parents=True, exist_ok=True)
            for name in ("rows", "checkpoints", "logs", "run.json", *MERGED, "report.md"):
                if (self.root / name).exists():
                    os.replace(self.root / name, where / name)
            self.ensure()
            atomic_write_text(path, json.dumps({**identity, "appended": []}, indent=2))
            return f"the earlier run of matrix {held['name']!r} was moved to {where}"
        raise RunDirError(
            f"{self.root} holds the run of matrix {held['name']!r} ({held['source']}, "
            f"{held['jobs']} jobs, id {held['id']}); this is matrix {identity['name']!r} "
            f"({identity['source']}, {identity['jobs']} jobs, id {identity['id']}). Use another "
            "--out, --append to add these jobs to that run, or --force to move the earlier run "
            "to superseded/"
        )

    def _supersede_stale(self, held: dict, identity: dict, changed: list[str]) -> str:
        """The same matrix after a plugin edit: set aside the rows (and the weights) of the
        jobs the edit touched, keep the others, and record the new identity."""
        current = set(identity["job_ids"])
        stale = [r for r in self.rows() if r.get("job_id") not in current]
        kept_trains = {r.get("train_id") for r in self.rows() if r.get("job_id") in current}
        where = self.root / "superseded" / f"{held['id']}-{time.strftime('%Y%m%d-%H%M%S')}"
        for row in stale:
            moves = [self.rows_dir / f"{row['job_id']}.json"]
            if row.get("train_id") not in kept_trains:
                moves += sorted(self.ckpt_dir.glob(f"{row.get('train_id')}.*"))
            for src in moves:
                if src.exists():
                    (where / src.parent.name).mkdir(parents=True, exist_ok=True)
                    os.replace(src, where / src.parent.name / src.name)
        atomic_write_text(
            self.root / "run.json", json.dumps({**identity, "appended": []}, indent=2)
        )
        return (
            f"plugin code changed since the earlier run of matrix {held['name']!r} "
            f"({'; '.join(changed)}): {len(stale)} earlier row(s) of the jobs it touches moved "
            f"to {where}, the {len(self.rows())} others kept"
        )

    def clean_leftovers(self) -> list[Path]:
        """Remove the temporary files of atomic writes a killed run left (under the lock)."""
        removed = []
        for d in (self.root, self.rows_dir, self.ckpt_dir):
            for p in d.glob(".*.tmp") if d.is_dir() else ():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        return removed

    # -- rows ----------------------------------------------------------------
    def write_row(self, row: dict[str, Any]) -> None:
        data = json.dumps(row, sort_keys=True, default=_json_default, allow_nan=True)
        atomic_write_text(self.rows_dir / f"{row['job_id']}.json", data)

    def rows(self) -> list[dict[str, Any]]:
        """Every usable row of ``rows/``. A row file is written whole or not at all, so one
        that does not read as a row was changed by someone else: it is left out and named
        in :attr:`unreadable` (``"rows/<file>: why"``), for the caller to say."""
        out: list[dict[str, Any]] = []
        self.unreadable = []
        if not self.rows_dir.is_dir():
            return out
        for p in sorted(self.rows_dir.glob("*.json")):
            try:
                row = json.loads(p.read_text(encoding="utf-8"))
                problem = row_problem(row, p.stem)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                problem = f"not readable JSON ({type(exc).__name__})"
            if problem:
                self.unreadable.append(f"rows/{p.name}: {problem}")
            else:
                out.append(row)
        return out

    def checked_rows(self) -> list[dict[str, Any]]:
        """:meth:`rows`, refusing a row file that is not a row (a run must not guess)."""
        rows = self.rows()
        if self.unreadable:
            raise RunDirError(
                f"{self.root}: {self.unreadable[0]}"
                + (f" (and {len(self.unreadable) - 1} more)" if self.unreadable[1:] else "")
                + "; a row file is written whole by qbench, so this one was changed: move it "
                "out of the run directory and its job runs again"
            )
        return rows

    def finished(self, rerun_failed: bool = False) -> set[str]:
        """Job ids that a resumed run skips (all rows; only ``ok`` ones with ``rerun_failed``)."""
        rows = self.checked_rows()
        return {r["job_id"] for r in rows if not rerun_failed or r.get("status") == "ok"}

    # -- where each train group is ----------------------------------------------
    @property
    def running_dir(self) -> Path:
        return self.root / "running"

    def mark_running(self, train_id: str, info: dict[str, Any]) -> None:
        """Record that ``train_id`` is being produced now (host, pid, step; a heartbeat)."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), **info, "updated": time.time()}
        started = process_start(os.getpid())
        if started is not None:  # tells this process from a later one given the same pid
            record["started"] = started
        with contextlib.suppress(OSError):
            atomic_write_text(self.running_dir / f"{train_id}.json", json.dumps(record))

    def clear_running(self, train_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.running_dir / f"{train_id}.json").unlink()

    def running(self) -> dict[str, dict[str, Any]]:
        """``train_id -> heartbeat record`` of the groups marked running."""
        return _read_records(self.running_dir)

    def record_submission(self, train_id: str, record: dict[str, Any]) -> None:
        """Record a scheduler submission of ``train_id`` (``submitted/<train_id>.json``)."""
        atomic_write_text(self.root / "submitted" / f"{train_id}.json", json.dumps(record))

    def submission(self, train_id: str) -> dict[str, Any] | None:
        return _read_records(self.root / "submitted").get(train_id)

    def submissions(self) -> dict[str, dict[str, Any]]:
        return _read_records(self.root / "submitted")

    # -- checkpoints -----------------------------------------------------------
    def checkpoint_path(self, train_id: str) -> Path:
        return self.ckpt_dir / f"{train_id}.pt"

    def save_checkpoint(self, train_id: str, state: dict[str, Any], meta: dict[str, Any]) -> None:
        buf = io.BytesIO()
        import torch  # only where weights are written or read: status and report need none

        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path(train_id), buf.getvalue())
        atomic_write_text(self.ckpt_dir / f"{train_id}.json", json.dumps(meta, default=str))

    def remove_checkpoint(self, train_id: str) -> None:
        """Forget a train group's trained weights (``--force`` trains them again)."""
        self.checkpoint_path(train_id).unlink(missing_ok=True)
        (self.ckpt_dir / f"{train_id}.json").unlink(missing_ok=True)

    def load_checkpoint(self, train_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        path = self.checkpoint_path(train_id)
        meta_path = self.ckpt_dir / f"{train_id}.json"
        if not (path.exists() and meta_path.exists()):
            return None
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        return state, json.loads(meta_path.read_text())

    # -- tables ----------------------------------------------------------------
    def export_weights(self, train_id: str, out: Path, half: bool = False) -> None:
        """Write the trained weights of train group ``train_id`` to ``out`` as a state dict
        (``half``: floating tensors of at least :data:`HALF_MIN_NUMEL` elements, the
        weights, as float16; smaller ones, the biases, bounds and tables, stay exact: a
        likelihood bound of 1e-9 is 0 in float16). Which job: see
        :func:`qbench.run.export.find_row`.

        The file is the backbone's whole state dict, quantizers included; a
        backbone's ``checkpoint`` parameter that accepts qbench checkpoints
        (the CompressAI adapters do) loads it as an initialisation.
        """
        cached = self.load_checkpoint(train_id)
        if cached is None:
            raise QbenchError(f"{self.root}: train group {train_id} has no checkpoint")
        state = cached[0]
        if half:
            state = {
                k: v.half() if v.is_floating_point() and v.numel() >= HALF_MIN_NUMEL else v
                for k, v in state.items()
            }
        out.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        import torch  # only where weights are written or read: status and report need none

        torch.save(state, buf)
        atomic_write_bytes(out, buf.getvalue())

    def results_csv(self, metric_columns: Iterable[str] = ()) -> str:
        """The text of results.csv as merged from the rows (nothing is written)."""
        return self._tables(self.rows(), metric_columns)[0]

    def write_tables(self, metric_columns: Iterable[str] = ()) -> Path:
        """Merge the rows into results.csv, per_image.csv, history.csv and schedule.csv."""
        for name, text in zip(MERGED, self._tables(self.rows(), metric_columns)):
            atomic_write_text(self.root / name, text)
        return self.root / "results.csv"

    @staticmethod
    def _tables(rows: list[dict[str, Any]], metric_columns: Iterable[str]) -> tuple[str, ...]:
        cols = list(ID_COLUMNS)
        for c in metric_columns:
            if c not in cols:
                cols.append(c)
        for r in rows:
            for c in r:
                if c not in cols and c not in TAIL_COLUMNS and c not in NESTED:
                    cols.append(c)
        cols += TAIL_COLUMNS
        rows.sort(key=lambda r: r.get("order", 0))
        per_image = _flatten(
            rows, "per_image", ("job_id", "quantizer", "lambda", "dataset", "seed")
        )
        ids = ("job_id", "backbone", "quantizer", "lambda", "seed")
        return (
            _csv(rows, [c for c in cols if c != "order"]),
            _csv(per_image),
            _csv(_flatten(rows, "history", ids)),
            _csv(_flatten(rows, "schedule", ids)),
        )

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(
            self.root / "manifest.json", json.dumps(manifest, indent=2, default=_json_default)
        )


def code_changes(held: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """What plugin code changed between the run a directory ``held`` and ``identity``, when
    they are the same matrix (name and source; nothing appended):
    ``["quantizer halfnoise: qbench-x 0.1.0 1a2b... -> qbench-x 0.1.0 3c4d..."]``;
    ``[]`` for another matrix or unchanged code (a changed matrix is then refused)."""
    old, new = held.get("code"), identity.get("code")
    if not old or not new or held.get("appended"):
        return []
    if (held.get("name"), held.get("source")) != (identity.get("name"), identity.get("source")):
        return []
    return [
        f"{k}: {old[k]} -> {new[k]}" for k in sorted(old.keys() & new.keys()) if old[k] != new[k]
    ]


def read_run_record(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``run.json`` as a dict whose ids are qbench ids, or ``(None, why not)`` (``""``: no file).

    Its ``id`` becomes part of a path (``superseded/<id>-<time>``), so a record whose ids are
    not 12 hex digits, or whose fields have the wrong types, is not used."""
    if not path.exists():
        return None, ""
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"not readable JSON ({type(exc).__name__})"
    if not isinstance(held, dict):
        return None, "not a qbench run record (not a JSON object)"
    appended = held.get("appended", [])
    if not isinstance(appended, list) or not all(isinstance(a, dict) for a in appended):
        return None, "not a qbench run record ('appended' is not a list of records)"
    for where, record in [("id", held)] + [
        (f"appended[{k}].id", a) for k, a in enumerate(appended)
    ]:
        if not valid_id(record.get("id")):
            return None, f"not a qbench run record ({where} {record.get('id')!r} is not an id)"
    for key, kind in (("name", str), ("source", str), ("code", dict), ("job_ids", list)):
        if key in held and not isinstance(held[key], kind):
            return None, f"not a qbench run record ({key!r} is not a {kind.__name__})"
    return {"name": "unknown", "source": "unknown", "jobs": "?", **held}, ""


def row_problem(row: object, stem: str) -> str:
    """Why ``row`` (read from ``rows/<stem>.json``) is not a usable row, or ``""``."""
    if not isinstance(row, dict):
        return "not a row (not a JSON object)"
    if not valid_id(row.get("job_id")) or row["job_id"] != stem:
        return f"job_id {row.get('job_id')!r} is not this file's id {stem!r}"
    if row.get("train_id") is not None and not valid_id(row["train_id"]):
        return f"train_id {row['train_id']!r} is not an id"
    if not isinstance(row.get("status", ""), str):
        return "status is not a string"
    order = row.get("order", 0)
    if isinstance(order, bool) or not isinstance(order, int | float) or order != order:
        return "order is not a number"
    for field in NESTED:
        items = row.get(field, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return f"{field} is not a list of records"
    return ""


def _read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``train_id -> JSON record`` of every ``<train_id>.json`` file in ``folder`` (files that
    are not named by an id or are not a JSON object are skipped)."""
    out = {}
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            if not valid_id(p.stem):
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
                record = json.loads(p.read_text(encoding="utf-8"))
                if isinstance(record, dict):
                    out[p.stem] = record
    return out


def _flatten(rows: list[dict[str, Any]], field: str, ids: tuple[str, ...]) -> list[dict]:
    """One record per entry of each row's ``field`` list, prefixed with the row's ``ids``."""
    return [{**{k: r[k] for k in ids}, **item} for r in rows for item in r.get(field, [])]


def _csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if columns is None:
        columns = []
        for r in rows:
            for c in r:
                if c not in columns:
                    columns.append(c)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()
