"""One trained job's weights for another tool's model (``qbench export --format FMT``).

qbench's own format is the stored checkpoint (:meth:`qbench.results.RunDir.export_weights`).
Every other format goes through the job's backbone: :func:`export_job` finds the
job's row, rebuilds its backbone and quantizers from the run's manifest (the
matrix as it ran, through the plugin registry), loads the trained weights, calls
``update(force=True)`` (so the file holds the entropy coder's tables, as after
CompressAI's own ``update``) and asks the backbone for the format's state dict
(:meth:`qbench.Backbone.export_state_dict`) and for the name the format's tools
know the architecture by (:meth:`qbench.Backbone.export_architecture`). This
module knows formats, never a backbone: a backbone that cannot write a format
(or whose quantizers would make the file reproduce other numbers) refuses it
with the reason.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qbench.backbone import Backbone
from qbench.plan.jobs import Job
from qbench.plan.matrix import parse_matrix
from qbench.registry import QbenchError, Registry
from qbench.results import HALF_MIN_NUMEL, RunDir, atomic_write_bytes
from qbench.run.build import build_model

#: The formats besides qbench's own, and how their tools load a file (``{arch}``: the
#: backbone's :meth:`~qbench.Backbone.export_architecture`, ``{path}``: the file).
FORMATS = {
    "compressai": (
        "load it with compressai.zoo.image.model_architectures[{arch!r}].from_state_dict("
        "torch.load({path!r})), or evaluate it with: python -m compressai.utils.eval_model "
        "checkpoint IMAGE_FOLDER -a {arch} -p {path}"
    ),
}


@dataclass(frozen=True)
class JobKey:
    """Which job of a run: its quantizer label, lambda, seed and (when the run trained
    several backbones with that quantizer) its backbone label."""

    quantizer: str
    lmbda: float
    seed: int = 0
    backbone: str | None = None

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether results row ``row`` is of this job (any evaluation dataset)."""
        try:
            lmbda, seed = float(row.get("lambda", "nan")), int(row.get("seed", -1))
        except (TypeError, ValueError):
            return False
        return (
            row.get("quantizer") == self.quantizer
            and math.isclose(lmbda, self.lmbda, rel_tol=1e-9)
            and seed == self.seed
            and (self.backbone is None or row.get("backbone") == self.backbone)
        )


@dataclass
class Exported:
    """What :func:`export_job` wrote: the file, the job, the format and the architecture."""

    path: Path
    train_id: str
    job: str
    fmt: str
    architecture: str

    def usage(self) -> str:
        """How the format's tools load the file (one line; ``""`` when unknown)."""
        template = FORMATS.get(self.fmt, "")
        if not template or not self.architecture:
            return ""
        return template.format(arch=self.architecture, path=str(self.path))


def find_row(run_dir: RunDir, key: JobKey) -> dict[str, Any]:
    """The row of the job ``key`` names (one of its datasets' rows: they share the weights).

    Raises a :class:`QbenchError` naming the run's jobs when none matches, and
    asking for ``--backbone`` when several trainings do.
    """
    rows = run_dir.rows()
    matches = [r for r in rows if key.matches(r)]
    if not matches:
        have = sorted(
            {
                f"{r.get('backbone')}/{r.get('quantizer')}@{r.get('lambda')} seed {r.get('seed')}"
                for r in rows
            }
        )
        raise QbenchError(
            f"{run_dir.root}: no job with quantizer {key.quantizer!r}, lambda {key.lmbda:g}, "
            f"seed {key.seed}{f', backbone {key.backbone!r}' if key.backbone else ''} "
            f"(jobs: {', '.join(have) or 'none'})"
        )
    trainings = {r.get("train_id"): r for r in matches}
    if len(trainings) > 1:
        which = ", ".join(
            f"{r.get('backbone')} (train id {t}, configuration {r.get('config_id', '?')})"
            for t, r in trainings.items()
        )
        several = len({r.get("backbone") for r in trainings.values()}) > 1
        fix = (
            "name the backbone with --backbone"
            if several
            else "the run holds several configurations of this label (--append)"
        )
        raise QbenchError(
            f"{run_dir.root}: {len(trainings)} trainings match quantizer {key.quantizer!r}, "
            f"lambda {key.lmbda:g}, seed {key.seed}: {which}; {fix}"
        )
    ok = [r for r in matches if r.get("status") == "ok"]
    return ok[0] if ok else matches[0]


def _manifest(run_dir: RunDir) -> dict[str, Any]:
    path = run_dir.root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QbenchError(
            f"{path}: cannot read the run's manifest ({type(exc).__name__}); the export "
            "rebuilds the job's backbone from the matrix it records"
        ) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("matrix_file"), dict):
        raise QbenchError(f"{path}: records no matrix (a run of an older qbench?)")
    return manifest


def job_of(run_dir: RunDir, registry: Registry, row: dict[str, Any]) -> Job:
    """The :class:`~qbench.plan.jobs.Job` of results row ``row``, from the matrix the run's
    manifest records (its overrides applied), expanded through ``registry``.

    Found by job id, else by its labels, lambda and seed (an edited plugin changes
    the ids of its jobs but not what their backbone is).
    """
    manifest = _manifest(run_dir)
    source = str(manifest.get("matrix", {}).get("source", "matrix"))
    # relative paths of the entries are resolved against the matrix file's folder
    matrix_file = Path(source.partition(" (with --set ")[0])
    base_dir = matrix_file.resolve().parent if matrix_file.is_file() else None
    name = str(manifest.get("matrix", {}).get("name", "matrix"))
    matrix = parse_matrix(manifest["matrix_file"], source, registry, name, base_dir=base_dir)
    for job in matrix.jobs:
        if job.job_id == row.get("job_id"):
            return job
    for job in matrix.jobs:
        if (
            job.backbone.label == row.get("backbone")
            and job.quantizer.label == row.get("quantizer")
            and math.isclose(job.lmbda, float(row.get("lambda", "nan")), rel_tol=1e-9)
            and job.seed == int(row.get("seed", -1))
        ):
            return job
    raise QbenchError(
        f"{run_dir.root}: the matrix its manifest records ({source}) has no job "
        f"{row.get('backbone')} / {row.get('quantizer')} / lambda={row.get('lambda')} / "
        f"seed={row.get('seed')} (a run extended with --append records only its last matrix)"
    )


def trained_model(run_dir: RunDir, registry: Registry, row: dict[str, Any]) -> tuple[Backbone, Job]:
    """``(model, job)``: the job's backbone and quantizers with its trained weights loaded,
    in eval mode, after ``update(force=True)``."""
    cached = run_dir.load_checkpoint(str(row.get("train_id")))
    if cached is None:
        raise QbenchError(
            f"{run_dir.root}: the job {row.get('backbone')} / {row.get('quantizer')} / "
            f"lambda={row.get('lambda')} has no checkpoint (status {row.get('status')!r})"
        )
    job = job_of(run_dir, registry, row)
    try:
        model = build_model(job, registry)
    except QbenchError:
        raise
    except Exception as exc:  # a plugin's factory: a missing file, weights not cached
        raise QbenchError(
            f"{job.describe()}: cannot build the job's backbone as the run did "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    try:
        model.load_state_dict(cached[0])
    except RuntimeError as exc:
        raise QbenchError(
            f"{job.describe()}: the stored weights do not fit the backbone the manifest "
            f"describes ({str(exc).splitlines()[0]})"
        ) from exc
    model.eval()
    with torch.no_grad():
        model.update(force=True)
    return model, job


def export_job(
    run_dir: str | Path,
    registry: Registry,
    key: JobKey,
    fmt: str,
    out: str | Path,
    half: bool = False,
) -> Exported:
    """Write the weights of the job ``key`` names in format ``fmt`` to ``out``.

    ``half``: floating tensors of at least :data:`~qbench.results.HALF_MIN_NUMEL`
    elements as float16 (as ``qbench export --half``; the tool then computes with
    rounded weights, so its numbers move). Raises a :class:`QbenchError` when the
    job is not found, has no weights, or its backbone refuses the format.
    """
    if fmt not in FORMATS:
        raise QbenchError(f"unknown export format {fmt!r} (known: qbench, {', '.join(FORMATS)})")
    rd = RunDir(run_dir)
    row = find_row(rd, key)
    model, job = trained_model(rd, registry, row)
    try:
        state = model.export_state_dict(fmt)
    except QbenchError as exc:
        raise QbenchError(f"{job.describe()}: {exc}") from exc
    if half:
        state = {
            k: v.half() if v.is_floating_point() and v.numel() >= HALF_MIN_NUMEL else v
            for k, v in state.items()
        }
    out = Path(out)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out, buf.getvalue())
    train_id = str(row.get("train_id"))
    return Exported(out, train_id, job.describe(), fmt, model.export_architecture(fmt))
