"""Expansion: one derivation object per kind of quantizer entry, and the jobs it makes.

A plain entry trains one model per (backbone, lambda, seed); ``from_anchor``
derives models from a trained anchor; ``from_anchor = "backbone"`` refines
the quantizers of the backbone as built; ``interpolate`` blends two derived
models. Each kind is a class with a ``stage`` (trained models are expanded
first, then what derives from them) and an ``expand`` that adds its jobs to
the :class:`Grid`, each with the :mod:`~qbench.plan.recipes` recipe that
produces its weights and a structured :class:`~qbench.plan.recipes.Origin`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Union

from qbench.plan.checker import Checker
from qbench.plan.configs import EvalConfig, Refinement, TrainConfig
from qbench.plan.jobs import Job, Spec, make_job
from qbench.plan.recipes import Blend, Origin, Refine, RefineBackbone, SoftThenHard, Train
from qbench.registry import unknown_name_message


@dataclass(frozen=True)
class Axes:
    """The matrix's axes and the sections every job shares."""

    backbones: list[Spec]
    lambdas: list[float]
    datasets: list[Spec]
    seeds: list[int]
    unlisted: Spec
    train_dataset: Spec
    train: TrainConfig
    evaluation: EvalConfig


class Grid:
    """The matrix's axes, and the jobs expanded so far (by label, lambda and seed)."""

    def __init__(self, ck: Checker, axes: Axes) -> None:
        self.ck = ck
        self.backbones, self.lambdas = axes.backbones, axes.lambdas
        self.datasets, self.seeds = axes.datasets, axes.seeds
        self.unlisted, self.train_dataset = axes.unlisted, axes.train_dataset
        self.train, self.evaluation = axes.train, axes.evaluation
        self.jobs: list[Job] = []
        self.plain: list[Spec] = []
        # (backbone label, quantizer label, lambda, seed) -> a job with that model
        self.models: dict[tuple[str, str, float, int], Job] = {}

    def add(self, bb: Spec, q: Spec, lam: float, ds: Spec, seed: int, recipe) -> Job:
        job = make_job(
            backbone=bb,
            quantizer=q,
            unlisted=self.unlisted,
            lmbda=lam,
            seed=seed,
            train_dataset=self.train_dataset,
            train=self.train,
            recipe=recipe,
            dataset=ds,
            evaluation=self.evaluation,
        )
        self.jobs.append(job)
        self.models.setdefault((bb.label, q.label, lam, seed), job)
        return job

    def require_lambda(self, lam: float, path: str) -> None:
        if lam not in self.lambdas:
            self.ck.fail(path, f"lambda {lam:g} is not in matrix.lambdas {self.lambdas}")


@dataclass(frozen=True)
class _Trained:
    """A plain entry: one trained model per (backbone, lambda, seed)."""

    stage = 0

    def expand(self, grid: Grid, q: Spec, path: str) -> None:
        grid.plain.append(q)
        for bb, lam, ds, seed in itertools.product(
            grid.backbones, grid.lambdas, grid.datasets, grid.seeds
        ):
            grid.add(bb, q, lam, ds, seed, Train())


@dataclass(frozen=True)
class _SoftThenHard:
    """``soft_then_hard = { hard_steps = N, frozen = [...] }``: one model per (backbone,
    lambda, seed), trained soft then hard (:class:`~qbench.plan.recipes.SoftThenHard`)."""

    hard_steps: int
    frozen: tuple[str, ...]
    stage = 0

    def expand(self, grid: Grid, q: Spec, path: str) -> None:
        if self.hard_steps >= grid.train.steps:
            grid.ck.fail(
                f"{path}.soft_then_hard.hard_steps",
                f"{self.hard_steps} hard steps leave no soft training in [train] steps = "
                f"{grid.train.steps}; give fewer hard steps (they are part of the training)",
            )
        for bb, lam, ds, seed in itertools.product(
            grid.backbones, grid.lambdas, grid.datasets, grid.seeds
        ):
            grid.add(bb, q, lam, ds, seed, SoftThenHard(self.hard_steps, self.frozen))


@dataclass(frozen=True)
class _FromAnchor:
    """``from_anchor``: refine only the quantizer, starting from an anchor's model at ``lmbda``.

    The anchor is the plain entry with the same quantizer and parameters
    (``from_anchor = LAMBDA``), or the plain entry labelled ``of``
    (``from_anchor = { of = LABEL, lambda = LAMBDA }``): then only its
    backbone is loaded and the quantizer starts from its own initialisation,
    so that several methods can be compared on one anchor model.
    """

    lmbda: float
    refine_steps: int
    refine_lr: float | None = None
    of: str | None = None
    reset: tuple[str, ...] = ()
    stage = 1

    def expand(self, grid: Grid, q: Spec, path: str) -> None:
        if self.of is None:
            anchors = [a for a in grid.plain if a.identity() == q.identity()]
            if not anchors:
                grid.ck.fail(
                    f"{path}.from_anchor",
                    f"no plain {q.name!r} entry with the same parameters in this matrix to start "
                    "from (or name one: from_anchor = {{ of = LABEL, lambda = LAMBDA }})",
                )
        else:
            anchors = [a for a in grid.plain if a.label == self.of]
            if not anchors:
                grid.ck.fail(
                    f"{path}.from_anchor.of",
                    unknown_name_message(
                        "trained quantizer label", self.of, [a.label for a in grid.plain]
                    ),
                )
        grid.require_lambda(self.lmbda, f"{path}.from_anchor")
        anchor_spec = anchors[0]
        backbone_only = anchor_spec.identity() != q.identity()
        if backbone_only and self.reset:
            grid.ck.fail(
                f"{path}.refine_reset",
                f"the quantizer starts fresh on {anchor_spec.label!r}'s backbone (another "
                "entry's anchor): it has no anchor state to reset",
            )
        origin = Origin(anchor_spec.label, (self.lmbda,))
        for bb, lam, ds, seed in itertools.product(
            grid.backbones, grid.lambdas, grid.datasets, grid.seeds
        ):
            anchor = grid.models[(bb.label, anchor_spec.label, self.lmbda, seed)]
            recipe = Refine(
                anchor.train_id,
                self.refine_steps,
                origin,
                self.refine_lr,
                backbone_only,
                self.reset,
            )
            grid.add(bb, q, lam, ds, seed, recipe)


@dataclass(frozen=True)
class _FromBackbone:
    """``from_anchor = "backbone"``: refine only the quantizer of the backbone as built.

    The backbone's own weights are the anchor (``pretrained = Q`` from
    CompressAI's zoo, or ``checkpoint = FILE``): STanH's protocol on a
    fixed-rate pretrained model, with no backbone training in the matrix.
    """

    refine_steps: int
    refine_lr: float | None = None
    stage = 1

    def expand(self, grid: Grid, q: Spec, path: str) -> None:
        for bb, lam, ds, seed in itertools.product(
            grid.backbones, grid.lambdas, grid.datasets, grid.seeds
        ):
            recipe = RefineBackbone(self.refine_steps, Origin(bb.label), self.refine_lr)
            grid.add(bb, q, lam, ds, seed, recipe)


@dataclass(frozen=True)
class _Interpolation:
    """``interpolate``: ``points`` blends of the models of ``of`` at two lambdas."""

    of: str
    between: tuple[float, float]
    points: int
    stage = 2

    def expand(self, grid: Grid, q: Spec, path: str) -> None:
        labels = sorted({label for _, label, _, _ in grid.models})
        if self.of not in labels:
            grid.ck.fail(
                f"{path}.interpolate.of",
                unknown_name_message("quantizer label", self.of, labels),
            )
        l1, l2 = self.between
        for lam in (l1, l2):
            grid.require_lambda(lam, f"{path}.interpolate.between")
        origin = Origin(self.of, (l1, l2))
        for bb, ds, seed in itertools.product(grid.backbones, grid.datasets, grid.seeds):
            first = grid.models[(bb.label, self.of, l1, seed)]
            second = grid.models[(bb.label, self.of, l2, seed)]
            if first.quantizer.name != q.name:
                grid.ck.fail(
                    f"{path}.interpolate.of",
                    f"{self.of!r} is a {first.quantizer.name!r} quantizer; a {q.name!r} entry "
                    "cannot blend it (interpolation is between quantizers of one kind)",
                )
            theirs = first.quantizer.params
            for key, value in q.params.items():  # blends are of's models: no other shape
                if theirs.get(key, value) != value or key not in theirs:
                    grid.ck.fail(
                        f"{path}.{key}",
                        f"{key} = {value!r} differs from {self.of!r} "
                        f"({key} = {theirs.get(key, 'its default')!r}); the blends are "
                        f"{self.of!r}'s models: omit {key} or make it match",
                    )
            if q.latents is not None and q.latents != first.quantizer.latents:
                grid.ck.fail(
                    f"{path}.latents",
                    f"latents {list(q.latents)} differ from {self.of!r}'s; omit them",
                )
            for k in range(self.points):
                a = k / (self.points - 1)
                nominal = l1 ** (1 - a) * l2**a
                blend = Blend(first.train_id, second.train_id, a, origin)
                grid.add(bb, first.quantizer.relabel(q.label), nominal, ds, seed, blend)


Derivation = Union["_Trained", "_SoftThenHard", "_FromAnchor", "_FromBackbone", "_Interpolation"]


def expand(ck: Checker, axes: Axes, quantizers: list[Spec], entries: list[Any]) -> list[Job]:
    """Every job of the matrix: each quantizer entry's derivation, trained models first;
    then, with ``[eval] refine_latents``, each refined arm's twin of its jobs."""
    refinement = axes.evaluation.refine_latents
    if refinement is not None:  # the plain jobs evaluate as ever (and keep their ids)
        axes = replace(axes, evaluation=replace(axes.evaluation, refine_latents=None))
    grid = Grid(ck, axes)
    derivations = [
        (i, q, derivation(ck, raw, f"matrix.quantizers[{i}]"))
        for i, (q, raw) in enumerate(zip(quantizers, entries))
    ]
    for stage in (0, 1, 2):
        for i, q, how in derivations:
            if how.stage == stage:
                how.expand(grid, q, f"matrix.quantizers[{i}]")
    if refinement is None:
        return grid.jobs
    chosen = [
        j for j in grid.jobs if not refinement.labels or j.quantizer.label in refinement.labels
    ]
    return grid.jobs + [_refined(job, refinement) for job in chosen]


def _refined(job: Job, refinement: Refinement) -> Job:
    """The twin of ``job`` that evaluates its model (the same train group) with refined
    latents, under the label ``refinement.label_of(label)``."""
    return make_job(
        backbone=job.backbone,
        quantizer=job.quantizer.relabel(refinement.label_of(job.quantizer.label)),
        unlisted=job.unlisted,
        lmbda=job.lmbda,
        seed=job.seed,
        train_dataset=job.train_dataset,
        train=job.train,
        recipe=job.recipe,
        dataset=job.dataset,
        evaluation=replace(job.eval, refine_latents=refinement),
    )


def _refine_settings(ck: Checker, entry: dict, path: str) -> tuple[int, float | None]:
    """``(refine_steps, refine_lr)`` of a derived entry, checked."""
    steps = entry.get("refine_steps", 500)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        ck.fail(f"{path}.refine_steps", f"expected a positive integer, got {steps!r}")
    lr = entry.get("refine_lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        ck.fail(f"{path}.refine_lr", f"expected a positive learning rate, got {lr!r}")
    return steps, None if lr is None else float(lr)


def derivation(ck: Checker, entry: Any, path: str) -> Derivation:
    """What a quantizer entry asks for: a trained model, a derived one, or blends."""
    if not isinstance(entry, dict):
        return _Trained()
    for key in ("refine_steps", "refine_lr", "refine_reset"):
        if key in entry and "from_anchor" not in entry:
            ck.fail(f"{path}.{key}", "only meaningful with from_anchor")
    if "refine_reset" in entry and entry.get("from_anchor") == "backbone":
        ck.fail(
            f"{path}.refine_reset", 'only meaningful with an anchor entry\'s model, not "backbone"'
        )
    if "from_anchor" in entry and "interpolate" in entry:
        ck.fail(f"{path}.interpolate", "cannot be combined with from_anchor")
    if "soft_then_hard" in entry:
        for key in ("from_anchor", "interpolate"):
            if key in entry:
                ck.fail(f"{path}.soft_then_hard", f"cannot be combined with {key}")
        return _soft_then_hard(ck, entry["soft_then_hard"], path)
    if entry.get("from_anchor") == "backbone":
        steps, lr = _refine_settings(ck, entry, path)
        return _FromBackbone(steps, lr)
    if "from_anchor" in entry:
        lam, of = entry["from_anchor"], None
        if isinstance(lam, dict):
            ck.check_keys(lam, {"of", "lambda"}, f"{path}.from_anchor")
            of, lam = lam.get("of"), lam.get("lambda")
            if not isinstance(of, str) or not of:
                ck.fail(f"{path}.from_anchor.of", f"expected a quantizer label, got {of!r}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
            ck.fail(
                f"{path}.from_anchor",
                f"expected the anchor's lambda, {{ of = LABEL, lambda = LAMBDA }} or "
                f'"backbone" (the backbone\'s own weights), got {lam!r}',
            )
        steps, lr = _refine_settings(ck, entry, path)
        reset = entry.get("refine_reset", [])
        if not isinstance(reset, list) or not all(isinstance(r, str) and r for r in reset):
            ck.fail(
                f"{path}.refine_reset",
                f'expected a list of names of quantizer state (e.g. ["beta"]), got {reset!r}',
            )
        return _FromAnchor(float(lam), steps, lr, of, tuple(reset))
    if "interpolate" in entry:
        return _interpolation(ck, entry["interpolate"], path)
    return _Trained()


def _interpolation(ck: Checker, it: Any, path: str) -> _Interpolation:
    """The ``interpolate = { of, between, points }`` table of an entry, checked."""
    if not isinstance(it, dict):
        ck.fail(f"{path}.interpolate", "expected { of = LABEL, between = [l1, l2], points = N }")
    ck.check_keys(it, {"of", "between", "points"}, f"{path}.interpolate")
    of, between, points = it.get("of"), it.get("between"), it.get("points", 5)
    if not isinstance(of, str):
        ck.fail(f"{path}.interpolate.of", f"expected a quantizer label, got {of!r}")
    if (
        not isinstance(between, list)
        or len(between) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in between)
        or not 0 < between[0] < between[1]
    ):
        ck.fail(
            f"{path}.interpolate.between",
            f"expected two increasing positive lambdas, got {between!r}",
        )
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        ck.fail(f"{path}.interpolate.points", f"expected an integer >= 2, got {points!r}")
    return _Interpolation(of, (float(between[0]), float(between[1])), points)


def _soft_then_hard(ck: Checker, table: Any, path: str) -> _SoftThenHard:
    """The ``soft_then_hard = { hard_steps = N, frozen = [...] }`` table of an entry, checked."""
    where = f"{path}.soft_then_hard"
    if not isinstance(table, dict):
        ck.fail(where, 'expected { hard_steps = N, frozen = ["analysis"] }')
    ck.check_keys(table, {"hard_steps", "frozen"}, where)
    steps, frozen = table.get("hard_steps"), table.get("frozen", ["analysis"])
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        ck.fail(f"{where}.hard_steps", f"expected a positive integer, got {steps!r}")
    if (
        not isinstance(frozen, list)
        or not frozen
        or not all(isinstance(f, str) and f for f in frozen)
    ):
        ck.fail(
            f"{where}.frozen",
            f'expected a list of "analysis" or parameter-name prefixes, got {frozen!r}',
        )
    return _SoftThenHard(steps, tuple(frozen))
