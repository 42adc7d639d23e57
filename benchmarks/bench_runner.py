"""Speed benchmarks of the runner, printed as ratios against baselines measured in the same run.

    python benchmarks/bench_runner.py [--quick] [--kodak PATH]

1. training step: qbench's loop (plugin quantizer, bins-based likelihoods) vs a
   hand-written CompressAI step on the same model and batch   (target <= 1.05x)
2. evaluation: qbench's per-image evaluation (forward + real bitstream, PSNR,
   MS-SSIM) vs a compressai.utils.eval_model-style loop, on a factorized and a
   mean-scale hyperprior backbone                               (target <= 1.05x)
3. the default CPU plan (one single-thread worker per core) vs one worker using every
   core through torch threads, on a CPU matrix of 4 jobs        (target >= 1.7x speed-up)
4. resume of a finished 100-job run                            (target < 2 s)
5. GPU: jobs per hour and GPU utilisation with --jobs-per-gpu K against one job per
   GPU (says so plainly, and measures nothing, when no GPU is present)

No timing is asserted anywhere; these numbers go into notes and issues.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_train_step(reg, steps: int) -> tuple[float, float]:
    from qbench.rd import rd_loss

    torch.manual_seed(0)
    x = torch.rand(8, 3, 128, 128)
    ours = reg.build("backbone", "bmshj2018-factorized", N=64, M=96)
    ours.set_quantizers({"y": reg.build("quantizer", "noise")})
    ours.train()
    net = ours.net  # the same CompressAI model, called directly
    opt_a = torch.optim.Adam(list(ours.main_parameters()), lr=1e-4)
    opt_b = torch.optim.Adam([p for n, p in net.named_parameters() if "quantiles" not in n], 1e-4)

    def qbench_steps():
        for i in range(steps):
            ours.set_progress(i / steps)
            opt_a.zero_grad()
            loss = rd_loss(ours(x), x, 0.01)[0]
            loss.backward()
            opt_a.step()

    def plain_steps():
        for _ in range(steps):
            opt_b.zero_grad()
            out = net(x)
            bpp = sum(torch.log(p).sum() for p in out["likelihoods"].values()) / (
                -math.log(2) * x.shape[0] * x.shape[2] * x.shape[3]
            )
            loss = 0.01 * 255**2 * F.mse_loss(out["x_hat"], x) + bpp
            loss.backward()
            opt_b.step()

    plain_steps()
    qbench_steps()  # warm-up
    return best_of(qbench_steps, 3) / steps, best_of(plain_steps, 3) / steps


def bench_eval(reg, images, backbone: str = "bmshj2018-factorized") -> tuple[float, float]:
    from pytorch_msssim import ms_ssim

    from qbench.run.evaluate import crop_back, evaluate, pad_to

    torch.manual_seed(0)
    m = reg.build("backbone", backbone, N=64, M=96)
    m.set_quantizers({latent: reg.build("quantizer", "noise") for latent in m.latents})
    m.eval()
    m.update(force=True)
    metrics = [reg.build("metric", n) for n in ("bpp", "bpp_bitstream", "psnr", "ms_ssim")]
    net = m.net

    def qbench_eval():
        evaluate(m, images, [str(i) for i in range(len(images))], metrics)

    @torch.no_grad()
    def plain_eval():  # the shape of compressai.utils.eval_model's entropy-coding path
        for img in images:
            x = img[None]
            xp, pad = pad_to(x, 64)
            enc = net.compress(xp)
            out = net.decompress(enc["strings"], enc["shape"])
            x_hat = crop_back(out["x_hat"], pad).clamp(0, 1)
            sum(len(s[0]) for s in enc["strings"]) * 8.0 / (x.shape[2] * x.shape[3])
            -10 * math.log10(F.mse_loss(x, x_hat).item())
            ms_ssim(x, x_hat, data_range=1.0).item()
            net(xp)  # eval_model also reports likelihood bpp in its forward mode

    plain_eval()
    qbench_eval()
    ours, plain = [], []
    for _ in range(3):  # interleaved, so that a load change hits both alike
        ours.append(best_of(qbench_eval, 1))
        plain.append(best_of(plain_eval, 1))
    return min(ours), min(plain)


MATRIX = """
[matrix]
backbones = [{{ name = "bmshj2018-factorized", N = 32, M = 48 }}]
quantizers = ["noise", "ste"]
lambdas = {lambdas}
datasets = [{{ name = "embedded", split = "eval" }}]
[train]
steps = {steps}
batch_size = 8
crop = 64
lr = 1e-3
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
"""


def bench_workers(steps: int, configs=((1, None), (2, None))) -> list[float]:
    """Wall time of a 4-job matrix for each (workers, threads per worker) in ``configs``
    (None: qbench's default)."""
    import qbench.plugins
    from qbench.plan.matrix import load_matrix
    from qbench.run.runner import run_matrix

    times = []
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.toml"
        p.write_text(MATRIX.format(lambdas="[0.001, 0.01]", steps=steps))
        m = load_matrix(p, qbench.plugins.get_plugins().registry)
        for k, (workers, threads) in enumerate(configs):
            if threads:
                os.environ["QBENCH_THREADS"] = str(threads)
            t = time.perf_counter()
            run_matrix(
                m,
                Path(d) / f"run{k}",
                workers=workers,
                device="cpu",
                show_progress=False,
                echo=lambda *_: None,
            )
            times.append(time.perf_counter() - t)
            os.environ.pop("QBENCH_THREADS", None)
    return times


def bench_resume() -> tuple[float, float]:
    import qbench.plugins
    from qbench.plan.matrix import load_matrix
    from qbench.results import RunDir
    from qbench.run.runner import run_matrix

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.toml"
        lambdas = [round(0.001 * (1.1**i), 6) for i in range(50)]
        p.write_text(MATRIX.format(lambdas=lambdas, steps=10))
        t = time.perf_counter()
        m = load_matrix(p, qbench.plugins.get_plugins().registry)
        load_time = time.perf_counter() - t
        assert len(m.jobs) == 100
        run = RunDir(Path(d) / "run")
        run.ensure()
        run.claim(m.identity(), force=False, append=False)
        for j in m.jobs:  # synthetic finished rows: this measures bookkeeping only
            run.write_row(
                {
                    "job_id": j.job_id,
                    "backbone": j.backbone.label,
                    "quantizer": j.quantizer.label,
                    "lambda": j.lmbda,
                    "dataset": j.dataset.label,
                    "seed": j.seed,
                    "status": "ok",
                    "bpp": 0.1,
                    "psnr": 30.0,
                }
            )
        t = time.perf_counter()
        s = run_matrix(m, run.root, device="cpu", show_progress=False, echo=lambda *_: None)
        resume = time.perf_counter() - t
        assert s.ran == 0
    return resume, load_time


GPU_MATRIX = """
[matrix]
backbones = [{{ name = "mbt2018-mean", N = 64, M = 96 }}]
quantizers = ["noise", "ste", "mixed", "sua"]
lambdas = [0.001, 0.003, 0.01, 0.03]
datasets = [{{ name = "embedded", split = "eval" }}]
[train]
steps = {steps}
batch_size = 16
crop = 128
lr = 1e-4
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
"""


def _gpu_utilisation(stop, samples: list[float]) -> None:
    """Sample the GPUs' utilisation (percent) every 0.5 s until ``stop`` is set."""
    import subprocess

    while not stop.is_set():
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.split()
            samples.append(sum(float(v) for v in out) / max(1, len(out)))
        except (OSError, ValueError, subprocess.SubprocessError):
            return
        stop.wait(0.5)


def bench_gpu(jobs_per_gpu: int, steps: int) -> str:
    """5. jobs per hour and mean GPU utilisation: ``--jobs-per-gpu K`` vs one job per GPU."""
    import threading

    if not torch.cuda.is_available():
        return "5. GPU          no CUDA GPU is present on this machine: nothing measured"
    import qbench.plugins
    from qbench.plan.matrix import load_matrix
    from qbench.run.runner import run_matrix

    lines = [f"5. GPU          {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"]
    results = {}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "gpu.toml"
        p.write_text(GPU_MATRIX.format(steps=steps))
        m = load_matrix(p, qbench.plugins.get_plugins().registry)
        for k in (1, jobs_per_gpu):
            stop, samples = threading.Event(), []
            watcher = threading.Thread(target=_gpu_utilisation, args=(stop, samples))
            watcher.start()
            t = time.perf_counter()
            run_matrix(
                m,
                Path(d) / f"k{k}",
                device="cuda",
                jobs_per_gpu=k,
                show_progress=False,
                echo=lambda *_: None,
            )
            seconds = time.perf_counter() - t
            stop.set()
            watcher.join()
            util = sum(samples) / len(samples) if samples else float("nan")
            results[k] = len(m.jobs) * 3600.0 / seconds
            lines.append(
                f"   jobs-per-gpu {k}: {len(m.jobs)} jobs of {steps} steps in {seconds:6.1f} s = "
                f"{results[k]:6.0f} jobs/h, GPU utilisation {util:5.1f} %"
            )
    ratio = results[jobs_per_gpu] / results[1]
    lines.append(f"   ratio {ratio:.2f}x jobs/h against one job per GPU")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps (noisier figures)")
    ap.add_argument("--kodak", default=os.environ.get("QBENCH_KODAK"))
    ap.add_argument("--jobs-per-gpu", type=int, default=4, help="K of the GPU section")
    args = ap.parse_args()
    from qbench.plugins import get_plugins

    reg = get_plugins().registry
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {sys.platform}")

    ours, plain = bench_train_step(reg, 5 if args.quick else 20)
    print(
        f"1. train step   qbench {ours * 1e3:7.1f} ms  plain CompressAI {plain * 1e3:7.1f} ms"
        f"  ratio {ours / plain:.3f}x (target <= 1.05)"
    )

    if args.kodak and Path(args.kodak).is_dir():
        ds = reg.build("dataset", "kodak", path=args.kodak)
        images = [ds[i] for i in range(4 if args.quick else len(ds))]
        where = f"Kodak ({len(images)} images)"
    else:
        ds = reg.build("dataset", "embedded", split="eval")
        images = [ds[i] for i in range(len(ds))]
        where = f"embedded ({len(images)} images)"
    for backbone in ("bmshj2018-factorized", "mbt2018-mean"):
        ours, plain = bench_eval(reg, images, backbone)
        print(
            f"2. evaluation   qbench {ours:7.2f} s   eval_model-style {plain:7.2f} s"
            f"  ratio {ours / plain:.3f}x (target <= 1.05) on {where}, {backbone}"
        )

    cores = os.cpu_count() or 1
    one, default, single = bench_workers(
        50 if args.quick else 1000, ((1, cores), (None, None), (1, 1))
    )
    print(
        f"3. workers      1 worker x {cores} threads {one:6.1f} s  default (one single-thread "
        f"worker per core) {default:6.1f} s  speed-up {one / default:.2f}x (target >= 1.7);"
        f" vs 1 worker x 1 thread ({single:.1f} s): {single / default:.2f}x"
    )

    resume, load = bench_resume()
    print(
        f"4. resume       100 finished jobs {resume:5.2f} s (target < 2 s); "
        f"matrix load alone {load:5.2f} s, ratio {resume / load:.1f}x"
    )

    print(bench_gpu(args.jobs_per_gpu, 100 if args.quick else 500))


if __name__ == "__main__":
    main()
