"""Tensor helpers shared by the contracts and the coding maths."""

from __future__ import annotations

from torch import Tensor


def per_channel(t: Tensor, like: Tensor) -> Tensor:
    """A scalar or per-channel (``(C,)``) tensor shaped to broadcast against ``like``."""
    if t.dim() == 0:
        return t
    return t.reshape(1, -1, *([1] * (like.dim() - 2)))
