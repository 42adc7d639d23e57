"""Where a job's weights come from: recipes, as data.

Every job carries one :class:`Recipe`. The built-in recipes are the five ways a
matrix can ask for weights:

* :class:`Train`: train backbone and quantizers from scratch (the ordinary job);
* :class:`SoftThenHard`: train with the surrogate, then the synthesis and entropy
  model through the test-time quantization with the analysis frozen
  (``soft_then_hard`` in a matrix);
* :class:`Refine`: load an anchor's trained weights, freeze the backbone and the
  auxiliary parameters, and train only the quantizers for a few steps (a
  *derived* model of the variable-rate protocol; ``from_anchor`` in a matrix);
* :class:`RefineBackbone`: train only the quantizers of the backbone as built,
  whose own weights (pretrained or from a checkpoint) are the anchor
  (``from_anchor = "backbone"``);
* :class:`Blend`: load two refined models and blend their quantizers with
  ``Quantizer.interpolate``, no training (``interpolate`` in a matrix).

A recipe is data: its :meth:`~Recipe.identity` is part of the job id, its
:attr:`~Recipe.role` tells the report what kind of point the job's row is,
and its :attr:`~Recipe.origin` names the trained model it starts from as a
structured :class:`Origin` (a label and lambdas, never a string to parse).
:meth:`Recipe.produce` says what to do with a freshly built model in terms of
the :class:`Production` that the run wing hands it (train everything, refine
the quantizers, load a source's weights), so this module needs neither torch
nor the training loop. A recipe that starts from other trained models names
their train ids in ``sources``, so the runner schedules those first. Adding a
recipe is one class here (and, for a matrix key, its derivation in
:mod:`qbench.plan.expand`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from qbench.registry import QbenchError

if TYPE_CHECKING:
    from qbench.plan.configs import TrainConfig


@dataclass(frozen=True)
class Role:
    """What kind of point a recipe's rows are, for tables and plots.

    Attributes:
        mode: the value of the row's ``mode`` column (how old runs name it too).
        noun: how the report names such points ("trained", "derived", "interpolated").
        derived: the weights derive from another job's model (variable-rate points).
        refined: the derived weights were refined by training (not a blend).
        extends_anchor: the points belong to the variable-rate method of their
            anchor (a blend of a derived label's models), instead of starting one.
        meaning: what such points are, one clause after "*<noun>* points" (the
            report's variable-rate section explains each derived role with it).
        marker, linestyle, filled: how plots draw such points (``linestyle``
            ``"none"``: points only; ``filled`` false: hollow markers).
    """

    mode: str
    noun: str
    derived: bool = False
    refined: bool = False
    extends_anchor: bool = False
    meaning: str = ""
    marker: str = "o"
    linestyle: str = "-"
    filled: bool = True


@dataclass(frozen=True)
class Origin:
    """The trained model(s) a derived job starts from.

    ``label`` is the quantizer label of the anchor entry (or the backbone's
    label when the backbone's own weights are the anchor: then ``lambdas`` is
    empty); ``lambdas`` the anchor's lambda, or the two lambdas a blend sits
    between. :meth:`text` is the ``origin`` column of the row.
    """

    label: str
    lambdas: tuple[float, ...] = ()

    def text(self) -> str:
        if not self.lambdas:
            return self.label
        return f"{self.label}@{'-'.join(f'{lam:g}' for lam in self.lambdas)}"

    def columns(self) -> dict[str, Any]:
        """The row's ``origin`` (display) and the structured ``anchor``/``anchor_lambda``."""
        return {
            "origin": self.text(),
            "anchor": self.label,
            "anchor_lambda": self.lambdas[0] if len(self.lambdas) == 1 else None,
        }


class Production(Protocol):
    """What the run wing offers a recipe to produce weights with (:mod:`qbench.run.weights`)."""

    #: the matrix's ``[train]`` settings
    config: TrainConfig

    def train_all(self, model: Any, steps: int) -> Any:
        """Train every parameter of ``model`` (and the auxiliary ones) for ``steps``."""

    def refine_quantizers(self, model: Any, steps: int, lr: float | None, origin: str) -> Any:
        """Train only ``model``'s quantizer parameters for ``steps`` (at ``lr`` if given)."""

    def train_hard(self, model: Any, steps: int, frozen: tuple[str, ...]) -> Any:
        """Train ``model`` through its quantizers' test-time quantization for ``steps``,
        all but the ``frozen`` parameters ("analysis", or module paths) and the quantizers'."""

    def source_weights(self, train_id: str) -> dict[str, Any]:
        """The state dict of the finished train group ``train_id``."""

    def build_model(self) -> Any:
        """A fresh model of the job."""

    def untrained(self) -> Any:
        """The outcome of weights produced without training."""


class Recipe:
    """How a job's weights are produced (see the module docstring)."""

    #: what kind of point the rows are
    role: ClassVar[Role]
    #: train ids of the models this recipe starts from (they must finish first)
    sources: tuple[str, ...] = ()
    #: the trained model this recipe starts from (None: from scratch)
    origin: Origin | None = None
    #: the blending weight of an interpolated model (None: not a blend)
    weight: float | None = None

    def identity(self) -> dict[str, Any]:
        """Everything about the recipe that changes the weights (part of the job id)."""
        raise NotImplementedError

    def columns(self) -> dict[str, Any]:
        """Columns this recipe adds to a job's row."""
        origin = (self.origin or Origin("")).columns()
        return {"mode": self.role.mode, **origin, "interp_weight": self.weight}

    def steps(self, config: TrainConfig) -> int:
        """Optimisation steps this recipe takes (for progress bars and summaries)."""
        return 0

    def produce(self, model: Any, ctx: Production) -> Any:
        """Turn the freshly built ``model`` into the job's weights, in place; the outcome."""
        raise NotImplementedError

    def check(self, model: Any) -> None:
        """Raise a ``QbenchError`` if this recipe cannot produce weights for ``model``
        (a freshly built backbone; called before any job). Default: nothing to check."""


TRAINED = Role("train", "trained")
DERIVED = Role(
    "refine",
    "derived",
    derived=True,
    refined=True,
    meaning="refine only the quantizer's parameters at each lambda (backbone frozen)",
)
INTERPOLATED = Role(
    "interpolate",
    "interpolated",
    derived=True,
    extends_anchor=True,
    meaning="blend two derived quantizers without training",
    linestyle="none",
    filled=False,
)


@dataclass(frozen=True)
class Train(Recipe):
    """Train every parameter from the freshly initialised model for ``[train] steps``."""

    role: ClassVar[Role] = TRAINED

    def identity(self) -> dict[str, Any]:
        return {"recipe": "train"}

    def steps(self, config: TrainConfig) -> int:
        return config.steps

    def produce(self, model: Any, ctx: Production) -> Any:
        return ctx.train_all(model, ctx.config.steps)


@dataclass(frozen=True)
class SoftThenHard(Recipe):
    """Guo et al.'s two phases ("Soft then Hard: Rethinking the Quantization in Neural
    Image Compression", ICML 2021, arXiv 2104.05168): train every parameter with the
    entry's surrogate for ``[train] steps - hard_steps`` steps, then freeze the
    ``frozen`` parameters (default the analysis transform) and train the rest for
    ``hard_steps`` through the quantizers' test-time quantization, so that the
    synthesis and the entropy model see exactly the latents they will decode.
    """

    role: ClassVar[Role] = TRAINED
    hard_steps: int
    frozen: tuple[str, ...] = ("analysis",)

    def identity(self) -> dict[str, Any]:
        return {"recipe": "soft-then-hard", "hard_steps": self.hard_steps, "frozen": self.frozen}

    def steps(self, config: TrainConfig) -> int:
        return config.steps

    def produce(self, model: Any, ctx: Production) -> Any:
        soft = ctx.train_all(model, ctx.config.steps - self.hard_steps)
        if soft.status != "ok":
            return soft
        hard = ctx.train_hard(model, self.hard_steps, self.frozen)
        return soft.followed_by(hard)

    def check(self, model: Any) -> None:
        try:
            model.parameters_by_name(self.frozen)
        except QbenchError as exc:
            raise QbenchError(f"soft_then_hard.frozen: {exc}") from exc


@dataclass(frozen=True)
class Refine(Recipe):
    """Start from an anchor's trained weights; train only the quantizers for ``steps``.

    The backbone and the entropy model's auxiliary parameters stay frozen, so
    every derived model shares the anchor's transforms (STanH's protocol,
    Presta et al. 2024). ``origin`` names the anchor (its label and lambda);
    ``lr`` (``refine_lr`` in the matrix) replaces ``[train] lr`` for these
    steps. ``backbone_only``: the anchor was trained with another quantizer;
    load its backbone and keep this model's freshly initialised quantizer.
    ``reset`` (``refine_reset`` in the matrix): names of the quantizers' state
    (``"beta"``) put back to their fresh values after the anchor is loaded, so the
    refinement restarts that annealing (STanH's authors reset beta to 10 when they
    derive a rate).
    """

    role: ClassVar[Role] = DERIVED
    anchor: str
    refine_steps: int
    origin: Origin
    lr: float | None = None
    backbone_only: bool = False
    reset: tuple[str, ...] = ()

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.anchor,)

    def identity(self) -> dict[str, Any]:
        out = {"recipe": "refine", "anchor": self.anchor, "steps": self.refine_steps}
        if self.lr is not None:
            out["lr"] = self.lr
        if self.backbone_only:
            out["backbone_only"] = True
        if self.reset:
            out["reset"] = list(self.reset)
        return out

    def steps(self, config: TrainConfig) -> int:
        return self.refine_steps

    def produce(self, model: Any, ctx: Production) -> Any:
        state = ctx.source_weights(self.anchor)
        own = model.state_dict()
        if self.backbone_only:  # an anchor of another quantizer: its backbone, our quantizer
            state = {k: v for k, v in state.items() if not k.startswith("quantizers.") and k in own}
            state.update({k: v for k, v in own.items() if k.startswith("quantizers.")})
        fresh = {k: own[k].clone() for k in self._reset_keys(own)}
        model.load_state_dict({**state, **fresh})
        return ctx.refine_quantizers(model, self.refine_steps, self.lr, self.origin.text())

    def _reset_keys(self, state: dict[str, Any]) -> list[str]:
        """The keys of the quantizers' state named by ``reset`` (the last part of a key)."""
        return [
            k for k in state if k.startswith("quantizers.") and k.rsplit(".", 1)[-1] in self.reset
        ]

    def check(self, model: Any) -> None:
        state = model.state_dict()
        found = {k.rsplit(".", 1)[-1] for k in self._reset_keys(state)}
        missing = [name for name in self.reset if name not in found]
        if missing:
            names = sorted({k.rsplit(".", 1)[-1] for k in state if k.startswith("quantizers.")})
            raise QbenchError(
                f"refine_reset: {missing[0]!r} is no state of the quantizers (they have: "
                f"{', '.join(names) or 'none'})"
            )


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

    role: ClassVar[Role] = DERIVED
    refine_steps: int
    origin: Origin
    lr: float | None = None

    def identity(self) -> dict[str, Any]:
        out = {"recipe": "refine", "anchor": "backbone", "steps": self.refine_steps}
        if self.lr is not None:
            out["lr"] = self.lr
        return out

    def steps(self, config: TrainConfig) -> int:
        return self.refine_steps

    def produce(self, model: Any, ctx: Production) -> Any:
        return ctx.refine_quantizers(model, self.refine_steps, self.lr, self.origin.text())


@dataclass(frozen=True)
class Blend(Recipe):
    """``(1 - weight) * first + weight * second`` of two refined models' quantizers.

    The backbone weights are the first source's (both derive from one anchor);
    each quantizer blends through ``Quantizer.interpolate``. No training.
    """

    role: ClassVar[Role] = INTERPOLATED
    first: str
    second: str
    weight: float
    origin: Origin

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.first, self.second)

    def identity(self) -> dict[str, Any]:
        return {"recipe": "blend", "sources": [self.first, self.second], "a": self.weight}

    def produce(self, model: Any, ctx: Production) -> Any:
        model.load_state_dict(ctx.source_weights(self.first))
        other = ctx.build_model()
        other.load_state_dict(ctx.source_weights(self.second))
        for name, q in model.quantizers.items():
            q.interpolate(other.quantizers[name], self.weight)
        return ctx.untrained()


#: every role by the ``mode`` column of a row (for reading run directories)
ROLES: dict[str, Role] = {r.mode: r for r in (TRAINED, DERIVED, INTERPOLATED)}


def role_of(mode: str) -> Role:
    """The :class:`Role` of a row's ``mode`` column (a mode no recipe has is an error)."""
    try:
        return ROLES[mode]
    except KeyError:
        raise ValueError(f"mode {mode!r} is no recipe's (known: {', '.join(ROLES)})") from None
