"""Logger rules: the ``qbench.Logger`` contract (start, log, finish) on a tiny fake job.

The worker builds one logger per train group, creates its folder
``RUN_DIR/monitor/<logger label>/`` and calls ``start(job, folder)``, then
``log(step, stats)`` every ``[train] log_every`` steps and ``finish(row)`` with
the group's first row. The rules replay that on a real :class:`qbench.plan.jobs.Job`
of one tiny cell, in a temporary folder; nothing trains.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qbench.conformance._rules import fail, rule

#: the training statistics a logger is given: the history record and the annealing state
STATS = {"loss": 1.5, "bpp": 0.8, "mse": 0.004, "psnr": 24.0, "progress": 0.0, "y/tau": 0.5}


def _logger(entry):
    """The logger its factory builds from the defaults; a skip when it cannot be built here
    (a missing optional library, which the factory names, or required parameters)."""
    from qbench.registry import PluginParameterError, QbenchError

    try:
        return entry.build()
    except PluginParameterError as exc:
        if isinstance(exc.__cause__, TypeError):
            pytest.skip(f"needs parameters to build: {exc}")
        raise
    except QbenchError as exc:  # the factory's own word, e.g. the pip extra to install
        pytest.skip(f"cannot be built here: {exc}")


#: the cell of the fake job, by kind: the built-in plugin when it is registered
CELL = {"backbone": "bmshj2018-factorized", "quantizer": "noise", "dataset": "embedded"}


def fake_job(logger_name: str):
    """The job of a one-cell matrix (3 training steps, ``[monitor] loggers`` naming the
    logger under test), expanded by qbench's matrix parser: what the worker passes to
    ``start``. Its backbone, quantizer and dataset are the built-in ones of :data:`CELL`,
    or the first registered of their kind."""
    from qbench.plan.matrix import parse_matrix
    from qbench.plugins import get_plugins

    registry = get_plugins().registry
    names = {}
    for kind, preferred in CELL.items():
        known = registry.names(kind)
        if not known:
            pytest.skip(f"no {kind} is registered to make a job with")
        names[kind] = preferred if preferred in known else known[0]
    raw = {
        "matrix": {
            "backbones": [names["backbone"]],
            "quantizers": [names["quantizer"]],
            "lambdas": [0.01],
            "datasets": [names["dataset"]],
        },
        "train": {"dataset": names["dataset"], "steps": 3, "log_every": 1},
        "monitor": {"loggers": [logger_name]},
    }
    return parse_matrix(raw, "conformance job", registry).jobs[0]


def _rows(job) -> list[dict]:
    """A finished job's row and a failed one's (no metric values, a reason)."""
    ids = job.id_columns()
    ok = {**ids, "status": "ok", "reason": "", "bpp": 0.8, "bpp_bitstream": 0.81, "psnr": 24.0}
    ok["ms_ssim"] = math.nan
    failed = {**ids, "status": "failed", "reason": "RuntimeError: the quantizer raised"}
    return [ok, failed]


def _lifecycle(entry, folder: Path, row: dict, job) -> None:
    """One train group's logging: build, start, log three steps, finish with ``row``."""
    logger = _logger(entry)
    logger.start(job, folder)
    for step in (1, 2, 3):
        logger.log(step, {**STATS, "progress": step / 3, "loss": 1.5 / step})
    logger.finish(row)


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@rule("logger", "constructs")
def l_constructs(entry, env):
    """The factory builds a qbench.Logger, or an object whose start, log and finish are
    callable."""
    import qbench

    logger = _logger(entry)
    if isinstance(logger, qbench.Logger):
        return
    missing = [m for m in ("start", "log", "finish") if not callable(getattr(logger, m, None))]
    if missing:
        fail(
            "constructs",
            f"factory returned {type(logger).__name__}, not a qbench.Logger, without "
            f"callable {', '.join(missing)}",
        )


@rule("logger", "start_log_finish")
def l_lifecycle(entry, env):
    """start(job, folder), log(step, stats) and finish(row) run without raising on a fake job
    and a fresh folder, for a finished job's row and for a failed job's (no metric values)."""
    job = fake_job(entry.name)
    with tempfile.TemporaryDirectory() as d:
        for i, row in enumerate(_rows(job)):
            folder = Path(d) / str(i) / "monitor" / entry.name
            folder.mkdir(parents=True)
            try:
                _lifecycle(entry, folder, row, job)
            except pytest.skip.Exception:
                raise
            except Exception as exc:
                fail(
                    "start_log_finish",
                    f"start/log/finish with a {row['status']!r} row raised "
                    f"{type(exc).__name__}: {exc}",
                )


@rule("logger", "writes_inside_folder")
def l_inside(entry, env):
    """A logger writes only inside the folder ``start`` is given (nothing beside it in the
    run folder, nothing in the working directory)."""
    job = fake_job(entry.name)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        folder = root / "run" / "monitor" / entry.name
        folder.mkdir(parents=True)
        (root / "cwd").mkdir()
        with _working_directory(root / "cwd"):
            _lifecycle(entry, folder, _rows(job)[0], job)
        given = {root / "cwd", folder, *folder.parents}
        outside = sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p not in given and folder not in p.parents
        )
        if outside:
            fail(
                "writes_inside_folder",
                f"wrote outside its folder run/monitor/{entry.name}: {outside[:3]}",
            )
