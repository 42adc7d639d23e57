"""Producing a job's weights: the run wing's side of the recipes.

A recipe (:mod:`qbench.plan.recipes`) says what to do with a freshly built
model; :class:`Context` is the :class:`~qbench.plan.recipes.Production` it
says it with: train everything, refine the quantizers, load a finished
group's weights, build another model. The worker makes one per train group
with its probes, logs and snapshots attached.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qbench.backbone import Backbone
from qbench.plan.configs import TrainConfig
from qbench.plan.jobs import Job
from qbench.registry import QbenchError, reason
from qbench.results import RunDir
from qbench.run.resume import set_aside
from qbench.run.train import CropSampler, Outcome, TrainHooks, train
from qbench.snapshots import Snapshots


@dataclass
class Context:
    """The :class:`~qbench.plan.recipes.Production` of one train group (made by the worker).

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

    def train_all(self, model: Backbone, steps: int) -> Outcome:
        """Train every parameter of ``model`` (the auxiliary ones too) for ``steps``."""
        return self._optimise(model, steps, None, train_aux=True)

    def refine_quantizers(
        self, model: Backbone, steps: int, lr: float | None, origin: str
    ) -> Outcome:
        """Train only the quantizers' parameters of ``model`` as it stands; ``lr`` replaces
        ``[train] lr`` (a quantizer's few parameters may need their own rate)."""
        params = list(model.quantizer_parameters())
        if not params:
            raise QbenchError(f"the quantizer has no trainable parameters to refine ({origin})")
        return self._optimise(model, steps, params, train_aux=False, lr=lr)

    def train_hard(self, model: Backbone, steps: int, frozen: Sequence[str]) -> Outcome:
        """Train ``model`` through its quantizers' test-time quantization for ``steps``,
        every parameter but the ``frozen`` ones (``Backbone.parameters_by_name``) and the
        quantizers' own (soft-then-hard's second phase, Guo et al. 2021). Its snapshots
        are a phase of their own, cleared when it ends."""
        fixed = {id(p) for p in model.parameters_by_name(frozen)}
        fixed |= {id(p) for p in model.quantizer_parameters()}
        params = [p for p in model.main_parameters() if id(p) not in fixed]
        phase = self.snapshots.phase("hard") if self.snapshots is not None else None
        outcome = self._optimise(model, steps, params, train_aux=True, hard=True, snapshots=phase)
        if phase is not None and outcome.status == "ok":
            phase.clear()
        return outcome

    def untrained(self) -> Outcome:
        """The outcome of weights made without training (a blend)."""
        return Outcome("ok", 0, 0.0)

    def _optimise(
        self,
        model: Backbone,
        steps: int,
        parameters: list | None,
        train_aux: bool,
        lr: float | None = None,
        hard: bool = False,
        snapshots: Snapshots | None = None,
    ) -> Outcome:
        """The training loop with this group's probes, logs and snapshots attached (a hard
        phase: no probes, the snapshots given)."""
        config = dataclasses.replace(self.config, steps=steps)
        if lr is not None:
            config = dataclasses.replace(config, lr=lr)
        sampler = CropSampler(self.train_images(), config.crop, self.seed, self.device)
        probing = self.probe is not None and not hard
        probe_steps, measure = self.probe(model, steps) if probing else ([], None)
        snapshots = snapshots if hard else self.snapshots
        hooks = TrainHooks(self.on_step, self.on_log, probe_steps, measure, snapshots)
        return train(
            model,
            sampler,
            config,
            hooks,
            lmbda=self.lmbda,
            parameters=parameters,
            train_aux=train_aux,
            hard=hard,
        )


def source_weights(run_dir: RunDir, train_id: str) -> dict[str, Any]:
    """The state dict of the finished train group ``train_id`` (a recipe's source)."""
    cached = run_dir.load_checkpoint(train_id)
    if cached is None:
        raise QbenchError(
            f"this job starts from the model of train group {train_id}, which did not finish "
            "(see its row)"
        )
    return cached[0]


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


def _use_checkpoint(
    model: Backbone, run_dir: RunDir, train_id: str, state: Any, meta: Any
) -> tuple[tuple[Outcome, str] | None, str]:
    """Load a finished checkpoint into ``model``: ``((outcome, resumed), "")``; or, when it
    loads but cannot be used (its record has keys an outcome does not, its weights do
    not fit the model), ``(None, why)``: the model is put back as it was, the checkpoint
    is set aside (:func:`qbench.run.resume.set_aside`) and the group is produced again."""
    before = copy.deepcopy(model.state_dict())
    try:
        if not isinstance(meta, dict):
            raise ValueError("its record is not a JSON object")
        meta = dict(meta)
        resumed = meta.pop("resumed", "")
        outcome = Outcome(**meta)
        if not isinstance(resumed, str) or not isinstance(outcome.status, str):
            raise ValueError("its record has values of the wrong kind")
        model.load_state_dict(state)
        return (outcome, resumed), ""
    except Exception as exc:
        model.load_state_dict(before)
        kept = set_aside([run_dir.checkpoint_path(train_id), run_dir.ckpt_dir / f"{train_id}.json"])
        return None, (
            f"the trained checkpoint was unusable ({reason(exc)[:160]}; set aside as "
            f"{', '.join(kept)}): produced again"
        )


def load_or_produce(
    job: Job, model: Backbone, run_dir: RunDir, context: Callable[[], Context]
) -> tuple[Outcome, str]:
    """Put the train group's weights into ``model``; ``(outcome, resumed)``.

    The group's finished checkpoint is loaded when a killed run already
    produced it; otherwise the job's recipe produces the weights with the
    :class:`Context` that ``context()`` makes, and they are saved (with the
    outcome beside them) and the group's snapshots removed. ``resumed`` says
    what the production continued from, for the row.
    """
    cached, unreadable = _cached_weights(run_dir, job.train_id)
    if cached is not None:
        used, unreadable = _use_checkpoint(model, run_dir, job.train_id, *cached)
        if used is not None:
            return used
    ctx = context()
    outcome = job.recipe.produce(model, ctx)
    outcome.probe_settings = job.eval.probe_settings()
    snapshots = ctx.snapshots
    resumed = "; ".join(x for x in (unreadable, snapshots.resumed if snapshots else "") if x)
    if outcome.status == "ok":
        meta = {**dataclasses.asdict(outcome), "resumed": resumed}
        run_dir.save_checkpoint(job.train_id, model.state_dict(), meta)
        if snapshots is not None:
            snapshots.clear()
    return outcome, resumed
