"""Run a matrix: check everything, claim the run directory, hand the groups to an executor.

Jobs that differ only in the evaluation dataset share one trained model
(a *train group*); a group is the unit an executor runs
(:mod:`qbench.run.executors`: this machine's worker pool, submitit's local
executor or a Slurm job array). The runner does not know where a group runs:
every group writes its own rows into the run directory, and the runner merges
them into ``results.csv`` after each (idempotent: a merge reads every row).
A resumed run skips the jobs with a row, and a training that was cut
continues from its last snapshot (:mod:`qbench.snapshots`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qbench.plan.configs import ExecutorConfig
from qbench.plan.jobs import Job
from qbench.plan.matrix import Matrix
from qbench.plan.preflight import preflight
from qbench.plugins import PluginSet, get_plugins
from qbench.rd import LOSS
from qbench.registry import QbenchError, Registry
from qbench.results import RunDir, code_changes, read_run_record
from qbench.run.console import console_for
from qbench.run.executors import (
    Dispatch,
    Executor,
    ExecutorError,
    build_executor,
    plan_devices,
)
from qbench.schedule import AVERAGE_SUFFIXES, FINAL_SUFFIXES
from qbench.snapshots import Snapshots
from qbench.version import __version__


class RunError(QbenchError):
    """A run that cannot start (bad dataset, bad device, bad executor)."""


__all__ = ["ExecutorError", "RunError", "RunOptions", "RunSummary", "plan_devices", "run_matrix"]


@dataclass
class RunSummary:
    out: Path
    total: int
    skipped: int
    ran: int
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOptions:
    """How to run a matrix (the command line's options of ``qbench run``).

    Attributes:
        workers: local worker processes (None: the executor's plan).
        device: ``auto``, ``cpu`` or ``cuda``.
        force: re-run finished jobs too (another matrix's run is set aside).
        append: add this matrix's jobs to a directory holding another matrix.
        rerun_failed: re-run failed and diverged jobs.
        disable: plugins (entry-point names) to leave out.
        show_progress: the live display (:mod:`qbench.run.console`) when standard output
            is a terminal and ``echo`` is the default; plain lines otherwise.
        echo: where the runner's lines go.
        executor: overrides of the matrix's ``[executor]`` table (``--executor``,
            ``--slurm-*``).
        jobs_per_gpu: jobs sharing each GPU at a time (local executor).
    """

    workers: int | None = None
    device: str = "auto"
    force: bool = False
    append: bool = False
    rerun_failed: bool = False
    disable: tuple[str, ...] = ()
    show_progress: bool = True
    echo: Callable[[str], None] = print
    executor: dict[str, Any] | None = None
    jobs_per_gpu: int = 1


def run_matrix(
    matrix: Matrix, out: str | Path, options: RunOptions | None = None, **fields: Any
) -> RunSummary:
    """Run (or resume) every job of ``matrix`` into the run directory ``out``.

    ``options`` (or its ``fields`` as keywords: ``device="cpu"``) say how.
    Everything knowable before the first job is checked first
    (:func:`qbench.plan.preflight.preflight`, the executor and its extra, the
    device); then the directory is locked for this run and claimed for this
    matrix (:meth:`RunDir.claim`: ``force`` sets another matrix's run aside,
    ``append`` adds to it).
    """
    opts = dataclasses.replace(options or RunOptions(), **fields)
    plugins = get_plugins(opts.disable)
    config = ExecutorConfig.from_table(matrix.executor, _bad_executor).overridden(
        opts.executor or {}, _bad_executor
    )
    runner = build_executor(config)
    plan_devices(opts.device, opts.workers, 1, opts.jobs_per_gpu)  # a bad --device is known now
    for line in preflight(matrix, plugins.registry):
        opts.echo(f"warning: {line}")
    run_dir = RunDir(out)
    run_dir.check_ours()  # the user's own files are never written over
    run_dir.ensure()
    console = console_for(opts.show_progress, None if opts.echo is print else opts.echo)
    with run_dir.lock():
        for p in run_dir.clean_leftovers():
            console.line(f"removed {p.name}, left by a run that was killed while writing")
        if opts.append:
            _refuse_shared_labels(run_dir, matrix)
        said = run_dir.claim(matrix.identity(), force=opts.force, append=opts.append)
        if said:
            console.line(said)
        dispatch = Dispatch(
            run_dir,
            device=opts.device,
            workers=opts.workers,
            jobs_per_gpu=opts.jobs_per_gpu,
            disable=tuple(opts.disable),
            echo=console.line,
            console=console,
        )
        try:
            return _run_locked(
                matrix, run_dir, plugins, runner, dispatch, opts.force, opts.rerun_failed
            )
        finally:
            console.close()


def _refuse_shared_labels(run_dir: RunDir, matrix: Matrix) -> None:
    """``--append`` of a matrix whose quantizer labels the directory's rows already use would
    put two configurations under one label (the report could tell them apart by no name):
    refused before any job, naming the labels."""
    held, _ = read_run_record(run_dir.root / "run.json")
    if held is None:
        return
    identity = matrix.identity()
    if identity["id"] in [held.get("id")] + [a.get("id") for a in held.get("appended", [])]:
        return  # this matrix's own run: resumed, nothing is appended
    if code_changes(held, identity):
        return  # this matrix after a plugin edit: the touched jobs are set aside, not appended
    theirs = {r.get("quantizer") for r in run_dir.rows()}
    shared = sorted({j.quantizer.label for j in matrix.jobs} & theirs)
    if shared:
        raise RunError(
            f"{run_dir.root}: --append: the quantizer label(s) {', '.join(map(repr, shared))} "
            f"of matrix {identity['name']!r} already name jobs of matrix {held['name']!r} "
            "there; a label names one configuration in the report: give these entries "
            "another 'label', or use another --out"
        )


def _bad_executor(key: str, msg: str) -> None:
    raise RunError(f"executor setting {key!r}: {msg}")


def _run_locked(
    matrix: Matrix,
    run_dir: RunDir,
    plugins: PluginSet,
    runner: Executor,
    dispatch: Dispatch,
    force: bool,
    rerun_failed: bool,
) -> RunSummary:
    echo = dispatch.echo
    out = run_dir.root
    done = set() if force else run_dir.finished(rerun_failed=rerun_failed)
    ordered = list(enumerate(matrix.jobs))
    pending = [(o, j) for o, j in ordered if j.job_id not in done]
    groups: dict[str, list[tuple[int, Job]]] = {}
    for o, j in pending:
        groups.setdefault(j.train_id, []).append((o, j))
    if force:  # re-train too: forget the checkpoints and snapshots of the jobs that run again
        for train_id in groups:
            run_dir.remove_checkpoint(train_id)
            Snapshots(run_dir.ckpt_dir, train_id).clear()
    plan = runner.plan(dispatch, len(groups))
    threads = runner.threads(dispatch, len(groups))
    manifest = _manifest(matrix, plugins, runner, plan, threads, dispatch.disable)
    session = {"started": manifest["started"], "jobs": len(pending), "workers": len(plan)}
    earlier = [] if force else earlier_sessions(run_dir)
    manifest["sessions"] = earlier + ([session] if pending else [])
    run_dir.write_manifest(manifest)
    metric_cols, dispatch.columns = _columns(manifest)
    echo(
        f"qbench {__version__}: {matrix.name}: {len(matrix.jobs)} jobs, "
        f"{len(matrix.jobs) - len(pending)} already finished, {len(pending)} to run on "
        f"{runner.kind}: {len(plan)} at a time ({plan[0]}, {threads} thread(s) each)"
    )
    for p in plugins.problems:
        echo(f"warning: plugin {p.plugin} ({p.distribution}): {p.reason}")

    def merge() -> None:
        """Merge the rows so far; a failure (a full disk) is said and the run goes on."""
        try:
            run_dir.write_tables(metric_cols)
            session["last_job"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # a killed run's end
            run_dir.write_manifest(manifest)
        except OSError as exc:
            echo(
                f"warning: could not merge results.csv ({exc.strerror or exc}); the rows are "
                "kept and merged again after the next job"
            )

    dispatch.merged = merge
    if groups:
        dispatch.console.begin(
            len(groups), sum(max(g[0][1].recipe.steps(g[0][1].train), 1) for g in groups.values())
        )
        runner.run(list(groups.values()), dispatch)
    try:
        run_dir.write_tables(metric_cols)
    except OSError as exc:
        raise RunError(
            f"{out}: could not write results.csv ({exc.strerror or exc}); every finished job's "
            "row is kept in rows/, run `qbench report` once there is room"
        ) from exc
    rows = {r["job_id"]: r for r in run_dir.rows()}
    statuses: dict[str, int] = {}
    for j in matrix.jobs:
        s = rows.get(j.job_id, {}).get("status", "missing")
        statuses[s] = statuses.get(s, 0) + 1
    manifest["finished"] = session["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest["statuses"] = statuses
    run_dir.write_manifest(manifest)
    return RunSummary(
        Path(out), len(matrix.jobs), len(matrix.jobs) - len(pending), len(pending), statuses
    )


def _columns(manifest: dict[str, Any]) -> tuple[list[str], tuple[str, ...]]:
    """The metric columns of ``results.csv`` (a schedule statistic's with its final and
    average suffixes), and those a finished row's line shows (no schedule statistic)."""
    scheduled = manifest["schedule_metrics"]
    merged = [
        c + suffix
        for name, cols in manifest["metric_columns"].items()
        for c in cols
        for suffix in (FINAL_SUFFIXES + AVERAGE_SUFFIXES if name in scheduled else ("",))
    ]
    shown = tuple(
        c
        for name, cols in manifest["metric_columns"].items()
        if name not in scheduled
        for c in cols
    )
    return merged, shown


def _metric_manifest(matrix: Matrix, plugins: PluginSet) -> dict[str, Any]:
    """What the report needs of the matrix's metrics, each built once: their declared
    columns (in the matrix's order), which are schedule statistics (``per_probe``), and
    each column's ``column_notes``."""
    metrics = {name: plugins.registry.build("metric", name) for name in matrix.eval.metrics}
    notes: dict[str, str] = {}
    for m in metrics.values():
        notes.update(m.column_notes)
    return {
        "metric_columns": {name: list(m.columns) for name, m in metrics.items()},
        "schedule_metrics": [name for name, m in metrics.items() if m.measures_schedule()],
        "column_notes": notes,
    }


def _git_commit() -> str:
    import subprocess

    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def earlier_sessions(run_dir: RunDir) -> list[dict[str, Any]]:
    """The ``qbench run`` sessions that ran jobs in ``run_dir`` before this one (each
    ``{"started", "finished" or, for a killed one, "last_job", "jobs", "workers"}``), from its
    manifest, so that a run made in several sessions keeps its whole wall time. A manifest
    of an older qbench gives its one session when it ran jobs (``started`` before
    ``finished``); an unreadable one gives none."""
    try:
        held = json.loads((run_dir.root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(held, dict):
        return []
    if isinstance(held.get("sessions"), list):
        return [s for s in held["sessions"] if isinstance(s, dict)]
    if held.get("started") and held.get("finished") and held["started"] != held["finished"]:
        return [{"started": held["started"], "finished": held["finished"]}]
    return []


def _manifest(
    matrix: Matrix, plugins: PluginSet, runner: Executor, plan: list[str], threads: int, disable
) -> dict[str, Any]:
    import platform

    import compressai

    return {
        "qbench": __version__,
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "executor": runner.kind,
        "device": plan,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "workers": len(plan),
        "threads_per_worker": threads,
        "loss": LOSS,
        "seeds": sorted({j.seed for j in matrix.jobs}),
        "matrix": matrix.resolved(),
        **_metric_manifest(matrix, plugins),
        "matrix_file": matrix.raw,
        "jobs": [
            {"job_id": j.job_id, "train_id": j.train_id, "describe": j.describe()}
            for j in matrix.jobs
        ],
        "plugins": [
            {"plugin": p.name, "distribution": p.distribution, "version": p.version}
            for p in plugins.plugins
        ],
        "plugin_problems": [vars(p) for p in plugins.problems],
        "disabled_plugins": list(disable),
        "datasets": {j.dataset.label: j.dataset.name for j in matrix.jobs},
        "quantizers": {
            j.quantizer.label: quantizer_manifest(j.quantizer.name, plugins.registry)
            for j in matrix.jobs
        },
    }


def quantizer_manifest(name: str, registry: Registry) -> dict[str, Any]:
    """What the report needs of a job's quantizer: its registered name, description and the
    notes its class declares (``Quantizer.report_notes``), so the report reads the run
    directory alone."""
    entry = registry.get("quantizer", name)
    notes = getattr(entry.factory, "report_notes", None) or {}
    return {
        "name": name,
        "description": entry.description,
        "report_notes": {str(k): str(v) for k, v in dict(notes).items()},
    }
