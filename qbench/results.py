"""Run directories: one atomic row file per job, merged into ``results.csv``.

Layout of a run directory::

    rows/<job_id>.json     one finished (or failed) job, written atomically
    results.csv            merged from rows/ (atomically replaced)
    per_image.csv          per-image metric values of every job
    history.csv            per-job training statistics over steps
    manifest.json          versions, device, matrix, plugins
    checkpoints/<train_id>.pt  trained weights (shared by jobs that differ
                           only in the evaluation dataset)

A kill at any instant leaves every row file either complete or absent, and
``results.csv`` is only ever replaced whole, so no row is lost, partial or
duplicated; a resumed run skips the job ids whose row exists.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

#: Leading columns of results.csv (metric columns follow in matrix order).
ID_COLUMNS = ["backbone", "quantizer", "lambda", "dataset", "seed", "job_id", "status", "reason"]
TAIL_COLUMNS = ["train_seconds", "eval_seconds", "steps", "trained_parameters", "train_id"]


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


class RunDir:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.rows_dir = self.root / "rows"
        self.ckpt_dir = self.root / "checkpoints"
        self.logs_dir = self.root / "logs"

    def ensure(self) -> None:
        for d in (self.rows_dir, self.ckpt_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

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

    # -- checkpoints -----------------------------------------------------------
    def checkpoint_path(self, train_id: str) -> Path:
        return self.ckpt_dir / f"{train_id}.pt"

    def save_checkpoint(self, train_id: str, state: dict[str, Any], meta: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path(train_id), buf.getvalue())
        atomic_write_text(self.ckpt_dir / f"{train_id}.json", json.dumps(meta, default=str))

    def load_checkpoint(self, train_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        path = self.checkpoint_path(train_id)
        meta_path = self.ckpt_dir / f"{train_id}.json"
        if not (path.exists() and meta_path.exists()):
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state, json.loads(meta_path.read_text())

    # -- tables ----------------------------------------------------------------
    def write_tables(self, metric_columns: Iterable[str] = ()) -> Path:
        """Merge the rows into results.csv, per_image.csv and history.csv."""
        rows = self.rows()
        cols = list(ID_COLUMNS)
        for c in metric_columns:
            if c not in cols:
                cols.append(c)
        for r in rows:
            for c in r:
                if c not in cols and c not in TAIL_COLUMNS and c not in ("per_image", "history"):
                    cols.append(c)
        cols += TAIL_COLUMNS
        rows.sort(key=lambda r: r.get("order", 0))
        atomic_write_text(self.root / "results.csv", _csv(rows, [c for c in cols if c != "order"]))
        per_image = _flatten(
            rows, "per_image", ("job_id", "quantizer", "lambda", "dataset", "seed")
        )
        atomic_write_text(self.root / "per_image.csv", _csv(per_image))
        history = _flatten(rows, "history", ("job_id", "backbone", "quantizer", "lambda", "seed"))
        atomic_write_text(self.root / "history.csv", _csv(history))
        return self.root / "results.csv"

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(
            self.root / "manifest.json", json.dumps(manifest, indent=2, default=_json_default)
        )


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
