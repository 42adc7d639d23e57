"""One worker's loop over a train group: build, produce weights, evaluate, write rows.

A *train group* is the jobs of a matrix that share one trained model (they
differ only in the evaluation dataset or label). :func:`run_group` builds the
model, has the group's recipe produce its weights (or loads the group's
checkpoint when a killed run already produced them), evaluates every job and
writes one atomic row per job. Failures are captured here and nowhere else:
an exception inside a plugin becomes a ``failed`` row with the reason (and a
traceback in ``logs/``), a NaN loss a ``diverged`` row, and an exception in a
lifecycle hook is reported with the plugin's name while the job goes on.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import asdict
from typing import Any

import torch

from qbench import schedule
from qbench.analysis import isolated_rng
from qbench.backbone import Backbone
from qbench.metric import JobEval, Metric, ProbeEval
from qbench.plan.jobs import Job, Spec
from qbench.plugins import PluginSet
from qbench.registry import QbenchError, Registry, reason
from qbench.results import RunDir
from qbench.run.evaluate import evaluate
from qbench.run.monitor import Monitor
from qbench.run.train import CropSampler, Outcome, seed_everything
from qbench.run.weights import Context
from qbench.snapshots import SnapshotPolicy, Snapshots


def build_model(job: Job, registry: Registry) -> Backbone:
    """The job's backbone with one fresh quantizer per quantized latent.

    The job's quantizer goes on the latents its entry lists (all by default);
    every other latent gets the matrix's ``unlisted_latents`` quantizer.
    """
    model = registry.build("backbone", job.backbone.name, **job.backbone.params)
    targets = job.quantizer.latents or model.latents
    unknown = set(targets) - set(model.latents)
    if unknown:
        raise QbenchError(
            f"quantizer {job.quantizer.label!r}: latents {sorted(unknown)} are not latents of "
            f"backbone {job.backbone.label!r} ({list(model.latents)})"
        )
    quantizers = {}
    for latent in model.latents:
        spec = job.quantizer if latent in targets else job.unlisted
        quantizers[latent] = registry.build("quantizer", spec.name, **spec.params)
    model.set_quantizers(quantizers)
    return model


class DatasetCache:
    """Datasets built once per process, keyed by name and parameters."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.cache: dict[str, Any] = {}

    def get(self, spec: Spec) -> Any:
        key = repr((spec.name, sorted(spec.params.items())))
        if key not in self.cache:
            self.cache[key] = self.registry.build("dataset", spec.name, **spec.params)
        return self.cache[key]

    def uint8_images(self, spec: Spec) -> list:
        """Every image of the dataset as uint8 (the form training crops are cut from)."""
        ds = self.get(spec)
        return [ds.uint8(i) for i in range(len(ds))]


def failure_row(job: Job, status: str, reason: str, order: int, **extra: Any) -> dict[str, Any]:
    """The row of a job that did not finish ``ok``."""
    return {**job.id_columns(), "order": order, "status": status, "reason": reason, **extra}


def run_group(
    jobs: list[tuple[int, Job]],
    run_dir: RunDir,
    plugins: PluginSet,
    device: torch.device,
    datasets: DatasetCache,
    position: int = 0,
    show_progress: bool = True,
) -> None:
    """Produce the weights once and evaluate every job of a train group; one row per job."""
    first = jobs[0][1]
    registry = plugins.registry
    for _, job in jobs:
        plugins.call_guarded("qbench_job_started", job=job)
    rows: dict[str, dict[str, Any]] = {}
    monitor, resumed = None, ""
    run_dir.mark_running(first.train_id, {"step": 0, "steps": first.recipe.steps(first.train)})
    try:
        statistics = [
            m
            for m in (registry.build("metric", n) for n in first.eval.metrics)
            if m.measures_schedule()
        ]
        probe = _schedule_probe(first, device, datasets, statistics) if statistics else None
        seed_everything(first.seed)  # before the weights are initialised
        model = build_model(first, registry)
        cached, unreadable = _cached_weights(run_dir, first.train_id)
        if cached is not None:
            state, meta = cached
            model.load_state_dict(state)
            resumed = meta.pop("resumed", "")
            outcome = Outcome(**meta)
        else:
            steps = first.recipe.steps(first.train)
            bar = _progress(first, steps, position, show_progress)
            heartbeat = _Heartbeat(run_dir, first.train_id, steps, bar)
            monitor = Monitor(
                first,
                plugins,
                [(s.label, registry.build("logger", s.name, **s.params)) for s in first.loggers],
                run_dir.root,
            )
            monitor.model = model
            snapshots = Snapshots(
                run_dir.ckpt_dir,
                first.train_id,
                SnapshotPolicy(first.train.checkpoint_every, first.train.checkpoint_minutes),
            )
            ctx = Context(
                build_model=lambda: build_model(first, registry),
                source_weights=lambda train_id: _source_weights(run_dir, train_id),
                train_images=lambda: datasets.uint8_images(first.train_dataset),
                config=first.train,
                lmbda=first.lmbda,
                seed=first.seed,
                device=device,
                on_step=heartbeat.update,
                probe=probe,
                on_log=monitor.log,
                snapshots=snapshots,
            )
            outcome = first.recipe.produce(model, ctx)
            outcome.probe_settings = first.eval.probe_settings()
            resumed = "; ".join(x for x in (unreadable, snapshots.resumed) if x)
            if bar:
                bar.close()
            if outcome.status == "ok":
                meta = {**asdict(outcome), "resumed": resumed}
                run_dir.save_checkpoint(first.train_id, model.state_dict(), meta)
                snapshots.clear()
        if outcome.status != "ok":
            for order, job in jobs:
                rows[job.job_id] = failure_row(
                    job,
                    outcome.status,
                    outcome.reason,
                    order,
                    steps=outcome.steps,
                    train_seconds=outcome.seconds,
                )
        else:
            columns = _schedule_columns(first, model, outcome, probe, statistics)
            _evaluate_group(
                jobs, model, outcome, columns, run_dir, registry, device, datasets, rows
            )
    except Exception as exc:
        for order, job in jobs:
            if job.job_id not in rows:
                rows[job.job_id] = failure_row(job, "failed", reason(exc), order)
                _log_exception(run_dir, job, exc)
    for _, job in jobs:
        row = rows[job.job_id]
        row.setdefault("resumed", resumed)
        run_dir.write_row(row)
        plugins.call_guarded("qbench_job_finished", job=job, result=row)
    if monitor is not None:
        monitor.finish(rows[first.job_id])
    run_dir.clear_running(first.train_id)


def _schedule_columns(
    job: Job, model: Backbone, outcome: Outcome, probe, statistics: list[Metric]
) -> dict[str, Any]:
    """The schedule statistics' row columns (final state, training average).

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
    return {**schedule.row_columns(outcome.schedule, names, note), "schedule": outcome.schedule}


def _evaluate_group(
    jobs, model, outcome: Outcome, columns, run_dir, registry, device, datasets, rows
):
    """Evaluate the trained ``model`` on each job's dataset; one bad dataset fails one job."""
    first = jobs[0][1]
    model.to(device)
    fixed_batch = _probe_set(first, datasets)[0].to(device)
    for order, job in jobs:
        try:
            ds = datasets.get(job.dataset)
            n = job.eval.max_images or len(ds)
            skipped = [reason for _, reason in getattr(ds, "skipped", [])]
            idx = []
            for i in range(min(n, len(ds))):
                h, w = ds.uint8(i).shape[-2:]
                if h * w > job.eval.max_pixels:
                    skipped.append(
                        f"{ds.names[i]}: {w}x{h} is {h * w / 1e6:.1f} MP, more than [eval] "
                        f"max_pixels = {job.eval.max_pixels} ({job.eval.max_pixels / 1e6:.1f} MP)"
                    )
                else:
                    idx.append(i)
            if not idx:
                raise QbenchError(f"no image of {job.dataset.label!r} to evaluate: {skipped}")
            metrics = [
                m
                for m in (registry.build("metric", name) for name in job.eval.metrics)
                if not m.measures_schedule()
            ]
            with isolated_rng(device):  # a dataset's rows do not depend on the ones before
                averages, per_image = evaluate(
                    model,
                    [ds[i] for i in idx],
                    [ds.names[i] for i in idx],
                    metrics,
                    job_eval=JobEval(model, fixed_batch, job.lmbda, job.seed),
                )
            nonfinite = averages["nonfinite"]
            rows[job.job_id] = {
                **job.id_columns(),
                "order": order,
                "status": "nonfinite" if nonfinite else "ok",
                "reason": f"non-finite values: {nonfinite}" if nonfinite else "",
                **averages,
                **columns,
                "skipped": "; ".join(skipped),
                "steps": outcome.steps,
                "train_seconds": outcome.seconds,
                "trained_parameters": outcome.trained_parameters,
                **job.recipe.columns(),
                **_setting_columns(job, model),
                "per_image": per_image,
                "history": outcome.history,
            }
        except Exception as exc:
            rows[job.job_id] = failure_row(job, "failed", reason(exc), order)
            _log_exception(run_dir, job, exc)


def _setting_columns(job: Job, model: Backbone) -> dict[str, Any]:
    """What the row records of the quantization: the job quantizer's settings, its options
    with nothing to act on here, and the backbone's effective settings (the scale bound)."""
    targets = list(job.quantizer.latents or model.latents)
    quantizer = model.quantizers[targets[0]]
    idle = model.idle_options(quantizer, targets)
    return {
        "settings": "; ".join(f"{k}={v}" for k, v in quantizer.settings().items()),
        "idle": "; ".join(f"{k} ({why})" for k, why in idle.items()),
        **model.settings(),
    }


def _cached_weights(run_dir: RunDir, train_id: str) -> tuple[Any, str]:
    """``(the group's finished checkpoint or None, why it was not used)``.

    A checkpoint that does not load (a disk that failed under it) is never
    used: the group is produced again (from its snapshot, if any), and the
    row says so.
    """
    try:
        return run_dir.load_checkpoint(train_id), ""
    except Exception as exc:
        return None, f"the trained checkpoint was unreadable ({reason(exc)[:160]}): produced again"


def _source_weights(run_dir: RunDir, train_id: str) -> dict[str, Any]:
    cached = run_dir.load_checkpoint(train_id)
    if cached is None:
        raise QbenchError(
            f"this job starts from the model of train group {train_id}, which did not finish "
            "(see its row)"
        )
    return cached[0]


def _probe_set(job: Job, datasets: DatasetCache) -> list[torch.Tensor]:
    """The job's fixed probe set: ``[eval] probe_batches`` batches of ``probe_crops`` training
    crops from their own generator (``seed + 1``), never the training sampler's."""
    sampler = CropSampler(datasets.uint8_images(job.train_dataset), job.train.crop, job.seed + 1)
    return [sampler.batch(job.eval.probe_crops) for _ in range(job.eval.probe_batches)]


def _schedule_probe(job: Job, device: torch.device, datasets: DatasetCache, statistics):
    """``(model, steps) -> (probe_steps, measure)`` for :class:`qbench.run.weights.Context`.

    ``measure(step)`` runs every schedule statistic on the probe set with the
    model as it is at that step, on an isolated RNG stream seeded from the job
    (the same draws at every point, none taken from the training's stream),
    and restores the model's mode: recording statistics changes no weight.
    """

    def start(model: Backbone, steps: int):
        batches = [b.to(device) for b in _probe_set(job, datasets)]
        points = schedule.probe_steps(job.eval.schedule, steps)

        def measure(step: int) -> dict[str, Any]:
            progress = points.get(step, step / steps)
            ev = ProbeEval(model, batches, job.lmbda, job.seed, progress, job.eval.draws)
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


class _Heartbeat:
    """After every step: the progress bar, and (every 30 s) the group's ``running/`` record."""

    def __init__(self, run_dir: RunDir, train_id: str, steps: int, bar) -> None:
        self.run_dir, self.train_id, self.steps, self.bar = run_dir, train_id, steps, bar
        self.last = time.monotonic()

    def update(self, step: int, stats: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step, stats)
        if time.monotonic() - self.last >= 30.0:
            self.last = time.monotonic()
            self.run_dir.mark_running(self.train_id, {"step": step, "steps": self.steps})


def _log_exception(run_dir: RunDir, job: Job, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(OSError):
        (run_dir.logs_dir / f"{job.job_id}.log").write_text(text)


def _progress(job: Job, steps: int, position: int, show: bool):
    if not show or steps <= 0:
        return None
    from tqdm import tqdm

    bar = tqdm(
        total=steps,
        desc=f"{job.quantizer.label} l={job.lmbda:g} s={job.seed}",
        position=position,
        leave=False,
        mininterval=0.5,
        dynamic_ncols=True,
        disable=None,
    )

    class _Bar:
        def update(self, step: int, stats: dict[str, float]) -> None:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", bpp=f"{stats['bpp']:.3f}", refresh=False)
            bar.update(1)

        def close(self) -> None:
            bar.close()

    return _Bar()
