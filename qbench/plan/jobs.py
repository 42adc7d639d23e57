"""Jobs: what one cell of a matrix is, and how its id is made.

A :class:`Job` is one (backbone, quantizer, lambda, evaluation dataset, seed)
cell with its typed configuration and the :class:`~qbench.plan.recipes.Recipe` that
produces its weights. Jobs that differ only in the evaluation dataset share
one trained model: their *train id* is equal.

**How a job id is made** (:func:`job_identity`, the only place): the
``train_id`` is a hash of everything that determines the trained weights
(backbone, quantizer and the quantizer of unlisted latents, each as registered
name, factory parameters and the providing plugin's distribution, version
and code digest, :func:`qbench.provenance.code_digest`, so that an edited
plugin re-runs its jobs while an unrelated plugin's edit changes no id;
lambda; seed; the training dataset; the ``[train]`` settings but
``log_every``; the recipe); the ``job_id`` adds the labels, the evaluation
dataset and the ``[eval]`` settings. ``qbench run --set`` overrides change the
configuration and therefore the ids. Ids are stable across processes and
machines, so a re-run skips the jobs whose row exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qbench.plan.configs import EvalConfig, TrainConfig
from qbench.plan.recipes import Recipe
from qbench.results import read_run_record


@dataclass(frozen=True)
class Spec:
    """One resolved matrix entry: a registered name, its label and its factory parameters.

    Attributes:
        kind: ``quantizer``, ``backbone``, ``dataset`` or ``metric``.
        name: the registered name.
        label: the name shown in tables (unique within its list).
        params: the factory's keyword arguments.
        provider: ``"distribution version"`` of the plugin that registered it.
        latents: quantizers only: the latents it quantizes (None: all).
        fingerprints: ``{parameter: fingerprint}`` of the parameters the plugin
            declared as ``paths`` (see :func:`fingerprint`); they stand for
            those paths in the identity, so the identity follows the files'
            content, not the spelling of their path.
        code: the digest of the providing plugin's source
            (:func:`qbench.provenance.code_digest`): editing the plugin's code
            changes the identity even when its version stays.
    """

    kind: str
    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    provider: str = ""
    latents: tuple[str, ...] | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    code: str = ""

    def identity(self) -> dict[str, Any]:
        """What makes two entries build the same object (the label does not)."""
        params = {k: self.fingerprints.get(k, v) for k, v in self.params.items()}
        d = {"name": self.name, "params": params, "provider": self.provider, "code": self.code}
        if self.latents is not None:
            d["latents"] = list(self.latents)
        return d

    def relabel(self, label: str) -> Spec:
        return replace(self, label=label)


@dataclass(frozen=True)
class Job:
    """One cell of a matrix (see the module docstring).

    Attributes:
        backbone, quantizer, dataset: the entries of the cell.
        unlisted: the quantizer of latents that ``quantizer.latents`` leaves out.
        lmbda: the rate-distortion trade-off of the loss.
        seed: seeds weight initialisation, crops and surrogate draws.
        train_dataset, train: the ``[train]`` section.
        eval: the ``[eval]`` section.
        recipe: how the weights are produced.
        train_id, job_id: see :func:`job_identity`.
        config_id: the configuration apart from the cell's axes (lambda,
            seed, labels): rows of one curve share it.
        loggers: the matrix's live loggers (``[monitor] loggers``); how a job
            is watched, not part of its identity.
    """

    backbone: Spec
    quantizer: Spec
    unlisted: Spec
    lmbda: float
    seed: int
    train_dataset: Spec
    train: TrainConfig
    recipe: Recipe
    dataset: Spec
    eval: EvalConfig
    train_id: str
    job_id: str
    config_id: str = ""
    loggers: tuple[Spec, ...] = ()

    def describe(self) -> str:
        weight = self.recipe.columns().get("interp_weight")
        extra = f" a={weight:g}" if weight is not None else ""
        return (
            f"{self.backbone.label} / {self.quantizer.label} / lambda={self.lmbda:g}{extra} / "
            f"{self.dataset.label} / seed={self.seed}"
        )

    def id_columns(self) -> dict[str, Any]:
        """The columns that say which cell a row belongs to."""
        return {
            "backbone": self.backbone.label,
            "quantizer": self.quantizer.label,
            "lambda": self.lmbda,
            "dataset": self.dataset.label,
            "seed": self.seed,
            "job_id": self.job_id,
            "train_id": self.train_id,
            "config_id": self.config_id,
        }


#: Content digests already computed in this process, by (real path, size, mtime).
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest(path: Path, st: os.stat_result) -> str:
    """SHA-256 of a regular file's bytes (memoised per process while its size and mtime
    stay). The file is opened without blocking and checked on the open file, so a FIFO
    or a device put in its place is never read (``OSError``)."""
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{path}: not a regular file")
            if hasattr(os, "set_blocking"):
                os.set_blocking(fd, True)
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def fingerprint(path: Path) -> str:
    """A fingerprint of a file's or folder's content: the SHA-256 of every file's bytes.

    A folder contributes every regular file below it (symlinked subfolders followed,
    each real folder once) by path relative to the folder and digest; entries that
    are not regular files (a FIFO, a link to a device, a socket, a broken link) are
    not read and do not count (the dataset that lists them names them as skipped),
    and neither do qbench run directories below it (a folder with qbench's
    ``run.json``: ``--out`` inside a dataset folder).
    Changing, adding, removing or renaming a file inside a folder changes the
    fingerprint; the same bytes under another path, spelling, clone or machine give
    the same one (modification times do not count: a fresh clone or a copy without
    ``rsync -t`` keeps its ids). Every file is read once per process (about 2 s per
    GB); ``"missing"`` when nothing is there.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_file():
        return stable_hash(["file", _digest(path, path.stat())], 16)
    entries = []
    seen = set()
    for folder, dirs, files in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop: each real folder once
            dirs[:] = []
            continue
        seen.add(real)
        # a qbench run directory below the folder (``--out`` inside a dataset) is not data:
        # its files change with every run, and the dataset leaves them out too
        dirs[:] = sorted(
            d for d in dirs if read_run_record(Path(folder) / d / "run.json")[0] is None
        )
        for f in sorted(files):
            full = Path(folder) / f
            try:
                st = full.stat()
                if stat.S_ISREG(st.st_mode):
                    entries.append([str(full.relative_to(path)), _digest(full, st)])
            except OSError:
                continue
    return stable_hash(entries, 16)


def stable_hash(obj: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Cell:
    """The coordinates and configuration of one job, before its ids are made."""

    backbone: Spec
    quantizer: Spec
    unlisted: Spec
    lmbda: float
    seed: int
    train_dataset: Spec
    train: TrainConfig
    recipe: Recipe
    dataset: Spec
    evaluation: EvalConfig

    def weights(self) -> dict[str, Any]:
        """Everything that determines the trained weights."""
        return {
            "backbone": self.backbone.identity(),
            "quantizer": self.quantizer.identity(),
            "unlisted": self.unlisted.identity(),
            "lambda": float(self.lmbda),
            "seed": int(self.seed),
            "train_dataset": self.train_dataset.identity(),
            "train": self.train.identity(),
            "recipe": self.recipe.identity(),
        }

    def configuration(self) -> dict[str, Any]:
        """The configuration apart from the cell's axes (lambda, seed, labels)."""
        return {
            "backbone": self.backbone.identity(),
            "quantizer": self.quantizer.identity(),
            "unlisted": self.unlisted.identity(),
            "train_dataset": self.train_dataset.identity(),
            "train": self.train.identity(),
            "recipe": [self.recipe.role.mode, self.recipe.steps(self.train)],
            "dataset": self.dataset.identity(),
            "eval": self.evaluation.identity(),
        }


def job_identity(cell: Cell) -> tuple[str, str]:
    """``(train_id, job_id)`` of a cell: the one definition of a job's identity.

    ``train_id`` hashes what determines the weights (:meth:`Cell.weights`),
    ``job_id`` adds the labels (two labels for one configuration are two
    rows), the evaluation dataset and the ``[eval]`` settings.

    Every registered name enters by its :meth:`Spec.identity`: name, factory
    parameters, provider (distribution and version) and the digest of the
    plugin's code (:func:`qbench.provenance.code_digest`); the metrics enter
    by ``EvalConfig.metric_code``. Editing a plugin's source re-runs the jobs
    that use what it registered, and no other.
    """
    weights = cell.weights()
    job_id = stable_hash(
        {
            "weights": weights,
            "labels": [cell.backbone.label, cell.quantizer.label, cell.dataset.label],
            "dataset": cell.dataset.identity(),
            "eval": cell.evaluation.identity(),
        }
    )
    return stable_hash(weights), job_id


def make_job(**cell: Any) -> Job:
    """A :class:`Job` of the cell given by :class:`Cell`'s fields as keywords, with its ids."""
    c = Cell(**cell)
    train_id, job_id = job_identity(c)
    config_id = stable_hash(c.configuration(), 8)
    evaluation = cell.pop("evaluation")
    return Job(**cell, eval=evaluation, train_id=train_id, job_id=job_id, config_id=config_id)
