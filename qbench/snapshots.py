"""Where does a killed job continue from? Snapshots taken during training (their files).

A training that is killed (``kill -9``, a Slurm preemption or time limit, a
node failure) continues from its last snapshot when the same run is started
again, on any executor. A snapshot holds everything the next step depends on:
the model's state dict (quantizer state such as STanH's ``beta`` included),
both optimisers, the crop sampler's generator, the python, numpy, torch and
CUDA random states, the gradient scaler of ``fp16`` training, the history and
schedule records so far and the training seconds spent. A job resumed from it
ends with weights bit-identical to an uninterrupted run's (on the same device
and threads; ``tests/test_resume.py``).

Files, under ``checkpoints/`` of the run directory, two slots written in
turn (a new snapshot always overwrites the older one)::

    <train_id>.snap-a.pt, <train_id>.snap-a.json   one snapshot and its record
    <train_id>.snap-b.pt, <train_id>.snap-b.json   (step, SHA-256), written after it

A slot's ``.pt`` is written to a temporary file and renamed into place, then
its ``.json``; a kill at any instant leaves the other slot whole. A snapshot
whose record is missing or stale, whose bytes do not match the recorded
SHA-256, or that does not load is never used: the other slot is (the older
snapshot), or a fresh start, and the job's row says which (``resumed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbench.registry import reason
from qbench.results import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class SnapshotPolicy:
    """When a training takes a snapshot: every ``every_steps`` steps and/or ``minutes``.

    ``0`` disables either trigger; both ``0`` disables snapshots.
    """

    every_steps: int = 0
    minutes: float = 0.0

    def due(self, done: int, steps: int, since: float) -> bool:
        """Whether to snapshot after ``done`` of ``steps`` steps, ``since`` seconds after the
        last snapshot (never after the last step: the final checkpoint follows)."""
        if done >= steps:
            return False
        if self.every_steps and done % self.every_steps == 0:
            return True
        return bool(self.minutes) and since >= 60.0 * self.minutes


class Snapshots:
    """The snapshots of one train group (see the module docstring).

    Attributes:
        resumed: what :meth:`load` found, for the row's ``resumed`` column
            (``""``: nothing to resume from).
    """

    SLOTS = ("snap-a", "snap-b")

    def __init__(self, folder: Path, train_id: str, policy: SnapshotPolicy | None = None) -> None:
        self.folder = Path(folder)
        self.train_id = train_id
        self.policy = policy or SnapshotPolicy()
        self.resumed = ""
        self.last_saved = time.monotonic()
        self._next: str | None = None

    def phase(self, name: str) -> Snapshots:
        """The snapshots of a later phase of the same group's training (a recipe of two
        trainings: soft-then-hard), kept apart from this one's."""
        return Snapshots(self.folder, f"{self.train_id}.{name}", self.policy)

    def _paths(self, slot: str) -> tuple[Path, Path]:
        stem = f"{self.train_id}.{slot}"
        return self.folder / f"{stem}.pt", self.folder / f"{stem}.json"

    def _records(self) -> dict[str, dict[str, Any]]:
        """``slot -> record`` of the slots whose record reads."""
        out = {}
        for slot in self.SLOTS:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, OverflowError):
                record = json.loads(self._paths(slot)[1].read_text())
                out[slot] = {"step": int(record["step"]), "sha256": str(record["sha256"])}
        return out

    # -- writing ----------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write the snapshot after ``step`` steps into the slot of the older one."""
        if self._next is None:
            records = self._records()
            self._next = min(self.SLOTS, key=lambda s: records.get(s, {"step": -1})["step"])
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        pt, meta = self._paths(self._next)
        meta.unlink(missing_ok=True)  # the slot is being rewritten: no record until it is whole
        atomic_write_bytes(pt, data)
        record = {"step": step, "sha256": hashlib.sha256(data).hexdigest(), "time": time.time()}
        atomic_write_text(meta, json.dumps(record))
        self._next = self.SLOTS[1 - self.SLOTS.index(self._next)]
        self.last_saved = time.monotonic()

    def clear(self) -> None:
        """Remove every snapshot (the job's final checkpoint is written)."""
        for p in self.paths():
            with contextlib.suppress(OSError):
                p.unlink()

    def paths(self) -> list[Path]:
        """Every file a snapshot of this train group may occupy."""
        return [p for slot in self.SLOTS for p in self._paths(slot)]

    # -- reading ----------------------------------------------------------------
    def latest_step(self) -> int | None:
        """The step of the newest snapshot on record (for ``qbench status``), or None."""
        steps = [r["step"] for r in self._records().values()]
        return max(steps) if steps else None

    def load(self, expect_steps: int) -> dict[str, Any] | None:
        """The newest usable snapshot of a training of ``expect_steps`` steps, or None.

        Sets :attr:`resumed` to what was used and why: ``"step N"``,
        ``"step N (older snapshot; the newest ...)"`` or ``"fresh start (...)"``.
        """
        import torch

        records = self._records()
        problems = [
            f"a snapshot without its record ({self._paths(slot)[0].name}: killed while writing)"
            for slot in self.SLOTS
            if slot not in records and self._paths(slot)[0].exists()
        ]
        for slot in sorted(records, key=lambda s: -records[s]["step"]):
            record = records[slot]
            pt = self._paths(slot)[0]
            try:
                data = pt.read_bytes()
                if hashlib.sha256(data).hexdigest() != record["sha256"]:
                    raise ValueError("its bytes do not match the recorded SHA-256")
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                if state.get("steps") != expect_steps:
                    raise ValueError(
                        f"it belongs to a training of {state.get('steps')} steps, not "
                        f"{expect_steps}"
                    )
            except Exception as exc:  # any unreadable snapshot is skipped, said and never used
                problems.append(
                    f"the snapshot of step {record['step']} is unusable: {reason(exc, 200)}"
                )
                continue
            newer = [p for p in problems if "unusable" in p]
            self.resumed = f"step {record['step']}" + (
                f" (older snapshot; {'; '.join(newer)})" if newer else ""
            )
            return state
        if problems:
            self.resumed = f"fresh start ({'; '.join(problems)})"
        return None
