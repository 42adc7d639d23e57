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


@pytest.fixture(scope="module")
def probe_set():
    from qbench.plugins import get_plugins

    ds = get_plugins().registry.build("dataset", "embedded", split="train")
    sampler = CropSampler([ds.uint8(i) for i in range(len(ds))], 64, 1)
    return [sampler.batch(4) for _ in range(16)]


def stats(registry, quantizer, batches, progress=1.0, factors=(0.5, 1.0, 2.0)):
    torch.manual_seed(0)
    return model_gradient_statistics(
        trained(registry, quantizer, progress), batches, 0.0067, draws=16, step_factors=factors
    )


def test_grad_var_is_resolved_on_a_trained_model(registry, probe_set):
    """The normalised variance of additive noise on the model it trained: the 95 % interval's
    half-width is below 25 % of the estimate."""
    var = stats(registry, "noise", probe_set)["grad_var"]
    assert var.exact == "" and var.value > 0
    assert var.half_width < 0.25 * var.value, var


def test_grad_bias_has_a_plateau_in_the_step_size(registry, probe_set):
    """Across a 4x range of the finite-difference step (h/2 .. 2h) the estimate moves by less
    than its interval (else it carries the 'no plateau in h' flag), for a surrogate that is
    deterministic (STE) and one that is not (noise)."""
    for quantizer in ("ste", "noise"):
        bias = stats(registry, quantizer, probe_set)["grad_bias"]
        assert bias.flag == "", (quantizer, bias)
        assert bias.low <= bias.value <= bias.high
