"""The typed sections of a matrix: ``[train]``, ``[eval]``, ``[executor]``.

Each config is built from its section's table (defaults filled in, types
checked against them) by its own :meth:`from_table`, which checks every value
and reports a bad one through ``fail(key, message)``; the matrix reader only
dispatches sections to them. A config is carried whole to the code that uses
it (``train(model, sampler, config, hooks)``, ``evaluate``, the executors),
never unpacked into keywords on the way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

#: ``fail(key, message)``: report a bad value of the section (raises)
Fail = Callable[[str, str], None]

#: ``[train] amp`` values ("": float32); the training loop maps each to its dtype
AMP_MODES = ("", "bf16", "fp16")

#: where jobs can run (``[executor] kind``)
EXECUTOR_KINDS = ("local", "submitit-local", "slurm")


def _finite_positive(fail: Fail, key: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        fail(key, f"must be a finite number > 0, got {value}")


def _finite_nonnegative(fail: Fail, key: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        fail(key, f"must be finite and >= 0 (0 disables), got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` section of a matrix, less its dataset.

    ``log_every`` sets how often the training statistics are recorded, and
    ``checkpoint_every`` (steps) and ``checkpoint_minutes`` how often a
    resumable snapshot is written (:mod:`qbench.snapshots`); none of them
    changes the trained weights, so none is part of a job's identity. ``amp``
    is the mixed precision of the transforms in training (``""``: float32,
    ``"bf16"``, ``"fp16"``); it changes the weights and is part of the
    identity when set.
    """

    steps: int
    batch_size: int
    crop: int
    lr: float
    aux_lr: float
    clip_max_norm: float
    log_every: int
    checkpoint_every: int = 0
    checkpoint_minutes: float = 0.0
    amp: str = ""

    #: settings that do not change the trained weights
    PROBES = ("log_every", "checkpoint_every", "checkpoint_minutes")

    @classmethod
    def from_table(cls, table: dict[str, Any], defaults: dict[str, Any], fail: Fail) -> TrainConfig:
        """The config of a type-checked ``[train]`` table (without ``dataset``), checked."""
        for key in ("steps", "batch_size", "crop"):
            if table[key] < 1:
                fail(key, f"must be >= 1, got {table[key]}")
        for key in ("lr", "aux_lr"):
            _finite_positive(fail, key, table[key])
        _finite_nonnegative(fail, "clip_max_norm", table["clip_max_norm"])
        for key in ("log_every", "checkpoint_every"):
            if table[key] < 0:
                fail(key, f"must be >= 0 (0 disables), got {table[key]}")
        _finite_nonnegative(fail, "checkpoint_minutes", table["checkpoint_minutes"])
        if table["amp"] not in AMP_MODES:
            fail(
                "amp",
                f'expected one of {", ".join(repr(k) for k in AMP_MODES)} ("": float32), '
                f"got {table['amp']!r}",
            )
        # one spelling per value (1 and 1.0 are one configuration, one job id)
        names = {f.name for f in fields(cls)}
        return cls(
            **{
                k: float(v) if isinstance(defaults[k], float) else v
                for k, v in table.items()
                if k in names
            }
        )

    def identity(self) -> dict[str, Any]:
        """What determines the trained weights (``amp`` only when set: old ids stay)."""
        out = {k: v for k, v in asdict(self).items() if k not in self.PROBES}
        if not self.amp:
            out.pop("amp")
        return out


@dataclass(frozen=True)
class Refinement:
    """``[eval] refine_latents``: an encoder that refines each image's latents before
    coding them (Yang, Bamler & Mandt 2020 with ``sga``; any training surrogate).

    For every image, the trained model's unquantized latents (``Backbone.encode``) are
    optimised with Adam (``lr``) for ``steps`` steps against the job's rate-distortion
    loss, the model's quantizers replaced by ``quantizer`` in training mode, annealed
    over the steps; then the refined latents are coded for real. ``labels``: the
    quantizer entries whose models are refined (empty: every one). Each refined model is
    evaluated as a second arm, labelled ``<label>+refine-<quantizer label>``.
    """

    quantizer: Any  # a qbench.plan.jobs.Spec
    steps: int
    lr: float
    labels: tuple[str, ...] = ()

    def label_of(self, label: str) -> str:
        """The label of ``label``'s models with refined latents."""
        return f"{label}+refine-{self.quantizer.label}"

    def identity(self) -> dict[str, Any]:
        """What changes a refined evaluation's numbers (part of the job id)."""
        return {"quantizer": self.quantizer.identity(), "steps": self.steps, "lr": self.lr}


@dataclass(frozen=True)
class EvalConfig:
    """The ``[eval]`` section of a matrix.

    Attributes:
        metrics: registered metric names, in column order.
        max_images: evaluate the first ``max_images`` images (0: all).
        max_pixels: images with more pixels are not evaluated (skipped and
            named in the row): the memory an evaluation takes grows with the
            image (a 5000x4000 image took 7.1 GB with N = 16 channels).
        schedule: the training-progress points at which the schedule
            statistics (metrics with ``per_probe``) are measured; always ends at 1.0.
        probe_batches: batches in the fixed probe set (the unit of the intervals).
        probe_crops: training crops per probe batch (of the training crop size);
            ``0`` in a matrix means ``[train] batch_size``, so that by default a
            probe batch is a training batch (:meth:`for_training` resolves it).
        draws: surrogate draws ``K`` of every schedule statistic.
        metric_code: ``"distribution version code-digest"`` of each metric's
            plugin, in the order of ``metrics``: an edited metric re-measures
            the rows (the job id holds it) and the schedule statistics.
    """

    metrics: tuple[str, ...]
    max_images: int
    max_pixels: int = 8_388_608
    schedule: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)
    probe_batches: int = 8
    probe_crops: int = 0
    draws: int = 16
    metric_code: tuple[str, ...] = ()
    refine_latents: Refinement | None = None

    def identity(self) -> dict[str, Any]:
        """These settings as plain data (for job ids and the manifest); the refinement
        only where there is one, so that a plain evaluation's id is as it always was."""
        out = {k: v for k, v in asdict(self).items() if k != "refine_latents"}
        if self.refine_latents is not None:
            out["refine_latents"] = self.refine_latents.identity()
        return out

    @classmethod
    def from_table(
        cls,
        table: dict[str, Any],
        is_metric: Callable[[str], str],
        fail: Fail,
        provenance: Callable[[str], str] = lambda name: "",
    ):
        """The config of a type-checked ``[eval]`` table, checked.

        ``is_metric(name)`` returns ``""`` for a registered metric, else the
        message that says so (with its "did you mean"); ``provenance(name)``
        the metric's provider and code digest.
        """
        metrics = table["metrics"]
        for i, metric in enumerate(metrics):
            if not isinstance(metric, str):
                fail(f"metrics[{i}]", f"expected a metric name, got {metric!r}")
            problem = is_metric(metric)
            if problem:
                fail(f"metrics[{i}]", problem)
        if not metrics:
            fail("metrics", "the list of metrics is empty; name at least one metric")
        if table["max_images"] < 0:
            fail("max_images", f"must be >= 0 (0: every image), got {table['max_images']}")
        if table["max_pixels"] < 1:
            fail("max_pixels", f"must be >= 1, got {table['max_pixels']}")
        schedule = table["schedule"]
        if not isinstance(schedule, list) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1 for t in schedule
        ):
            fail(
                "schedule",
                f"expected a list of training-progress points in (0, 1], got {schedule!r}",
            )
        if table["probe_batches"] < 2:
            fail(
                "probe_batches",
                f"must be >= 2 (the intervals are over the probe batches), got "
                f"{table['probe_batches']}",
            )
        if table["probe_crops"] < 0:
            fail(
                "probe_crops",
                f"must be >= 1, or 0 for [train] batch_size, got {table['probe_crops']}",
            )
        if table["draws"] < 2 or table["draws"] % 2:
            fail(
                "draws",
                f"must be an even number >= 2 (the gradient statistics split the draws in two "
                f"halves), got {table['draws']}",
            )
        return cls(
            tuple(metrics),
            table["max_images"],
            table["max_pixels"],
            tuple(sorted({float(t) for t in schedule} | {1.0})),
            table["probe_batches"],
            table["probe_crops"],
            table["draws"],
            tuple(provenance(m) for m in metrics),
        )

    def for_training(self, train: TrainConfig) -> EvalConfig:
        """This config with ``probe_crops = 0`` resolved to ``train.batch_size`` (a probe
        batch is then a training batch; the job ids hold the resolved number)."""
        if self.probe_crops:
            return self
        return replace(self, probe_crops=train.batch_size)

    def probe_settings(self) -> dict[str, Any]:
        """What the schedule statistics recorded during training depend on."""
        return {
            "schedule": list(self.schedule),
            "probe_batches": self.probe_batches,
            "probe_crops": self.probe_crops,
            "draws": self.draws,
            "metric_code": list(self.metric_code),
        }


@dataclass(frozen=True)
class ExecutorConfig:
    """The ``[executor]`` section: where the jobs run and, on a cluster, with what.

    Not part of any job id. ``kind`` is ``local`` (worker processes on this
    machine), ``submitit-local`` (submitit's LocalExecutor) or ``slurm`` (a
    Slurm job array through submitit); the other keys are the cluster's
    resources per job, ``additional`` extra sbatch options.
    """

    kind: str = "local"
    partition: str = ""
    gpus_per_job: int = 0
    cpus_per_job: int = 2
    mem_gb: float = 16.0
    time_min: int = 720
    array_parallelism: int = 32
    additional: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: dict[str, Any], fail: Fail) -> ExecutorConfig:
        """The config of a type-checked ``[executor]`` table, checked."""
        if table["kind"] not in EXECUTOR_KINDS:
            fail("kind", f"expected one of {', '.join(EXECUTOR_KINDS)}, got {table['kind']!r}")
        if table["gpus_per_job"] < 0:
            fail("gpus_per_job", f"must be >= 0, got {table['gpus_per_job']}")
        for key in ("cpus_per_job", "time_min", "array_parallelism"):
            if table[key] < 1:
                fail(key, f"must be >= 1, got {table[key]}")
        if not table["mem_gb"] > 0:
            fail("mem_gb", f"must be > 0, got {table['mem_gb']}")
        if not isinstance(table["additional"], dict):
            fail("additional", 'expected a table of extra sbatch options, e.g. { account = "abc" }')
        return cls(**{k: table[k] for k in (f.name for f in fields(cls))})

    def overridden(self, overrides: dict[str, Any], fail: Fail) -> ExecutorConfig:
        """This config with ``overrides`` (the command line's ``--executor``, ``--slurm-*``)."""
        return ExecutorConfig.from_table({**asdict(self), **overrides}, fail)

    def as_table(self) -> dict[str, Any]:
        """The section as a table (for the manifest)."""
        return asdict(self)
