"""Where a job's weights come from: recipes.

Every job carries one :class:`Recipe`, and :meth:`Recipe.produce` turns a
freshly built model into the job's trained model. The built-in recipes are the
four ways a matrix can ask for weights:

* :class:`Train`: train backbone and quantizers from scratch (the ordinary job);
* :class:`Refine`: load an anchor's trained weights, freeze the backbone and the
  auxiliary parameters, and train only the quantizers for a few steps (a
  *derived* model of the variable-rate protocol; ``from_anchor`` in a matrix);
* :class:`RefineBackbone`: train only the quantizers of the backbone as built,
  whose own weights (pretrained or from a checkpoint) are the anchor
  (``from_anchor = "backbone"``);
* :class:`Blend`: load two refined models and blend their quantizers with
  ``Quantizer.interpolate``, no training (``interpolate`` in a matrix).

A recipe is data (its :meth:`~Recipe.identity` is part of the job id) plus
behaviour; the worker never asks which recipe it holds. A recipe that starts
from other trained models names their train ids in ``sources``, so the runner
schedules those first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qbench.backbone import Backbone
from qbench.plan.configs import TrainConfig
from qbench.registry import QbenchError
from qbench.run.train import CropSampler, Outcome, train
from qbench.snapshots import Snapshots


@dataclass
class Context:
    """What a recipe may use to produce weights (given by the worker).

    Attributes:
        build_model: a fresh model of the job (backbone with its quantizers).
        source_weights: ``train_id -> state dict`` of a finished train group.
        train_images: the training images (uint8, ``3 x H x W``).
        config: the matrix's ``[train]`` settings.
        lmbda, seed, device: the job's.
        on_step: progress callback ``(step, stats)`` after every step, or None.
        on_log: ``(step, record)`` with each history record (every ``log_every``
            steps), or None: the live monitoring of the job.
        snapshots: where the training keeps resumable snapshots, or None.
        probe: ``(model, steps) -> (probe_steps, measure)``: the schedule
            statistics of a run of ``steps`` steps, measured by ``measure(step)``
            at each of ``probe_steps``; or None. It must not change the
            training: its own batches, its own RNG stream, every mode restored.
    """

    build_model: Callable[[], Backbone]
    source_weights: Callable[[str], dict[str, Tensor]]
    train_images: Callable[[], Sequence[Tensor]]
    config: TrainConfig
    lmbda: float
    seed: int
    device: torch.device
    on_step: Callable[[int, dict[str, float]], None] | None = None
    probe: Callable[[Backbone, int], tuple[list[int], Callable[[int], dict[str, Any]]]] | None = (
        None
    )
    on_log: Callable[[int, dict[str, float]], None] | None = None
    snapshots: Snapshots | None = None


class Recipe:
    """How a job's weights are produced (see the module docstring)."""

    #: train ids of the models this recipe starts from (they must finish first)
    sources: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """Everything about the recipe that changes the weights (part of the job id)."""
        raise NotImplementedError

    def columns(self) -> dict[str, Any]:
        """Columns this recipe adds to a job's row (``mode``, ``origin``, ``interp_weight``)."""
        raise NotImplementedError

    def steps(self, config: TrainConfig) -> int:
        """Optimisation steps this recipe takes (for progress bars and summaries)."""
        return 0

    def produce(self, model: Backbone, ctx: Context) -> Outcome:
        """Turn the freshly built ``model`` into the job's weights, in place."""
        raise NotImplementedError


def _optimise(
    model: Backbone, ctx: Context, steps: int, parameters: list | None, train_aux: bool
) -> Outcome:
    """The training loop with the worker's probes, logs and snapshots attached (shared by
    Train and Refine)."""
    sampler = CropSampler(ctx.train_images(), ctx.config.crop, ctx.seed, ctx.device)
    probe_steps, measure = ctx.probe(model, steps) if ctx.probe is not None else ([], None)
    return train(
        model,
        sampler,
        lmbda=ctx.lmbda,
        steps=steps,
        batch_size=ctx.config.batch_size,
        lr=ctx.config.lr,
        aux_lr=ctx.config.aux_lr,
        clip_max_norm=ctx.config.clip_max_norm,
        device=ctx.device,
        parameters=parameters,
        train_aux=train_aux,
        on_step=ctx.on_step,
        log_every=ctx.config.log_every,
        on_log=ctx.on_log,
        probe_steps=probe_steps,
        on_probe=measure,
        snapshots=ctx.snapshots,
        amp=ctx.config.amp,
    )


def _refine_quantizers(
    model: Backbone, ctx: Context, steps: int, lr: float | None, origin: str
) -> Outcome:
    """Train only the quantizers' parameters of ``model`` as it stands (Refine and
    RefineBackbone); ``lr`` replaces ``[train] lr`` (a quantizer's few parameters may
    need their own rate)."""
    params = list(model.quantizer_parameters())
    if not params:
        raise QbenchError(f"the quantizer has no trainable parameters to refine ({origin})")
    if lr is not None:
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, lr=lr))
    return _optimise(model, ctx, steps, params, train_aux=False)


@dataclass(frozen=True)
class Train(Recipe):
    """Train every parameter from the freshly initialised model for ``[train] steps``."""

    def identity(self) -> dict[str, Any]:
        return {"recipe": "train"}

    def columns(self) -> dict[str, Any]:
        return {"mode": "train", "origin": "", "interp_weight": None}

    def steps(self, config: TrainConfig) -> int:
        return config.steps

    def produce(self, model: Backbone, ctx: Context) -> Outcome:
        return _optimise(model, ctx, ctx.config.steps, None, train_aux=True)


@dataclass(frozen=True)
class Refine(Recipe):
    """Start from an anchor's trained weights; train only the quantizers for ``steps``.

    The backbone and the entropy model's auxiliary parameters stay frozen, so
    every derived model shares the anchor's transforms (STanH's protocol,
    Presta et al. 2024). ``origin`` names the anchor (``label@lambda``); ``lr``
    (``refine_lr`` in the matrix) replaces ``[train] lr`` for these steps.
    ``backbone_only``: the anchor was trained with another quantizer; load its
    backbone and keep this model's freshly initialised quantizer.
    """

    anchor: str
    refine_steps: int
    origin: str
    lr: float | None = None
    backbone_only: bool = False

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.anchor,)

    def identity(self) -> dict[str, Any]:
        out = {"recipe": "refine", "anchor": self.anchor, "steps": self.refine_steps}
        if self.lr is not None:
            out["lr"] = self.lr
        if self.backbone_only:
            out["backbone_only"] = True
        return out

    def columns(self) -> dict[str, Any]:
        return {"mode": "refine", "origin": self.origin, "interp_weight": None}

    def steps(self, config: TrainConfig) -> int:
        return self.refine_steps

    def produce(self, model: Backbone, ctx: Context) -> Outcome:
        state = ctx.source_weights(self.anchor)
        if self.backbone_only:  # an anchor of another quantizer: its backbone, our quantizer
            own = model.state_dict()
            state = {k: v for k, v in state.items() if not k.startswith("quantizers.") and k in own}
            state.update({k: v for k, v in own.items() if k.startswith("quantizers.")})
        model.load_state_dict(state)
        return _refine_quantizers(model, ctx, self.refine_steps, self.lr, self.origin)


@dataclass(frozen=True)
class RefineBackbone(Recipe):
    """Refine only the quantizers of the backbone as built (its own weights are the anchor).

    For a backbone that starts from pretrained weights (``pretrained = Q``,
    ``checkpoint = FILE``): the quantizers are inserted into the fixed-rate
    model and only they are trained, for ``refine_steps`` (``from_anchor =
    "backbone"`` in a matrix; STanH's protocol on a pretrained model). The
    backbone and the auxiliary parameters stay frozen. ``origin`` names the
    backbone.
    """

    refine_steps: int
    origin: str
    lr: float | None = None

    def identity(self) -> dict[str, Any]:
        out = {"recipe": "refine", "anchor": "backbone", "steps": self.refine_steps}
        if self.lr is not None:
            out["lr"] = self.lr
        return out

    def columns(self) -> dict[str, Any]:
        return {"mode": "refine", "origin": self.origin, "interp_weight": None}

    def steps(self, config: TrainConfig) -> int:
        return self.refine_steps

    def produce(self, model: Backbone, ctx: Context) -> Outcome:
        return _refine_quantizers(model, ctx, self.refine_steps, self.lr, self.origin)


@dataclass(frozen=True)
class Blend(Recipe):
    """``(1 - weight) * first + weight * second`` of two refined models' quantizers.

    The backbone weights are the first source's (both derive from one anchor);
    each quantizer blends through ``Quantizer.interpolate``. No training.
    """

    first: str
    second: str
    weight: float
    origin: str

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.first, self.second)

    def identity(self) -> dict[str, Any]:
        return {"recipe": "blend", "sources": [self.first, self.second], "a": self.weight}

    def columns(self) -> dict[str, Any]:
        return {"mode": "interpolate", "origin": self.origin, "interp_weight": self.weight}

    def produce(self, model: Backbone, ctx: Context) -> Outcome:
        model.load_state_dict(ctx.source_weights(self.first))
        other = ctx.build_model()
        other.load_state_dict(ctx.source_weights(self.second))
        for name, q in model.quantizers.items():
            q.interpolate(other.quantizers[name], self.weight)
        return Outcome("ok", 0, 0.0)
