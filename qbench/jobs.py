"""Run one train group in a worker: build, train (or refine, or blend), evaluate, write rows.

A *train group* is the jobs of a matrix that share one trained model (they
differ only in the evaluation dataset). :func:`run_group` trains once, or
loads the group's checkpoint when a killed run already finished training it,
then evaluates every job and writes one atomic row per job; any exception
inside a plugin becomes a ``failed`` row with the reason (and a traceback in
``logs/``), a NaN loss a ``diverged`` row.
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Any

import torch

from qbench.matrix import Job
from qbench.plugins import PluginSet
from qbench.registry import QbenchError
from qbench.results import RunDir


def build_model(job: Job, plugins: PluginSet):
    """The job's backbone with one fresh quantizer per quantized latent."""
    reg = plugins.registry
    model = reg.build("backbone", job.backbone.name, **job.backbone.params)
    targets = job.quantizer.latents or model.latents
    unknown = set(targets) - set(model.latents)
    if unknown:
        raise QbenchError(
            f"quantizer {job.quantizer.label!r}: latents {sorted(unknown)} are not latents of "
            f"backbone {job.backbone.label!r} ({list(model.latents)})"
        )
    quantizers = {}
    for latent in model.latents:
        if latent in targets:
            quantizers[latent] = reg.build("quantizer", job.quantizer.name, **job.quantizer.params)
        else:  # latents the matrix leaves out keep the standard noise surrogate
            quantizers[latent] = reg.build("quantizer", "noise")
    model.set_quantizers(quantizers)
    return model


def build_metrics(job: Job, plugins: PluginSet) -> list:
    return [plugins.registry.build("metric", name) for name in job.eval["metrics"]]


class DatasetCache:
    """Datasets built once per process, keyed by name and parameters."""

    def __init__(self, plugins: PluginSet) -> None:
        self.plugins = plugins
        self.cache: dict[str, Any] = {}

    def get(self, spec) -> Any:
        key = repr((spec.name, sorted(spec.params.items())))
        if key not in self.cache:
            self.cache[key] = self.plugins.registry.build("dataset", spec.name, **spec.params)
        return self.cache[key]

    def uint8_images(self, spec) -> list:
        """Every image of the dataset as uint8 (the form training crops are cut from)."""
        ds = self.get(spec)
        return [ds.uint8(i) for i in range(len(ds))]


def failure_row(job: Job, status: str, reason: str, order: int, **extra: Any) -> dict[str, Any]:
    return {**_id_columns(job, order), "status": status, "reason": reason, **extra}


def _id_columns(job: Job, order: int) -> dict[str, Any]:
    return {
        "backbone": job.backbone.label,
        "quantizer": job.quantizer.label,
        "lambda": job.lmbda,
        "dataset": job.dataset.label,
        "seed": job.seed,
        "job_id": job.job_id,
        "train_id": job.train_id,
        "order": order,
    }


def run_group(
    jobs: list[tuple[int, Job]],
    run_dir: RunDir,
    plugins: PluginSet,
    device: torch.device,
    datasets: DatasetCache,
    position: int = 0,
    show_progress: bool = True,
) -> None:
    """Train once and evaluate every job of a train group; write one row per job."""
    from qbench import train as training
    from qbench.evaluate import evaluate
    from qbench.metric import JobEval

    first = jobs[0][1]
    for _, job in jobs:
        plugins.hook.qbench_job_started(job=job)
    rows: dict[str, dict[str, Any]] = {}
    try:
        training.seed_everything(first.seed)  # before the weights are initialised
        model = build_model(first, plugins)
        cached = run_dir.load_checkpoint(first.train_id)
        history: list[dict[str, Any]] = []
        if cached is not None:
            state, meta = cached
            model.load_state_dict(state)
        elif first.mode == "interpolate":
            meta = _interpolate(model, first, plugins, run_dir)
            run_dir.save_checkpoint(first.train_id, model.state_dict(), meta)
        else:
            params, steps = None, first.train["steps"]
            if first.mode == "refine":
                model.load_state_dict(_source_state(run_dir, first, 0))
                params = list(model.quantizer_parameters())
                if not params:
                    raise QbenchError(
                        f"quantizer {first.quantizer.label!r} has no trainable parameters to "
                        "refine from an anchor"
                    )
                steps = first.refine_steps
            images = datasets.uint8_images(first.train_dataset)
            sampler = training.CropSampler(images, first.train["crop"], first.seed)
            bar = _progress(first, steps, position, show_progress)
            history_fn = _history_logger(model, sampler, first, steps, device, history)
            result = training.train(
                model,
                sampler,
                lmbda=first.lmbda,
                steps=steps,
                batch_size=first.train["batch_size"],
                lr=first.train["lr"],
                aux_lr=first.train["aux_lr"],
                clip_max_norm=first.train["clip_max_norm"],
                device=device,
                parameters=params,
                train_aux=params is None,
                on_step=bar.update if bar else None,
                on_log=history_fn,
                log_every=first.train["log_every"],
            )
            if bar:
                bar.close()
            trained = params if params is not None else list(model.main_parameters())
            meta = {
                "status": result.status,
                "reason": result.reason,
                "steps": result.steps,
                "train_seconds": result.seconds,
                "history": history,
                "trained_parameters": sum(p.numel() for p in trained),
            }
            if result.status == "ok":
                run_dir.save_checkpoint(first.train_id, model.state_dict(), meta)
        if meta["status"] != "ok":
            for order, job in jobs:
                rows[job.job_id] = failure_row(
                    job,
                    meta["status"],
                    meta["reason"],
                    order,
                    steps=meta["steps"],
                    train_seconds=meta["train_seconds"],
                )
        else:
            model.to(device)
            batch_gen = training.CropSampler(
                datasets.uint8_images(first.train_dataset), first.train["crop"], first.seed + 1
            )
            fixed_batch = batch_gen.batch(min(4, first.train["batch_size"])).to(device)
            for order, job in jobs:
                try:
                    ds = datasets.get(job.dataset)
                    n = job.eval["max_images"] or len(ds)
                    idx = range(min(n, len(ds)))
                    metrics = build_metrics(job, plugins)
                    averages, per_image = evaluate(
                        model,
                        [ds[i] for i in idx],
                        [ds.names[i] for i in idx],
                        metrics,
                        lmbda=job.lmbda,
                        job_eval=JobEval(model, fixed_batch, job.lmbda, job.seed),
                    )
                    rows[job.job_id] = {
                        **_id_columns(job, order),
                        "status": "ok",
                        "reason": "",
                        **averages,
                        "steps": meta["steps"],
                        "train_seconds": meta["train_seconds"],
                        "trained_parameters": meta.get("trained_parameters"),
                        "mode": job.mode,
                        "interp_weight": job.interp_weight,
                        "origin": job.origin,
                        "per_image": per_image,
                        "history": meta.get("history", []),
                    }
                except Exception as exc:  # one bad dataset or metric fails one job
                    rows[job.job_id] = failure_row(job, "failed", _reason(exc), order)
                    _log_exception(run_dir, job, exc)
    except Exception as exc:
        for order, job in jobs:
            if job.job_id not in rows:
                rows[job.job_id] = failure_row(job, "failed", _reason(exc), order)
                _log_exception(run_dir, job, exc)
    for _, job in jobs:
        row = rows[job.job_id]
        run_dir.write_row(row)
        plugins.hook.qbench_job_finished(job=job, result=row)


def _source_state(run_dir: RunDir, job: Job, i: int) -> dict[str, Any]:
    cached = run_dir.load_checkpoint(job.sources[i])
    if cached is None:
        raise QbenchError(
            f"{job.mode} job needs the checkpoint of train group {job.sources[i]}, which did "
            "not finish (see its row)"
        )
    return cached[0]


def _interpolate(model, job: Job, plugins: PluginSet, run_dir: RunDir) -> dict[str, Any]:
    """Blend the quantizers of two refined models: ``(1 - a) * q1 + a * q2``.

    The backbone weights are the first source's (both derive from one anchor).
    A quantizer may define ``interpolate(other, a)``; otherwise its floating
    state is interpolated linearly.
    """
    a = float(job.interp_weight)
    model.load_state_dict(_source_state(run_dir, job, 0))
    other = build_model(job, plugins)
    other.load_state_dict(_source_state(run_dir, job, 1))
    for name, q in model.quantizers.items():
        q2 = other.quantizers[name]
        if hasattr(q, "interpolate"):
            q.interpolate(q2, a)
            continue
        state, state2 = q.state_dict(), q2.state_dict()
        q.load_state_dict(
            {
                k: (1 - a) * v + a * state2[k] if v.is_floating_point() else v
                for k, v in state.items()
            }
        )
    return {
        "status": "ok",
        "reason": "",
        "steps": 0,
        "train_seconds": 0.0,
        "history": [],
        "trained_parameters": 0,
    }


def _history_logger(model, sampler, job: Job, steps: int, device, history: list):
    """Every ``log_every`` steps: mismatch and gradient variance on a fixed batch."""
    from qbench.analysis import training_statistics

    probe = sampler.batch(min(4, job.train["batch_size"]))

    def log(step: int) -> None:
        stats = training_statistics(model, probe.to(device), job.lmbda)
        history.append({"step": step, "progress": step / steps, **stats})

    return log


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]


def _log_exception(run_dir: RunDir, job: Job, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(OSError):
        (run_dir.logs_dir / f"{job.job_id}.log").write_text(text)


def _progress(job: Job, steps: int, position: int, show: bool):
    if not show:
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
