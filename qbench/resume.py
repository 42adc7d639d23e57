"""Where does a killed job continue from? Snapshots taken during training.

A training that is killed (``kill -9``, a Slurm preemption or time limit, a
node failure) continues from its last snapshot when the same run is started
again, on any executor. A snapshot holds everything the next step depends on:
the model's state dict (quantizer state such as STanH's ``beta`` included),
both optimisers, the crop sampler's generator, the python, numpy, torch and
CUDA random states, the gradient scaler of ``fp16`` training, the history and
schedule records so far and the training seconds spent. A job resumed from it
ends with weights bit-identical to an uninterrupted run's (on the same device
and threads; ``tests/test_resume.py``).

Files, under ``checkpoints/`` of the run directory::

    <train_id>.snap.pt        the newest snapshot
    <train_id>.snap.json      its step and SHA-256 (written after the .pt)
    <train_id>.snap-prev.pt   the one before (and its .json)

A snapshot is written to a temporary file and renamed into place; the newest
becomes ``-prev`` first. A snapshot whose ``.json`` is missing, whose bytes do
not match the recorded SHA-256, or that does not load is never used: the
previous one is, or a fresh start, and the job's row says which (``resumed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def rng_state() -> dict[str, Any]:
    """Every random state a training step can draw from (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": json.dumps(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Snapshots:
    """The snapshots of one train group (see the module docstring).

    Attributes:
        resumed: what :meth:`load` found, for the row's ``resumed`` column
            (``""``: nothing to resume from).
    """

    def __init__(self, folder: Path, train_id: str, policy: SnapshotPolicy) -> None:
        self.folder = Path(folder)
        self.train_id = train_id
        self.policy = policy
        self.resumed = ""
        self.last_saved = time.monotonic()

    def _paths(self, generation: str) -> tuple[Path, Path]:
        stem = f"{self.train_id}.{generation}"
        return self.folder / f"{stem}.pt", self.folder / f"{stem}.json"

    # -- writing ----------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any]) -> None:
        """Write the snapshot after ``step`` steps; the newest one becomes the previous."""
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        pt, meta = self._paths("snap")
        prev_pt, prev_meta = self._paths("snap-prev")
        if pt.exists() and meta.exists():
            os.replace(pt, prev_pt)
            os.replace(meta, prev_meta)
        atomic_write_bytes(pt, data)
        record = {"step": step, "sha256": hashlib.sha256(data).hexdigest(), "time": time.time()}
        atomic_write_text(meta, json.dumps(record))
        self.last_saved = time.monotonic()

    def clear(self) -> None:
        """Remove every snapshot (the job's final checkpoint is written)."""
        for generation in ("snap", "snap-prev"):
            for p in self._paths(generation):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- reading ----------------------------------------------------------------
    def latest_step(self) -> int | None:
        """The step of the newest snapshot on record (for ``qbench status``), or None."""
        for generation in ("snap", "snap-prev"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                return int(json.loads(self._paths(generation)[1].read_text())["step"])
        return None

    def load(self, expect_steps: int) -> dict[str, Any] | None:
        """The newest usable snapshot of a training of ``expect_steps`` steps, or None.

        Sets :attr:`resumed` to what was used and why: ``"step N"``,
        ``"step N (previous snapshot; the newest ...)"`` or ``"fresh start (...)"``.
        """
        problems = []
        for generation in ("snap", "snap-prev"):
            pt, meta = self._paths(generation)
            if not pt.exists() and not meta.exists():
                continue
            try:
                record = json.loads(meta.read_text())
                data = pt.read_bytes()
                if hashlib.sha256(data).hexdigest() != record["sha256"]:
                    raise ValueError("its bytes do not match the recorded SHA-256")
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                if state.get("steps") != expect_steps:
                    raise ValueError(
                        f"it belongs to a training of {state.get('steps')} steps, not "
                        f"{expect_steps}"
                    )
            except FileNotFoundError as exc:
                problems.append(f"the {_NAMES[generation]} snapshot is incomplete ({exc.filename})")
                continue
            except Exception as exc:  # any unreadable snapshot is skipped, said and never used
                reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
                problems.append(f"the {_NAMES[generation]} snapshot is unusable: {reason}")
                continue
            self.resumed = f"step {record['step']}" + (
                f" (previous snapshot; {'; '.join(problems)})" if problems else ""
            )
            return state
        if problems:
            self.resumed = f"fresh start ({'; '.join(problems)})"
        return None


_NAMES = {"snap": "newest", "snap-prev": "previous"}
