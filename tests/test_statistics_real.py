"""Gradient statistics on a real trained model resolve what they claim to (issue 13).

The model is the default run's shared initialisation (``qbench/data/init``: a
mean-scale hyperprior, N = 48, M = 64, trained 4000 steps with additive noise
at lambda = 0.0067 by ``qbench/data/init.toml``). The probe set is 16 batches
of 4 crops of 64 px of the embedded training images, K = 16 draws.
"""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from qbench.analysis import model_gradient_statistics
from qbench.train import CropSampler

pytestmark = pytest.mark.slow

INIT = resources.files("qbench") / "data" / "init" / "mbt2018-mean-48-64.pt"


def trained(registry, quantizer: str, progress: float = 1.0):
    m = registry.build("backbone", "mbt2018-mean", N=48, M=64, checkpoint=str(INIT))
    m.set_quantizers({k: registry.build("quantizer", quantizer) for k in m.latents})
    m.set_progress(progress)
    return m


def crops(batches: int, size: int) -> list[torch.Tensor]:
    from qbench.plugins import get_plugins

    ds = get_plugins().registry.build("dataset", "embedded", split="train")
    sampler = CropSampler([ds.uint8(i) for i in range(len(ds))], size, 1)
    return [sampler.batch(4) for _ in range(batches)]


@pytest.fixture(scope="module")
def probe_set():
    return crops(16, 64)


def stats(registry, quantizer, batches, progress=1.0, factors=(0.5, 1.0, 2.0)):
    torch.manual_seed(0)
    return model_gradient_statistics(
        trained(registry, quantizer, progress), batches, 0.0067, draws=16, step_factors=factors
    )


UNMET = (
    "issue 13's acceptance criterion, not met on this model (measured 2026-11-25, 16 batches "
    "of 4 crops of 64 px: grad_bias moves with h: noise 0.136 / -0.047 / -0.341 and STE "
    "-0.19 / -0.49 at h/2, h, 2h; 64 batches of 128 px: noise -0.098 [-0.152, -0.044], "
    "2h: -0.398); the report flags it; see docs/statistics.md"
)


def test_grad_var_is_resolved_on_a_trained_model(registry):
    """The normalised variance of additive noise on the model it trained: with 80 probe
    batches of 4 crops of 128 px the 95 % interval's half-width is below 25 % of the
    estimate (with 16 batches of 64 px it was 64 %: 0.061 [0.022, 0.100])."""
    torch.manual_seed(0)
    var = model_gradient_statistics(
        trained(registry, "noise"), crops(80, 128), 0.0067, draws=16, step_factors=(1.0,)
    )["grad_var"]
    assert var.exact == "" and var.value > 0
    assert var.half_width < 0.25 * var.value, var


@pytest.mark.xfail(strict=True, reason=UNMET)
def test_grad_bias_has_a_plateau_in_the_step_size(registry, probe_set):
    """Across a 4x range of the finite-difference step (h/2 .. 2h) the estimate moves by less
    than its interval (else it carries the 'no plateau in h' flag), for a surrogate that is
    deterministic (STE) and one that is not (noise)."""
    bias = stats(registry, "ste", probe_set)["grad_bias"]
    assert bias.flag == "", bias
    assert bias.half_width < 0.25 * abs(bias.value), bias


def test_a_step_size_dependence_is_flagged_not_hidden(registry, probe_set):
    """Whatever the model, an estimate that moves across h/2 .. 2h by more than its interval
    says so: the flag names the step sizes and their values."""
    bias = stats(registry, "ste", probe_set[:8], factors=(0.25, 1.0, 4.0))["grad_bias"]
    per_h = stats(registry, "ste", probe_set[:8], factors=(1.0,))["grad_bias"]
    assert bias.value == per_h.value and bias.low == per_h.low  # same estimate at h
    if bias.flag:
        assert bias.flag.startswith("no plateau in h (") and "h: " in bias.flag
    assert per_h.flag == ""  # one step size: nothing to compare
