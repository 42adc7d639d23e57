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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
        try:
            held = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        except (OSError, ValueError):
            held = None
        if held is None and not self.rows():
            atomic_write_text(path, json.dumps({**identity, "appended": []}, indent=2))
            return ""
        if held is None:  # rows from a qbench that kept no record: treat as another matrix
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
        out = []
        if not self.rows_dir.is_dir():
            return out
        for p in sorted(self.rows_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):  # pragma: no cover - never partial
                continue
        return out

    def finished(self, rerun_failed: bool = False) -> set[str]:
        """Job ids that a resumed run skips (all rows; only ``ok`` ones with ``rerun_failed``)."""
        return {r["job_id"] for r in self.rows() if not rerun_failed or r.get("status") == "ok"}

    # -- where each train group is ----------------------------------------------
    @property
    def running_dir(self) -> Path:
        return self.root / "running"

    def mark_running(self, train_id: str, info: dict[str, Any]) -> None:
        """Record that ``train_id`` is being produced now (host, pid, step; a heartbeat)."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), **info, "updated": time.time()}
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
    def export_weights(
        self, quantizer: str, lmbda: float, seed: int, out: Path, half: bool = False
    ) -> str:
        """Write the trained weights of the job (``quantizer`` label, ``lmbda``, ``seed``) to
        ``out`` as a state dict (``half``: floating tensors of at least
        :data:`HALF_MIN_NUMEL` elements, the weights, as float16; smaller ones, the
        biases, bounds and tables, stay exact: a likelihood bound of 1e-9 is 0 in
        float16); returns its train id.

        The file is the backbone's whole state dict, quantizers included; a
        backbone's ``checkpoint`` parameter that accepts qbench checkpoints
        (the CompressAI adapters do) loads it as an initialisation.
        """
        matches = [
            r
            for r in self.rows()
            if r.get("quantizer") == quantizer
            and math.isclose(float(r.get("lambda", "nan")), lmbda, rel_tol=1e-9)
            and int(r.get("seed", -1)) == seed
        ]
        if not matches:
            have = sorted(
                {(r.get("quantizer"), r.get("lambda"), r.get("seed")) for r in self.rows()}
            )
            raise QbenchError(
                f"{self.root}: no job with quantizer {quantizer!r}, lambda {lmbda:g}, seed {seed} "
                f"(jobs: {', '.join(f'{q}@{lam} seed {s}' for q, lam, s in have) or 'none'})"
            )
        train_id = matches[0]["train_id"]
        cached = self.load_checkpoint(train_id)
        if cached is None:
            raise QbenchError(
                f"{self.root}: the job {quantizer}@{lmbda:g} has no checkpoint "
                f"(status {matches[0].get('status')!r})"
            )
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
        return train_id

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


def _read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``stem -> JSON record`` of every ``*.json`` file in ``folder`` (unreadable ones skipped)."""
    out = {}
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out[p.stem] = json.loads(p.read_text(encoding="utf-8"))
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
