"""Reproducible resumption: the random state a snapshot carries.

What a snapshot holds and how its files are kept is :mod:`qbench.snapshots`;
this module captures and restores the python, numpy, torch and CUDA random
states that the next training step depends on.
"""

from __future__ import annotations

import json
import random
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
