"""The figures of docs/statistics.md, measured on the shipped initialisation.

    python benchmarks/bench_statistics.py grad-var [--photos PATH] [--sets 30]
    python benchmarks/bench_statistics.py slope --photos PATH
    python benchmarks/bench_statistics.py routing --photos PATH

The model is ``qbench/data/init/mbt2018-mean-48-64.pt`` (mean-scale
hyperprior, N = 48, M = 64, trained with additive noise at lambda = 0.0067),
lambda = 0.0067. Run with ``OMP_NUM_THREADS=1``; each part takes a few CPU
minutes.

1. ``grad-var``: the small-sample bias of ``grad_var``. For each data set
   (the embedded training crops of the default run; a folder of photographs
   with ``--photos``) a pool of ``--sets x 8`` independent probe batches is
   drawn at the old default probe shape (3 crops of 64 px) and at the new one
   (a training batch of the default run: 8 crops of 64 px), K = 8 draws each.
   *Before*: the old estimator (``sum_b v_b / sum_b m_b`` with ``m_b`` the
   within-batch unbiased ``||E g_b||^2``, no bias correction) on each set of 8
   batches, its mean over the sets against the same estimator on the whole
   pool (the large-probe reference). *After*: ``qbench.analysis.normalised_variance``
   (the shipped estimator) the same way.
2. ``slope``: ``grad_slope_ratio`` of STE and noise on the acceptance test's
   crops (32 batches of 4 crops of 128 px of the photographs, seed 1, K = 4):
   the half-width with the direction held fixed in the jackknife (before), with
   the direction refitted in each replicate of a delete-one jackknife, and as
   shipped (refitted, at most ``SLOPE_GROUPS`` groups).
3. ``routing``: what moves SUA's ``grad_slope_ratio`` and ``grad_var``: STE with and
   without ``stop_gradient = "partial"``, SUA at t = 0.5 with ``"partial"`` (its
   default) and ``"none"``, SUA at t = 1 (its forward is rounding), and
   ``grad_var`` of SUA at t = 0.1 both ways.

No figure is asserted here; the tests assert what they need
(tests/test_statistics_real.py).
"""

from __future__ import annotations

import argparse
import math
import time
from importlib import resources

import torch

from qbench import analysis
from qbench.analysis import (
    DrawSums,
    Estimate,
    draw_sums,
    finite_difference,
    jackknife,
    latent_step,
    ratio_of_sums,
)
from qbench.plugins import load_plugins
from qbench.run.train import CropSampler

INIT = resources.files("qbench") / "data" / "init" / "mbt2018-mean-48-64.pt"
LMBDA = 0.0067


def model(registry, quantizer: str = "noise", progress: float = 1.0, **options):
    m = registry.build("backbone", "mbt2018-mean", N=48, M=64, checkpoint=str(INIT))
    m.set_quantizers({k: registry.build("quantizer", quantizer, **options) for k in m.latents})
    m.set_progress(progress)
    return m


def images(registry, photos: str | None):
    ds = (
        registry.build("dataset", "folder", path=photos)
        if photos
        else registry.build("dataset", "embedded", split="train")
    )
    return [ds.uint8(i) for i in range(len(ds))]


def shown(e: Estimate) -> str:
    return f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}] (half-width {e.half_width:.4f})"


# -- 1. grad_var ----------------------------------------------------------------------


def pool(m, imgs, batches: int, crops: int, draws: int, seed: int) -> list[DrawSums]:
    """``batches`` independent probe batches' draw sums, each kept as its total in float32
    (the odd half as a zero scalar: only the total enters ``grad_var``)."""
    sampler = CropSampler(imgs, 64, seed)
    out = []
    with analysis._analysis_gradients(m) as params:
        for _ in range(batches):
            x = sampler.batch(crops)
            s = draw_sums(analysis._rd_loss_in_mode(m, x, LMBDA, True), params, draws)
            zero = torch.zeros((), dtype=torch.float32)
            out.append(DrawSums(s.total.float(), zero, s.squares, s.draws, s.identical))
    return out


def old_grad_var(sums: list[DrawSums]) -> float:
    """The estimator before: ``sum_b v_b / sum_b m_b``, no bias correction."""
    v = sum(s.trace_cov for s in sums)
    m = sum(s.mean_sq for s in sums)
    return v / m if m > 0 else float("nan")


def bias(registry, photos: str | None, sets: int) -> None:
    """Bias before/after at 3 and 8 crops per batch; then the pooled values at 3, 8 and 12
    crops scaled to a training batch of 8 crops (old and new estimator)."""
    m = model(registry)
    imgs = images(registry, photos)
    where = photos or "embedded training crops"
    pooled = {}
    for crops in (3, 8):
        torch.manual_seed(0)
        start = time.perf_counter()
        sums = pool(m, imgs, 8 * sets, crops, 8, seed=100 + crops)
        took = time.perf_counter() - start
        pooled[crops] = sums
        split = [sums[8 * i : 8 * (i + 1)] for i in range(sets)]
        shape = f"{sets} probe sets of 8 batches x {crops} crops of 64 px, K = 8"
        print(f"\n{where}: {shape} ({took:.0f} s)")
        before = [old_grad_var(s) for s in split]
        print(f"  before (old estimator): {summary(old_grad_var(sums), before)}")
        after = [analysis.normalised_variance(s) for s in split]
        print(f"  after (shipped): {summary(analysis.normalised_variance(sums).value, after)}")
    torch.manual_seed(0)
    pooled[12] = pool(m, imgs, 2 * sets, 12, 8, seed=112)
    print(f"\n{where}: pooled, scaled to a training batch of 8 crops of 64 px (x crops / 8)")
    for crops, sums in pooled.items():
        new = analysis.normalised_variance(sums, crops / 8)
        noise = sum(s.trace_cov for s in sums) / len(sums)
        print(
            f"  {len(sums)} batches x {crops} crops: old {old_grad_var(sums) * crops / 8:.4f}, "
            f"shipped {shown(new)}; mean tr Cov(g | batch) {noise:.3f}"
        )


def summary(reference: float, values: list) -> str:
    """Mean over the probe sets against the pooled reference, and the median half-width."""
    points = [v.value if isinstance(v, Estimate) else v for v in values]
    t = torch.tensor(points, dtype=torch.float64)
    ok = t[torch.isfinite(t)]
    mean, se = float(ok.mean()), float(ok.std()) / math.sqrt(len(ok))
    text = (
        f"pooled {reference:.4f}; mean over {len(ok)} sets {mean:.4f} +- {se:.4f} (se), "
        f"bias {100 * (mean / reference - 1):+.0f} % +- {100 * se / reference:.0f} %; "
        f"undefined in {len(points) - len(ok)} sets"
    )
    widths = [v.half_width / v.value for v in values if isinstance(v, Estimate) and v.value > 0]
    if widths:
        median = 100 * float(torch.tensor(widths).median())
        text += f"; median half-width {median:.0f} % of the value"
    return text


# -- 2. grad_slope_ratio's jackknife ------------------------------------------------


def fixed_direction(sums, hard, params, step) -> Estimate:
    """The interval before: the direction fitted once on all batches, jackknife over the
    per-batch slopes along it (delete-one)."""
    half = sums[0].draws // 2
    ref = torch.zeros(len(sums), dtype=torch.float64)
    sur = torch.zeros(len(sums), dtype=torch.float64)
    for fit, score in (("even", "odd"), ("odd", "even")):
        direction = sum(getattr(s, fit) for s in sums)
        u = direction / direction.norm()
        sur += torch.tensor([float(getattr(s, score) @ u) / half for s in sums])
        h = step(u)
        ref += torch.tensor([finite_difference(f, params, u, h) for f in hard])
    return jackknife(ratio_of_sums(ref, sur), len(sums))


def slope(registry, photos: str) -> None:
    imgs = images(registry, photos)
    sampler = CropSampler(imgs, 128, 1)
    batches = [sampler.batch(4) for _ in range(32)]
    for name in ("ste", "noise"):
        torch.manual_seed(0)
        m = model(registry, name)
        with analysis._analysis_gradients(m) as params:
            sums = [
                draw_sums(analysis._rd_loss_in_mode(m, x, LMBDA, True), params, 4) for x in batches
            ]
            hard = [analysis._rd_loss_in_mode(m, x, LMBDA, False) for x in batches]
            step = latent_step(m, batches, params, 0.05)
            print(f"\n{name}, 32 batches x 4 crops of 128 px, K = 4")
            t = time.perf_counter()
            print(
                f"  fixed direction, delete-one: {shown(fixed_direction(sums, hard, params, step))}"
                f" ({time.perf_counter() - t:.0f} s)"
            )
            for groups in (analysis.SLOPE_GROUPS, len(batches)):
                saved, analysis.SLOPE_GROUPS = analysis.SLOPE_GROUPS, groups
                t = time.perf_counter()
                e = analysis._slope_ratio_along_mean(sums, hard, params, step, (1.0,))
                analysis.SLOPE_GROUPS = saved
                print(f"  refitted, {groups} groups: {shown(e)} ({time.perf_counter() - t:.0f} s)")


# -- 3. routing ------------------------------------------------------------------------


ROUTES = [
    ("ste", 1.0, 2, {}),
    ("ste", 1.0, 2, {"stop_gradient": "partial"}),
    ("sua", 0.5, 4, {}),
    ("sua", 0.5, 4, {"stop_gradient": "none"}),
    ("sua", 1.0, 2, {}),
]


def routing(registry, photos: str) -> None:
    imgs = images(registry, photos)
    sampler = CropSampler(imgs, 128, 1)
    batches = [sampler.batch(4) for _ in range(16)]
    print("\ngrad_slope_ratio, 16 batches x 4 crops of 128 px")
    for name, progress, draws, options in ROUTES:
        torch.manual_seed(0)
        m = model(registry, name, progress, **options)
        t = time.perf_counter()
        e = analysis.model_gradient_statistics(m, batches, LMBDA, draws=draws, step_factors=(1.0,))
        label = f"{name} t={progress:g} {options or 'default'}"
        print(f"  {label}: {shown(e['grad_slope_ratio'])} ({time.perf_counter() - t:.0f} s)")
    sampler = CropSampler(imgs, 64, 2)
    small = [sampler.batch(8) for _ in range(48)]
    print("\ngrad_var of sua at t = 0.1, 48 batches x 8 crops of 64 px, K = 4")
    for route in ("partial", "none"):
        torch.manual_seed(0)
        m = model(registry, "sua", 0.1, stop_gradient=route)
        print(
            f"  stop_gradient={route}: {shown(analysis.model_grad_var(m, small, LMBDA, draws=4))}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("part", choices=("grad-var", "slope", "routing"))
    ap.add_argument("--photos", help="a folder of training photographs")
    ap.add_argument("--sets", type=int, default=30, help="probe sets for the bias (default 30)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    registry = load_plugins().registry
    if args.part == "grad-var":
        bias(registry, None, args.sets)
        if args.photos:
            bias(registry, args.photos, args.sets)
    elif not args.photos:
        ap.error(f"{args.part} needs --photos")
    elif args.part == "slope":
        slope(registry, args.photos)
    else:
        routing(registry, args.photos)


if __name__ == "__main__":
    main()
