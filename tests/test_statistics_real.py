"""Gradient statistics on a real trained model resolve what they claim to (issue 13).

The model is the default run's shared initialisation (``qbench/data/init``: a
mean-scale hyperprior, N = 48, M = 64, trained 4000 steps with additive noise
at lambda = 0.0067 by ``qbench/data/init.toml``). The estimators are unbiased
whatever the number of draws ``K``, which sets only their precision: the tests take
K = 4 (``grad_slope_ratio``'s intervals are within a few per cent of K = 16's, at a
third of the cost; ``grad_var``'s test makes up with more, smaller batches) and STE,
deterministic, 2.

The finite-difference reference averages the jumps of the latents that cross a
rounding boundary, so it is smooth in the step size only on a probe population
with many distinct latents: the acceptance test of ``grad_slope_ratio`` draws
its crops from the 40 photographs of ``../shared/datasets/photos-train`` (and
skips without them). The embedded training set is 4 images of 128 x 192 px:
random crops of it keep re-measuring the same few latents, and there the
smoothed hard loss is rough in ``h`` (a property of that population, which the
flag reports, test below).
"""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from qbench.analysis import model_gradient_statistics
from qbench.run.train import CropSampler

from .conftest import PHOTOS

pytestmark = pytest.mark.slow

INIT = resources.files("qbench") / "data" / "init" / "mbt2018-mean-48-64.pt"
needs_photos = pytest.mark.skipif(
    not PHOTOS.is_dir(),
    reason=f"training photographs not found at {PHOTOS} (set QBENCH_TEST_PHOTOS=/path/to/photos)",
)


def trained(registry, quantizer: str, progress: float = 1.0):
    m = registry.build("backbone", "mbt2018-mean", N=48, M=64, checkpoint=str(INIT))
    m.set_quantizers({k: registry.build("quantizer", quantizer) for k in m.latents})
    m.set_progress(progress)
    return m


def crops(
    registry, dataset, batches: int, size: int, seed: int = 1, per_batch: int = 4
) -> list[torch.Tensor]:
    sampler = CropSampler([dataset.uint8(i) for i in range(len(dataset))], size, seed)
    return [sampler.batch(per_batch) for _ in range(batches)]


def stats(registry, quantizer, batches, factors=(0.5, 1.0, 2.0), progress=1.0, draws=4, **kw):
    torch.manual_seed(0)
    model = trained(registry, quantizer, progress)
    return model_gradient_statistics(
        model, batches, 0.0067, draws=draws, step_factors=factors, **kw
    )


def test_grad_var_is_resolved_on_a_trained_model(registry):
    """The normalised variance of additive noise on the model it trained: with 128 probe
    batches of 4 crops of 64 px and K = 4 draws the 95 % interval's half-width is below
    25 % of the estimate (22 % here; 19 to 21 % with the crops of seeds 2 to 6; with 16
    batches of 64 px it was 64 %: 0.061 [0.022, 0.100]). The interval's width comes from
    the crops' content and from the draws about equally; for a given cost many small
    batches resolve it best (80 batches of 4 crops of 128 px with K = 16, 8 times the
    cost, gave 23 %)."""
    embedded = registry.build("dataset", "embedded", split="train")
    torch.manual_seed(0)
    var = model_gradient_statistics(
        trained(registry, "noise"),
        crops(registry, embedded, 128, 64),
        0.0067,
        draws=4,
        step_factors=(1.0,),
    )["grad_var"]
    assert var.exact == "" and var.value > 0
    assert var.half_width < 0.25 * var.value, var


@needs_photos
@pytest.mark.parametrize(
    ("quantizer", "progress", "expected"),
    [("ste", 1.0, (0.9, 1.1)), ("noise", 1.0, (0.9, 1.1)), ("sua", 0.5, (0.5, 0.8))],
)
def test_grad_slope_ratio_is_resolved_and_has_a_plateau_in_the_step_size(
    registry, quantizer, progress, expected
):
    """Issue 13's acceptance criterion on a real trained model, for a deterministic
    surrogate (STE), a random one (noise) and an annealed one halfway (SUA, t = 0.5):
    32 batches of 4 crops of 128 px of the training photographs, K = 4 draws, the default step
    (latents moved by 0.05 quantization steps rms). The 95 % interval's half-width is
    below 25 % of the estimate, and across the 4x range h/2 .. 2h the estimate moves by
    less than its interval (else the flag says "no plateau in h"); and the statistic
    tells SUA mid-schedule (over-promising) from STE and noise (faithful). Measured
    2026-11-30 (docs/statistics.md): STE 1.018 +- 0.044 (h/2: 0.987, 2h: 1.004), noise
    1.027 +- 0.039 (1.001, 1.012), SUA at t = 0.5 0.642 +- 0.037 (0.624, 0.638); at the
    old default step (0.1) 2h gave 1.08 for STE and was flagged. With K = 4 (these figures
    are K = 16's): STE the same, noise 1.028 +- 0.038, SUA 0.643 +- 0.038."""
    photos = registry.build("dataset", "folder", path=str(PHOTOS))
    batches = crops(registry, photos, 32, 128)
    ratio = stats(registry, quantizer, batches, progress=progress)["grad_slope_ratio"]
    assert ratio.exact == "" and ratio.flag == "", ratio
    assert ratio.half_width < 0.25 * ratio.value, ratio
    low, high = expected
    assert low < ratio.low and ratio.high < high, ratio


def test_a_step_size_dependence_is_flagged_not_hidden(registry):
    """On the embedded training set (4 small images) at large steps (latents moved by 0.1
    to 0.4 quantization steps rms) the smoothed hard loss is not linear: the estimate at h
    is the one a single step size gives, and the flag names the step sizes that moved it
    and their values."""
    embedded = registry.build("dataset", "embedded", split="train")
    batches = crops(registry, embedded, 8, 128)
    # STE is deterministic: two draws are all its draws
    flagged = stats(registry, "ste", batches, factors=(1.0, 4.0), draws=2, latent_rms=0.1)
    single = stats(registry, "ste", batches, factors=(1.0,), draws=2, latent_rms=0.1)
    ratio, alone = flagged["grad_slope_ratio"], single["grad_slope_ratio"]
    assert (ratio.value, ratio.low, ratio.high) == (alone.value, alone.low, alone.high)
    assert ratio.flag.startswith("no plateau in h (4h: "), ratio
    assert alone.flag == ""  # one step size: nothing to compare
