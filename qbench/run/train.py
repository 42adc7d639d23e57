"""One job's training loop: the standard learned-image-compression recipe.

* random ``crop x crop`` patches of the training images (images smaller than
  the crop are padded by replicating their edge pixels), ``batch_size`` per
  step, drawn from a generator seeded by the job's seed;
* loss ``lambda * 255^2 * MSE + bpp`` (:func:`qbench.rd.rd_loss`, CompressAI's
  ``RateDistortionLoss`` convention),
  Adam on the main parameters (quantizer parameters included) with ``lr``,
  a separate Adam on CompressAI's auxiliary (quantile) loss with ``aux_lr``;
* gradient clipping to ``clip_max_norm`` (0 disables);
* ``set_progress(step / steps)`` on every quantizer before each step and
  ``end_step()`` after it;
* every ``log_every`` steps the step's loss, bpp and mse go to the history;
* at the schedule's probe steps (``probe_steps``; ``steps`` itself is the
  final state, after ``set_progress(1.0)``) ``on_probe(step)`` measures the
  schedule statistics; the probes run under a forked RNG and restore every
  mode they change, so recording statistics changes no trained weight;
* a loss that is NaN or infinite stops the job as ``diverged`` at that step.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qbench.backbone import Backbone
from qbench.plan.configs import AMP_MODES, TrainConfig
from qbench.rd import rd_loss
from qbench.registry import reason
from qbench.run.resume import rng_state, set_aside, set_rng_state
from qbench.snapshots import Snapshots

#: the autocast dtype of each ``[train] amp`` mode (float32 when absent)
AMP_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}
assert tuple(AMP_DTYPES) == AMP_MODES


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CropSampler:
    """Random ``crop x crop`` patches from uint8 images, reproducible from a seed.

    The crop positions come from a CPU generator seeded by ``seed``, so the
    crops are the same on every device. With a CUDA ``device`` the images are
    moved there once (when they take at most :data:`DEVICE_IMAGE_BYTES`) and
    every batch is cut, stacked and scaled on the GPU: no host-to-device
    copy per step to keep the GPU waiting; larger sets stay in pinned host
    memory and are copied asynchronously.
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        crop: int,
        seed: int,
        device: torch.device | str | None = None,
    ) -> None:
        self.crop = crop
        self.images = []
        for i, img in enumerate(images):
            h, w = img.shape[-2:]
            if h < crop or w < crop:
                warnings.warn(
                    f"training image {i} is {w}x{h}, smaller than the {crop}px crop: padded",
                    stacklevel=2,
                )
                ph, pw = max(0, crop - h), max(0, crop - w)
                img = F.pad(img[None].float(), (0, pw, 0, ph), mode="replicate")[0].to(img.dtype)
            self.images.append(img)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda":
            total = sum(img.numel() * img.element_size() for img in self.images)
            if total <= DEVICE_IMAGE_BYTES:
                self.images = [img.to(self.device) for img in self.images]
            else:
                self.images = [img.pin_memory() for img in self.images]
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> Tensor:
        return self.sourced_batch(n)[0]

    def sourced_batch(self, n: int) -> tuple[Tensor, list[int]]:
        """A batch of ``n`` crops and the index of the image each came from (the same
        random draws as :meth:`batch`)."""
        out, sources = [], []
        for _ in range(n):
            i = int(torch.randint(len(self.images), (1,), generator=self.gen))
            sources.append(i)
            img = self.images[i]
            h, w = img.shape[-2:]
            top = int(torch.randint(h - self.crop + 1, (1,), generator=self.gen))
            left = int(torch.randint(w - self.crop + 1, (1,), generator=self.gen))
            out.append(img[:, top : top + self.crop, left : left + self.crop])
        return torch.stack(out).to(self.device, non_blocking=True).float().div_(255.0), sources


#: training images up to this size (uint8 bytes) are kept on the GPU (see CropSampler)
DEVICE_IMAGE_BYTES = 2 * 1024**3


@dataclass
class Outcome:
    """How a job's weights came to be: the one shape of a training outcome.

    Saved beside every checkpoint and copied into the job's rows.

    Attributes:
        status: ``"ok"`` or ``"diverged"`` (a NaN or infinite loss).
        reason: why, when not ok.
        steps: optimisation steps taken.
        seconds: wall time of those steps (the probes' time not included).
        trained_parameters: how many parameters the optimizer updated.
        history: the training loss, bpp and mse recorded every ``log_every`` steps.
        final: the last step's loss, bpp and mse.
        schedule: the schedule statistics, one record per probe point
            (``progress``, ``step`` and each statistic's estimate).
        probe_settings: the ``[eval]`` settings the schedule was measured with.
    """

    status: str
    steps: int
    seconds: float
    reason: str = ""
    trained_parameters: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    schedule: list[dict[str, Any]] = field(default_factory=list)
    probe_settings: dict[str, Any] = field(default_factory=dict)

    def followed_by(self, later: Outcome) -> Outcome:
        """This training and a ``later`` one of the same model as one outcome: steps and
        seconds added, the later history's steps counted on from this one's, the later
        final values and status (its reason), this one's schedule statistics; the trained
        parameters are the first phase's (every one that trained)."""
        shifted = [{**r, "step": r["step"] + self.steps} for r in later.history if "step" in r]
        return Outcome(
            later.status,
            self.steps + later.steps,
            self.seconds + later.seconds,
            later.reason,
            trained_parameters=self.trained_parameters,
            history=self.history + shifted,
            final=later.final,
            schedule=self.schedule,
            probe_settings=self.probe_settings,
        )


@dataclass
class TrainHooks:
    """What watches a training without changing it (all optional).

    Attributes:
        on_step: ``(step, stats)`` after every step (progress, heartbeat).
        on_log: ``(step, record)`` with each history record (every
            ``[train] log_every`` steps): the live monitoring.
        probe_steps, on_probe: ``on_probe(step)`` returns the schedule record
            of each step in ``probe_steps``; it must not change the training
            (its own batches and RNG stream, every mode restored).
        snapshots: with them the training continues from the newest usable
            snapshot and writes new ones as their policy says
            (:mod:`qbench.snapshots`).
    """

    on_step: Callable[[int, dict[str, float]], None] | None = None
    on_log: Callable[[int, dict[str, float]], None] | None = None
    probe_steps: Collection[int] = ()
    on_probe: Callable[[int], dict[str, Any]] | None = None
    snapshots: Snapshots | None = None


def train(
    model: Backbone,
    sampler: CropSampler,
    config: TrainConfig,
    hooks: TrainHooks | None = None,
    *,
    lmbda: float,
    parameters: Sequence[torch.nn.Parameter] | None = None,
    train_aux: bool = True,
    hard: bool = False,
) -> Outcome:
    """Train ``model`` in place for ``config.steps`` steps; see the module docstring.

    The batch size, learning rates, clipping and mixed precision are the
    config's; the device is the sampler's. ``parameters`` restricts the main
    optimizer (e.g. STanH refinement trains only the quantizer) and
    ``train_aux=False`` freezes the auxiliary parameters too; by default
    every parameter trains. ``amp`` (``"bf16"``, ``"fp16"``) runs the
    transforms under autocast; the quantizers, the likelihoods and the loss
    stay in float32. ``hard``: the quantizers stay in eval mode, so the model trains
    through their test-time quantization (hard values for the rate and the synthesis;
    soft-then-hard's second phase).
    """
    hooks = hooks or TrainHooks()
    return _Loop(model, sampler, config, hooks, lmbda, parameters, train_aux, hard).run()


class _Loop:
    """One training's optimisers, records and clock (the body of :func:`train`)."""

    def __init__(self, model, sampler, config, hooks, lmbda, parameters, train_aux, hard) -> None:
        self.model, self.sampler, self.config, self.hooks = model, sampler, config, hooks
        self.lmbda = lmbda
        self.device = torch.device(sampler.device)
        model.to(self.device).train()
        if hard:  # the test-time quantization in training (soft-then-hard's second phase)
            model.quantizers.eval()
        params = list(parameters) if parameters is not None else list(model.main_parameters())
        trainable = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        aux = [p for p in model.aux_parameters() if id(p) not in trainable] if train_aux else []
        for p in aux:
            p.requires_grad_(True)
        self.params = params
        self.n_trained = sum(p.numel() for p in params)
        self.opt = torch.optim.Adam(params, lr=config.lr)
        self.aux_opt = torch.optim.Adam(aux, lr=config.aux_lr) if aux else None
        self.dtype = AMP_DTYPES[config.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.stats: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.schedule: list[dict[str, Any]] = []
        self.probe_steps = set(hooks.probe_steps) if hooks.on_probe is not None else set()
        self.first, self.spent = 0, 0.0
        self.start = self.probe_seconds = 0.0

    def restore(self) -> None:
        """Continue from the newest usable snapshot, if any.

        A snapshot that loads but cannot be applied (a key missing, a value of the wrong
        kind) is set aside (:func:`qbench.run.resume.set_aside`) and the training starts
        fresh from the state it had before, as for a snapshot that does not load; the
        row's ``resumed`` says so."""
        snapshots = self.hooks.snapshots
        restored = snapshots.load(self.config.steps) if snapshots is not None else None
        if restored is None:
            return
        fresh = self._state()
        try:
            self._apply(restored)
        except Exception as exc:
            self._apply(fresh)
            kept = set_aside(snapshots.paths())
            step = restored.get("step") if isinstance(restored, dict) else None
            snapshots.resumed = (
                f"fresh start (the snapshot of step {step} is unusable: {reason(exc, 200)}; "
                f"set aside as {', '.join(kept) or 'nothing'})"
            )

    def _state(self) -> dict[str, Any]:
        """Everything :meth:`_apply` sets, as it is now (a fresh start's state)."""
        return {
            "step": self.first,
            "seconds": self.spent,
            "stats": dict(self.stats),
            "model": copy.deepcopy(self.model.state_dict()),
            "opt": copy.deepcopy(self.opt.state_dict()),
            "aux_opt": copy.deepcopy(self.aux_opt.state_dict()) if self.aux_opt else {},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "sampler": self.sampler.gen.get_state(),
            "history": json.dumps(self.history),
            "schedule": json.dumps(self.schedule, default=_plain),
            "rng": rng_state(),
        }

    def _apply(self, restored: dict[str, Any]) -> None:
        """Set the training's state from a snapshot (or from :meth:`_state`)."""
        step, seconds, stats = restored["step"], restored["seconds"], restored["stats"]
        if not (isinstance(step, int) and 0 <= step <= self.config.steps):
            raise ValueError(f"its step {step!r} is not one of this training's")
        if not isinstance(seconds, (int, float)) or not isinstance(stats, dict):
            raise ValueError("its seconds or stats are of the wrong kind")
        history, schedule = json.loads(restored["history"]), json.loads(restored["schedule"])
        if not isinstance(history, list) or not isinstance(schedule, list):
            raise ValueError("its history or schedule is not a list")
        self.model.load_state_dict(restored["model"])
        self.opt.load_state_dict(restored["opt"])
        if self.aux_opt is not None:
            self.aux_opt.load_state_dict(restored["aux_opt"])
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(restored["scaler"])
        self.sampler.gen.set_state(restored["sampler"])
        self.first, self.spent, self.stats = step, float(seconds), stats
        self.history, self.schedule = history, schedule
        set_rng_state(restored["rng"])  # last: loading above draws nothing, but be sure

    def seconds(self) -> float:
        """Training seconds so far (probes and snapshot writing not counted)."""
        return self.spent + time.perf_counter() - self.start - self.probe_seconds

    def outcome(self, status: str, done: int, reason: str = "") -> Outcome:
        return Outcome(
            status,
            done,
            self.seconds(),
            reason,
            trained_parameters=self.n_trained,
            history=self.history,
            final=self.stats if status == "ok" else {},
            schedule=self.schedule,
        )

    def run(self) -> Outcome:
        steps = self.config.steps
        self.restore()
        self.start = time.perf_counter()
        for step in range(self.first, steps):
            self.model.set_progress(step / steps)
            if step in self.probe_steps:
                self.probe(step)
            loss_value = self.step()
            if not math.isfinite(loss_value):
                return self.outcome("diverged", step, f"loss became {loss_value} at step {step}")
            self.record(step)
            self.snapshot(step + 1)
        done = self.outcome("ok", steps)
        self.model.set_progress(1.0)
        if steps in self.probe_steps:
            self.schedule.append(self.hooks.on_probe(steps))
        for p in self.model.parameters():
            p.requires_grad_(True)
        return done

    def probe(self, step: int) -> None:
        probe_start = time.perf_counter()
        self.schedule.append(self.hooks.on_probe(step))
        self.probe_seconds += time.perf_counter() - probe_start

    def step(self) -> float:
        """One optimisation step (and the auxiliary one); the loss, or a non-finite value."""
        model, opt, scaler = self.model, self.opt, self.scaler
        x = self.sampler.batch(self.config.batch_size).to(self.device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = model(x)
        out = {**out, "x_hat": out["x_hat"].float()}
        loss, bpp, mse = rd_loss(out, x, self.lmbda)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            return loss_value
        scaler.scale(loss).backward()
        if self.config.clip_max_norm > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_max_norm)
        scaler.step(opt)
        scaler.update()
        if self.aux_opt is not None:
            self.aux_opt.zero_grad(set_to_none=True)
            model.aux_loss().backward()
            self.aux_opt.step()
        model.end_step()
        self.stats = {"loss": loss_value, "bpp": float(bpp.detach()), "mse": float(mse.detach())}
        return loss_value

    def record(self, step: int) -> None:
        """Progress after ``step``; the history every ``log_every`` steps and at the end."""
        steps, log_every = self.config.steps, self.config.log_every
        if self.hooks.on_step is not None:
            self.hooks.on_step(step + 1, self.stats)
        if log_every > 0 and (step % log_every == 0 or step == steps - 1):
            record = {"step": step + 1, "progress": (step + 1) / steps, **self.stats}
            self.history.append(record)
            if self.hooks.on_log is not None:
                self.hooks.on_log(step + 1, record)

    def snapshot(self, done: int) -> None:
        """A resumable snapshot after ``done`` steps, when the policy says one is due."""
        snapshots, steps = self.hooks.snapshots, self.config.steps
        if snapshots is None or not snapshots.policy.due(
            done, steps, time.monotonic() - snapshots.last_saved
        ):
            return
        snap_start = time.perf_counter()
        state = {
            "steps": steps,
            "step": done,
            "seconds": self.spent + snap_start - self.start - self.probe_seconds,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "aux_opt": self.aux_opt.state_dict() if self.aux_opt is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "sampler": self.sampler.gen.get_state(),
            "stats": self.stats,
            "history": json.dumps(self.history),
            "schedule": json.dumps(self.schedule, default=_plain),
            "rng": rng_state(),
        }
        snapshots.save(done, state)
        self.probe_seconds += time.perf_counter() - snap_start  # writing is not training


def _plain(obj: Any) -> Any:
    """JSON for the few non-JSON values a schedule record may hold (infinities as strings)."""
    return str(obj)
