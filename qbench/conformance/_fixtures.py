"""What the rules run plugins on: seeded sample tensors and tiny registered backbones."""

from __future__ import annotations

import torch


def sample(shape=(2, 3, 8, 8), dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    """A seeded ``N(0, 4^2)`` tensor (latent-like values a few bins wide)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 4).to(dtype=dtype, device=device)


def tiny(entry):
    """A backbone from its registration, with small channel counts where it takes N and M."""
    torch.manual_seed(0)
    params = entry.parameters()
    small = {k: 8 for k in ("N", "M") if k in params}
    return entry.build(**small)


def backbones():
    """Every registered backbone entry (the conformance suite names none)."""
    from qbench.plugins import get_plugins

    return list(get_plugins().registry.entries("backbone"))
