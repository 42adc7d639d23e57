"""Paired arms: two quantizers trained with the same seed start from the same weights, see
the same training crops in the same order and are measured on the same probe set, so a
comparison seed by seed removes the variation that the seed brings to both.

The worker's own path runs here, in this process (:func:`qbench.run.worker.run_group`, a
real training of a few steps); spies record what it did and change nothing.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import qbench.run.worker as worker
from qbench.plan.matrix import load_matrix
from qbench.plugins import get_plugins
from qbench.results import RunDir
from qbench.run.build import DatasetCache
from qbench.run.train import CropSampler

from .test_runner import tiny


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _record_arms(tmp_path, monkeypatch, quantizers: str, seeds: str):
    """Run every train group of a tiny matrix in this process; per group: the digest of the
    initial backbone weights, the training crops and the probe crops, in order."""
    p = tiny(tmp_path, quantizers, steps=4)
    text = p.read_text().replace("seeds = [0]", f"seeds = {seeds}")
    text = text.replace(
        'metrics = ["bpp", "bpp_bitstream", "psnr"]',
        'metrics = ["bpp", "mismatch"]\nprobe_batches = 2\nprobe_crops = 2\ndraws = 2',
    )
    p.write_text(text)
    plugins = get_plugins()
    matrix = load_matrix(p, plugins.registry)
    seen: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}

    real_batch = CropSampler.sourced_batch

    def sourced_batch(self, n):
        out = real_batch(self, n)
        # the training sampler is seeded with the job's seed, the probe's with seed + 1
        kind = "train" if self.gen.initial_seed() == job.seed else "probe"
        current[kind].append(_digest(out[0]))
        return out

    real_produce = worker.load_or_produce

    def load_or_produce(job_, model, run_dir, context):
        backbone = {k: v for k, v in model.state_dict().items() if "quantizer" not in k}
        current["init"].append(hashlib.sha256(repr(sorted(backbone)).encode()).hexdigest())
        current["init"] += [_digest(v) for _, v in sorted(backbone.items())]
        return real_produce(job_, model, run_dir, context)

    monkeypatch.setattr(CropSampler, "sourced_batch", sourced_batch)
    monkeypatch.setattr(worker, "load_or_produce", load_or_produce)
    run_dir = RunDir(tmp_path / "run")
    run_dir.ensure()
    datasets = DatasetCache(plugins.registry)
    for order, job in enumerate(matrix.jobs):
        current = {"init": [], "train": [], "probe": []}
        worker.run_group([(order, job)], run_dir, plugins, torch.device("cpu"), datasets)
        seen[f"{job.quantizer.label}/{job.seed}"] = current
    rows = {(r["quantizer"], r["seed"]): r["status"] for r in run_dir.rows()}
    assert set(rows.values()) == {"ok"}, rows
    return seen


@pytest.mark.slow
def test_two_arms_of_one_seed_share_initialisation_crops_and_probe_set(tmp_path, monkeypatch):
    seen = _record_arms(tmp_path, monkeypatch, '["noise", "ste"]', "[0, 1]")
    for seed in (0, 1):
        a, b = seen[f"noise/{seed}"], seen[f"ste/{seed}"]
        assert len(a["train"]) == 4 and len(set(a["probe"])) == 2, a  # 4 steps, 2 probe batches
        assert a["init"] and a["init"] == b["init"], "same initial weights"
        assert a["train"] == b["train"], "same training crops in the same order"
        assert a["probe"] == b["probe"], "same probe set"
    # and the seed is what changes them: the test can tell
    one, other = seen["noise/0"], seen["noise/1"]
    assert one["init"][1:] != other["init"][1:]
    assert one["train"] != other["train"] and one["probe"] != other["probe"]
    assert not set(one["probe"]) & set(one["train"][:2]), "the probe is not the first batches"
