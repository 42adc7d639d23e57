"""Reproducible resumption: the random state a snapshot carries, and what is done with a
file that loads but cannot be used.

What a snapshot holds and how its files are kept is :mod:`qbench.snapshots`;
this module captures and restores the python, numpy, torch and CUDA random
states that the next training step depends on, and sets aside (renames, never
deletes) a snapshot or checkpoint that loaded but could not be used, so that the
job starts fresh on the next run instead of failing on it again.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


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


#: The suffix of a snapshot or checkpoint file set aside by :func:`set_aside`.
UNUSABLE = ".unusable"


def set_aside(paths: Iterable[Path]) -> list[str]:
    """Rename each existing file of ``paths`` to ``<name>.unusable`` (an earlier one of that
    name is replaced); the new names, for the row's ``resumed`` column."""
    done = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            target = path.with_name(path.name + UNUSABLE)
            os.replace(path, target)
            done.append(target.name)
    return done
