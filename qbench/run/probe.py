"""The schedule probe: statistics measured on a fixed probe set while a model trains.

Metrics with ``per_probe`` (mismatch, gradient statistics) are measured at the
``[eval] schedule`` points of a training on the job's fixed probe set, and
summed up in the row (final state, training average; :mod:`qbench.schedule`).
Probing changes no weight and draws nothing from the training's random
stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from qbench import schedule
from qbench.analysis import isolated_rng
from qbench.backbone import Backbone
from qbench.metric import Metric, ProbeEval
from qbench.plan.jobs import Job
from qbench.run.build import DatasetCache
from qbench.run.train import CropSampler, Outcome

#: ``(model, steps) -> (probe_steps, measure)``: what a training is probed with
Probe = Callable[[Backbone, int], tuple[list[int], Callable[[int], dict[str, Any]]]]


def probe_set(job: Job, datasets: DatasetCache) -> list[torch.Tensor]:
    """The job's fixed probe set: ``[eval] probe_batches`` batches of ``probe_crops`` training
    crops from their own generator (``seed + 1``), never the training sampler's."""
    return sourced_probe_set(job, datasets)[0]


def sourced_probe_set(job: Job, datasets: DatasetCache) -> tuple[list[torch.Tensor], set[int]]:
    """:func:`probe_set` and the indexes of the training images its crops came from."""
    sampler = CropSampler(datasets.uint8_images(job.train_dataset), job.train.crop, job.seed + 1)
    batches, sources = [], set()
    for _ in range(job.eval.probe_batches):
        batch, images = sampler.sourced_batch(probe_crops(job))
        batches.append(batch)
        sources.update(images)
    return batches, sources


def probe_shape(job: Job, datasets: DatasetCache) -> dict[str, int]:
    """The row's description of the probe set the schedule statistics were measured on:
    ``probe_batches``, ``probe_pixels`` (pixels of one probe batch), ``probe_images``
    (distinct training images its crops came from) and ``train_pixels`` (pixels of one
    training batch, the batch ``grad_var`` is stated for)."""
    _, sources = sourced_probe_set(job, datasets)
    return {
        "probe_batches": job.eval.probe_batches,
        "probe_pixels": probe_crops(job) * job.train.crop**2,
        "probe_images": len(sources),
        "train_pixels": train_pixels(job),
    }


def probe_crops(job: Job) -> int:
    """Crops per probe batch, as :meth:`~qbench.plan.configs.EvalConfig.for_training`
    resolves them (a matrix resolves 0 when it is read; a config built in code may still
    hold it)."""
    return job.eval.for_training(job.train).probe_crops


def train_pixels(job: Job) -> int:
    """Pixels of one training batch: ``[train] batch_size`` crops of ``crop`` x ``crop``."""
    return job.train.batch_size * job.train.crop**2


def schedule_probe(
    job: Job, device: torch.device, datasets: DatasetCache, statistics: list[Metric]
) -> Probe:
    """The probe of a training of ``job`` (for :class:`qbench.run.weights.Context`).

    ``measure(step)`` runs every schedule statistic on the probe set with the
    model as it is at that step, on an isolated RNG stream seeded from the job
    (the same draws at every point, none taken from the training's stream),
    and restores the model's mode: recording statistics changes no weight.
    """

    def start(model: Backbone, steps: int):
        batches = [b.to(device) for b in probe_set(job, datasets)]
        points = schedule.probe_steps(job.eval.schedule, steps)

        def measure(step: int) -> dict[str, Any]:
            progress = points.get(step, step / steps)
            ev = ProbeEval(
                model, batches, job.lmbda, job.seed, progress, job.eval.draws, train_pixels(job)
            )
            estimates = {}
            was_training = model.training
            for metric in statistics:
                with isolated_rng(device):
                    torch.manual_seed(job.seed + 2)
                    estimates.update(metric.per_probe(ev))
                model.train(was_training)
            return schedule.record(progress, step, estimates)

        return sorted(points), measure

    return start


def schedule_columns(
    job: Job,
    model: Backbone,
    outcome: Outcome,
    probe: Probe | None,
    statistics: list[Metric],
    datasets: DatasetCache,
) -> dict[str, Any]:
    """The schedule statistics' row columns (final state, training average) and the probe
    set's shape (:func:`probe_shape`).

    A recipe that does not train (a blend) or a checkpoint whose schedule was
    recorded with other ``[eval]`` settings gets its final state measured now
    and no training average (the weights along the way are gone).
    """
    if not statistics:
        return {}
    names = [c for m in statistics for c in m.columns]
    note = ""
    if outcome.probe_settings != job.eval.probe_settings():
        outcome.schedule = []
        note = "the schedule was recorded with other [eval] settings: re-train to measure it"
    if not any(r["progress"] >= 1.0 for r in outcome.schedule):
        steps = max(outcome.steps, 1)
        _, measure = probe(model, steps)
        outcome.schedule.append(measure(steps))
        note = note or "not trained here: the final state only"
    return {
        **schedule.row_columns(outcome.schedule, names, note),
        **probe_shape(job, datasets),
        "schedule": outcome.schedule,
    }
