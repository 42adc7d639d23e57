"""One worker's loop over a train group: build, produce weights, evaluate, write rows.

A *train group* is the jobs of a matrix that share one trained model (they
differ only in the evaluation dataset or label). :func:`run_group` builds the
model (:mod:`qbench.run.build`), has :func:`qbench.run.weights.load_or_produce`
put the group's weights in it (its checkpoint, or its recipe with the
heartbeat, monitor, snapshots and schedule probe attached), evaluates every
job (:func:`qbench.run.evaluate.evaluate_dataset`) and writes one atomic row
per job. Failures are captured here and nowhere else: an exception inside a
plugin becomes a ``failed`` row with the reason (and a traceback in
``logs/``), a NaN loss a ``diverged`` row, and an exception in a lifecycle
hook is reported with the plugin's name while the job goes on.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from qbench.backbone import Backbone
from qbench.metric import JobEval
from qbench.plan.jobs import Job
from qbench.plugins import PluginSet
from qbench.registry import reason
from qbench.results import RunDir
from qbench.run.build import DatasetCache, build_model
from qbench.run.evaluate import evaluate_dataset
from qbench.run.monitor import Monitor
from qbench.run.probe import probe_set, schedule_columns, schedule_probe
from qbench.run.refine import LatentRefiner
from qbench.run.train import Outcome, seed_everything
from qbench.run.weights import Context, load_or_produce, source_weights
from qbench.snapshots import SnapshotPolicy, Snapshots

#: ``progress(step, stats)``: a training step done, with its loss and bpp.
Progress = Callable[[int, dict[str, float]], None]

__all__ = ["DatasetCache", "build_model", "failure_row", "run_group"]


def failure_row(job: Job, status: str, reason: str, order: int, **extra: Any) -> dict[str, Any]:
    """The row of a job that did not finish ``ok``."""
    return {**job.id_columns(), "order": order, "status": status, "reason": reason, **extra}


def run_group(
    jobs: list[tuple[int, Job]],
    run_dir: RunDir,
    plugins: PluginSet,
    device: torch.device,
    datasets: DatasetCache,
    progress: Progress | None = None,
) -> None:
    """Produce the weights once and evaluate every job of a train group; one row per job.

    ``progress(step, stats)`` is told of every training step (the local executor sends
    it to the qbench process's display; the group itself prints nothing)."""
    _Group(jobs, run_dir, plugins, device, datasets, progress).run()


class _Group:
    """One train group under way: its model, its live view and its rows."""

    def __init__(self, jobs, run_dir, plugins, device, datasets, progress):
        self.jobs, self.first = jobs, jobs[0][1]
        self.run_dir, self.plugins, self.registry = run_dir, plugins, plugins.registry
        self.device, self.datasets = device, datasets
        self.progress = progress
        self.rows: dict[str, dict[str, Any]] = {}
        self.monitor: Monitor | None = None
        self.probe = None

    def run(self) -> None:
        first = self.first
        for _, job in self.jobs:
            self.plugins.call_guarded("qbench_job_started", job=job)
        self.run_dir.mark_running(
            first.train_id, {"step": 0, "steps": first.recipe.steps(first.train)}
        )
        resumed = ""
        try:
            resumed = self.produce_and_evaluate()
        except Exception as exc:
            for order, job in self.jobs:
                if job.job_id not in self.rows:
                    self.rows[job.job_id] = failure_row(job, "failed", reason(exc), order)
                    _log_exception(self.run_dir, job, exc)
        self.write_rows(resumed)

    def produce_and_evaluate(self) -> str:
        first = self.first
        statistics = [
            m
            for m in (self.registry.build("metric", n) for n in first.eval.metrics)
            if m.measures_schedule()
        ]
        if statistics:
            self.probe = schedule_probe(first, self.device, self.datasets, statistics)
        seed_everything(first.seed)  # before the weights are initialised
        model = build_model(first, self.registry)
        outcome, resumed = load_or_produce(first, model, self.run_dir, lambda: self.context(model))
        if outcome.status != "ok":
            for order, job in self.jobs:
                self.rows[job.job_id] = failure_row(
                    job,
                    outcome.status,
                    outcome.reason,
                    order,
                    steps=outcome.steps,
                    train_seconds=outcome.seconds,
                )
            return resumed
        columns = schedule_columns(first, model, outcome, self.probe, statistics, self.datasets)
        self.evaluate(model, outcome, columns)
        return resumed

    def context(self, model: Backbone) -> Context:
        """The production context of the group: heartbeat, monitor, snapshots, probe."""
        first, registry, run_dir = self.first, self.registry, self.run_dir
        steps = first.recipe.steps(first.train)
        heartbeat = _Heartbeat(run_dir, first.train_id, steps, self.progress)
        loggers = [(s.label, registry.build("logger", s.name, **s.params)) for s in first.loggers]
        self.monitor = Monitor(first, self.plugins, loggers, run_dir.root)
        self.monitor.model = model
        policy = SnapshotPolicy(first.train.checkpoint_every, first.train.checkpoint_minutes)
        return Context(
            build_model=lambda: build_model(first, registry),
            source_weights=lambda train_id: source_weights(run_dir, train_id),
            train_images=lambda: self.datasets.uint8_images(first.train_dataset),
            config=first.train,
            lmbda=first.lmbda,
            seed=first.seed,
            device=self.device,
            on_step=heartbeat.update,
            probe=self.probe,
            on_log=self.monitor.log,
            snapshots=Snapshots(run_dir.ckpt_dir, first.train_id, policy),
        )

    def evaluate(self, model: Backbone, outcome: Outcome, columns: dict[str, Any]) -> None:
        """Evaluate the trained ``model`` on each job's dataset; one bad dataset fails one job."""
        model.to(self.device)
        fixed_batch = probe_set(self.first, self.datasets)[0].to(self.device)
        for order, job in self.jobs:
            try:
                metrics = [
                    m
                    for m in (self.registry.build("metric", name) for name in job.eval.metrics)
                    if not m.measures_schedule()
                ]
                refiner = _refiner(job, self.registry)
                averages, per_image, skipped = evaluate_dataset(
                    model,
                    self.datasets.get(job.dataset),
                    job.dataset.label,
                    metrics,
                    JobEval(model, fixed_batch, job.lmbda, job.seed),
                    job.eval,
                    self.device,
                    refiner,
                )
                if refiner is not None:
                    averages |= refiner.columns(job.quantizer.label)
                self.rows[job.job_id] = _ok_row(job, order, model, outcome, columns, averages) | {
                    "skipped": "; ".join(skipped),
                    "per_image": per_image,
                    "history": outcome.history,
                }
            except Exception as exc:
                self.rows[job.job_id] = failure_row(job, "failed", reason(exc), order)
                _log_exception(self.run_dir, job, exc)

    def write_rows(self, resumed: str) -> None:
        for _, job in self.jobs:
            row = self.rows[job.job_id]
            row.setdefault("resumed", resumed)
            self.run_dir.write_row(row)
            self.plugins.call_guarded("qbench_job_finished", job=job, result=row)
        if self.monitor is not None:
            self.monitor.finish(self.rows[self.first.job_id])
        self.run_dir.clear_running(self.first.train_id)


def _ok_row(job, order, model, outcome, columns, averages) -> dict[str, Any]:
    """The row of an evaluated job (its per-image rows and history are added by the caller)."""
    nonfinite = averages["nonfinite"]
    return {
        **job.id_columns(),
        "order": order,
        "status": "nonfinite" if nonfinite else "ok",
        "reason": f"non-finite values: {nonfinite}" if nonfinite else "",
        **averages,
        **columns,
        "skipped": "",
        "steps": outcome.steps,
        "train_seconds": outcome.seconds,
        "trained_parameters": outcome.trained_parameters,
        **job.recipe.columns(),
        **_setting_columns(job, model),
    }


def _refiner(job: Job, registry) -> LatentRefiner | None:
    """The job's encoder refinement (``[eval] refine_latents``), or None."""
    if job.eval.refine_latents is None:
        return None
    return LatentRefiner(job.eval.refine_latents, registry, job.lmbda)


def _setting_columns(job: Job, model: Backbone) -> dict[str, Any]:
    """What the row records of the quantization: the job quantizer's settings, its options
    with nothing to act on here, what it has reduced to at the end of training
    (``Quantizer.reduces_to``), and the backbone's effective settings (the scale bound)."""
    targets = list(model.select_latents(job.quantizer.latents))
    quantizer = model.quantizers[targets[0]]
    idle = model.idle_options(quantizer, targets)
    return {
        "settings": "; ".join(f"{k}={v}" for k, v in quantizer.settings().items()),
        "idle": "; ".join(f"{k} ({why})" for k, why in idle.items()),
        "final_form": quantizer.reduces_to(1.0),
        **model.settings(),
    }


class _Heartbeat:
    """After every step: the progress callback, and the group's ``running/`` record (at the
    first step, so that ``qbench status`` shows a started training at once, then every 30 s)."""

    def __init__(self, run_dir: RunDir, train_id: str, steps: int, progress) -> None:
        self.run_dir, self.train_id, self.steps, self.progress = run_dir, train_id, steps, progress
        self.last: float | None = None

    def update(self, step: int, stats: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress(step, stats)
        if self.last is None or time.monotonic() - self.last >= 30.0:
            self.last = time.monotonic()
            self.run_dir.mark_running(self.train_id, {"step": step, "steps": self.steps})


def _log_exception(run_dir: RunDir, job: Job, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(OSError):
        (run_dir.logs_dir / f"{job.job_id}.log").write_text(text)
