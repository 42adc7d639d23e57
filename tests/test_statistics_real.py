"""Statistics on a real trained model describe the surrogate and resolve what they claim to.

The model is the default run's shared initialisation (``qbench/data/init``: a
mean-scale hyperprior, N = 48, M = 64, trained 4000 steps with additive noise
at lambda = 0.0067 by ``qbench/data/init.toml``). The number of draws ``K`` sets
only the precision of the estimators: the tests take K = 2, the fewest the
gradient statistics accept (``grad_slope_ratio``'s cross-fit needs two halves).

The finite-difference reference averages the jumps of the latents that cross a
rounding boundary, so it is smooth in the step size only on a probe population
with many distinct latents: the tests of ``grad_slope_ratio`` and ``grad_var``
draw their crops from the 40 training photographs of ``QBENCH_TEST_PHOTOS``
(and skip without them). The embedded training set is 4 images of 128 x 192 px:
random crops of it keep re-measuring the same few latents, and there the
smoothed hard loss is rough in ``h`` (a property of that population, which the
flag reports, test below).
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import torch

import qbench
from qbench.analysis import model_grad_var, model_gradient_statistics
from qbench.run.train import CropSampler

from .conftest import PHOTOS

pytestmark = pytest.mark.slow

INIT = resources.files("qbench") / "data" / "init" / "mbt2018-mean-48-64.pt"
LMBDA = 0.0067
needs_photos = pytest.mark.skipif(
    not PHOTOS.is_dir(),
    reason=f"training photographs not found at {PHOTOS} (set QBENCH_TEST_PHOTOS=/path/to/photos)",
)


def trained(registry, quantizer: str, progress: float = 1.0, **options):
    m = registry.build("backbone", "mbt2018-mean", N=48, M=64, checkpoint=str(INIT))
    m.set_quantizers({k: registry.build("quantizer", quantizer, **options) for k in m.latents})
    m.set_progress(progress)
    return m


def crops(dataset, count: int, size: int, seed: int = 1) -> torch.Tensor:
    """``count`` random training crops of ``size`` px (one tensor)."""
    sampler = CropSampler([dataset.uint8(i) for i in range(len(dataset))], size, seed)
    return sampler.batch(count)


def photo_batches(registry, batches: int, per_batch: int = 4, size: int = 128):
    photos = registry.build("dataset", "folder", path=str(PHOTOS))
    return list(crops(photos, batches * per_batch, size).split(per_batch))


def slope_ratio(registry, batches, quantizer, progress=1.0, factors=(0.5, 1.0, 2.0), **kw):
    options = {k: kw.pop(k) for k in ("stop_gradient",) if k in kw}
    torch.manual_seed(0)
    model = trained(registry, quantizer, progress, **options)
    stats = model_gradient_statistics(model, batches, LMBDA, draws=2, step_factors=factors, **kw)
    return stats["grad_slope_ratio"]


@needs_photos
def test_grad_var_is_comparable_across_probe_sizes(registry):
    """The issue's acceptance test of ``grad_var``: one probe of 96 batches of 4 crops and
    one of 24 batches of 16 crops, the same 384 crops of 64 px of the training photographs
    (4x the pixels per batch), noise on the model it trained, K = 2. Scaled to a training
    batch of 8 crops, the two agree within their intervals; unscaled (the noise of a probe
    batch, which goes as one over its pixels) their intervals are disjoint, so the
    intervals are narrow enough to see the factor of 4 the scaling removes."""
    photos = registry.build("dataset", "folder", path=str(PHOTOS))
    x = crops(photos, 384, 64)
    train_pixels = 8 * 64 * 64
    scaled = {}
    for per_batch in (4, 16):
        torch.manual_seed(0)
        scaled[per_batch] = model_grad_var(
            trained(registry, "noise"),
            list(x.split(per_batch)),
            LMBDA,
            draws=2,
            train_pixels=train_pixels,
        )
    small, large = scaled[4], scaled[16]
    for e in (small, large):
        assert e.exact == "" and e.flag == "" and e.value > 0, e
        assert e.half_width < 0.6 * e.value, e
    assert small.low < large.high and large.low < small.high, (small, large)
    # unscaled: the probe batches' own noise, 1 / (P / P_train) times the scaled value
    raw = {
        n: (e.low * train_pixels / (n * 64 * 64), e.high * train_pixels / (n * 64 * 64))
        for n, e in scaled.items()
    }
    assert raw[16][1] < raw[4][0], raw


@needs_photos
@pytest.mark.parametrize("quantizer", ["ste", "noise"])
def test_grad_slope_ratio_is_resolved_and_has_a_plateau_in_the_step_size(registry, quantizer):
    """``grad_slope_ratio`` on a real trained model, for a deterministic surrogate (STE)
    and a random one (noise): 16 batches of 4 crops of 128 px of the training photographs,
    K = 2 draws, the default step (latents moved by 0.05 quantization steps rms). Its
    jackknife refits the mean direction in every replicate (8 groups of 2 batches). The
    95 % interval's half-width is below 25 % of the estimate, across the 4x range
    h/2 .. 2h the estimate moves by less than its interval (else the flag says "no
    plateau in h"), and both deliver the decrease they promise: the interval lies within
    0.85 .. 1.15 (measured: STE 1.015 +- 0.092, noise 1.022 +- 0.060; docs/statistics.md)."""
    ratio = slope_ratio(registry, photo_batches(registry, 16), quantizer)
    assert ratio.exact == "" and ratio.flag == "", ratio
    assert ratio.half_width < 0.25 * ratio.value, ratio
    assert ratio.low > 0.85 and ratio.high < 1.15, ratio


@needs_photos
def test_the_partial_stop_gradient_not_annealing_makes_sua_over_promise(registry):
    """What lowers SUA's ``grad_slope_ratio`` is its gradient routing, not its annealing:
    STE with ``stop_gradient = "partial"`` (SUA's default routing; the rate's gradient to
    the mean is cut) over-promises (ratio below 0.8), while SUA halfway through its
    annealing (t = 0.5, temperature 0.076) with ``stop_gradient = "none"`` delivers what it
    promises (above 0.85, clear of the first). 16 batches of 4 crops of 128 px, K = 2,
    the default step only (measured: 0.652 +- 0.095 and 1.012 +- 0.082; on the same
    crops STE gives 1.015, and SUA with its default "partial" routing 0.648 at t = 0.5
    and 0.654 at t = 1, where its forward pass is rounding; docs/statistics.md)."""
    batches = photo_batches(registry, 16)
    partial = slope_ratio(registry, batches, "ste", factors=(1.0,), stop_gradient="partial")
    annealing = slope_ratio(registry, batches, "sua", 0.5, factors=(1.0,), stop_gradient="none")
    assert partial.exact == "" and partial.high < 0.8, partial
    assert annealing.exact == "" and annealing.low > 0.85, annealing
    # the report's note on a routed centre states these two figures: inside the intervals
    note = qbench.Surrogate.report_notes["stop_gradient"]
    assert "from 1.01 to 0.65" in note
    assert annealing.low <= 1.01 <= annealing.high and partial.low <= 0.65 <= partial.high


#: every number in the built-in schedule statistics' column notes, and where it is checked
NOTE_NUMBERS = {
    "mismatch_rate": {"0"},  # the definition of no mismatch
    "mismatch_dist": set(),
    "mismatch_latent": {"1/6", "1/12", "0"},  # measured below
    "mismatch_latent_rate": {"1/6", "0"},  # measured below
    "grad_var": {"0"},  # measured below (STE)
    "grad_slope_ratio": {"1"},  # definitions: 1 is faithful, the bias is 1 - ratio
}


@needs_photos
def test_every_number_in_the_column_notes_is_measured(registry):
    """The column notes the report prints under the schedule statistics state numbers;
    each is checked here, on the real model and through the metric plugins: additive
    noise's latent mismatch is about 1/6 on both paths (measured 0.160: the rounding
    residual, 1/12 for latents spread over many cells, plus the noise's 1/12, its
    variance by construction), mixed's rate path too (0.160); STE's latent mismatch on
    both paths, mixed's on its distortion path and STE's grad_var are 0 and exact. A
    number added to a note without a check here fails the test."""
    import qbench

    metrics = {name: registry.build("metric", name) for name in ("mismatch", "gradients")}
    notes = {c: n for m in metrics.values() for c, n in m.column_notes.items()}
    # numbers, not exponents (||E g||^2)
    numbers = {c: set(re.findall(r"(?<![\^\w.])\d+(?:/\d+|\.\d+)?", n)) for c, n in notes.items()}
    assert numbers == NOTE_NUMBERS
    batches = photo_batches(registry, 4, 2, 128)
    measured = {}
    for name in ("noise", "mixed", "ste"):
        torch.manual_seed(0)
        ev = qbench.ProbeEval(trained(registry, name), batches, LMBDA, 0, 1.0, 2)
        measured[name] = metrics["mismatch"].per_probe(ev)
    for name, col in (
        ("noise", "mismatch_latent"),
        ("noise", "mismatch_latent_rate"),
        ("mixed", "mismatch_latent_rate"),
    ):
        e = measured[name][col]
        assert e.exact == "" and abs(e.value - 1 / 6) < 0.02, (name, col, e)
    for name, col in (
        ("ste", "mismatch_latent"),
        ("ste", "mismatch_latent_rate"),
        ("mixed", "mismatch_latent"),
        ("mixed", "mismatch_dist"),
    ):
        assert measured[name][col].value == 0 and measured[name][col].exact, (name, col)
    torch.manual_seed(0)
    ev = qbench.ProbeEval(trained(registry, "ste"), batches, LMBDA, 0, 1.0, 2)
    assert metrics["gradients"].per_probe(ev)["grad_var"].exact == "deterministic surrogate"


def test_a_step_size_dependence_is_flagged_not_hidden(registry):
    """On the embedded training set (4 small images) at large steps (latents moved by 0.1
    to 0.4 quantization steps rms) the smoothed hard loss is not linear: the estimate at h
    is the one a single step size gives, and the flag names the step sizes that moved it
    and their values."""
    embedded = registry.build("dataset", "embedded", split="train")
    batches = list(crops(embedded, 16, 128).split(4))
    # STE is deterministic: two draws are all its draws
    flagged = slope_ratio(registry, batches, "ste", factors=(1.0, 4.0), latent_rms=0.1)
    single = slope_ratio(registry, batches, "ste", factors=(1.0,), latent_rms=0.1)
    assert (flagged.value, flagged.low, flagged.high) == (single.value, single.low, single.high)
    assert flagged.flag.startswith("no plateau in h (4h: "), flagged
    assert single.flag == ""  # one step size: nothing to compare
