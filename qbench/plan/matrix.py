"""Matrix files: read, check against the registries, expand to jobs.

A matrix (TOML, see DESIGN.md and the README) declares backbones x quantizers x
lambdas x datasets x seeds plus ``[train]``, ``[eval]`` and ``[report]``
sections. Keys a matrix leaves out take their defaults from
``qbench/data/defaults.toml``. ``qbench run --set KEY=VALUE`` overrides a key
before validation, exactly as if the file said it.

Every problem is reported before any job starts, as a :class:`MatrixError`
naming the file and the key path (``matrix.quantizers[3].zero_center``) and
what was expected. The expansion makes one :class:`~qbench.plan.jobs.Job` per cell,
with the :mod:`~qbench.run.weights` recipe that produces its weights:

* a plain quantizer entry trains (:class:`~qbench.run.weights.Train`);
* ``from_anchor = LAMBDA`` (+ ``refine_steps``) derives a model at every lambda
  from the entry with the same quantizer and parameters trained at ``LAMBDA``
  (:class:`~qbench.run.weights.Refine`);
* ``interpolate = { of = LABEL, between = [l1, l2], points = N }`` blends the
  models of ``LABEL`` at ``l1`` and ``l2`` (:class:`~qbench.run.weights.Blend`).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import itertools
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from qbench.plan.configs import EvalConfig, ExecutorConfig, TrainConfig
from qbench.plan.jobs import Job, Spec, fingerprint, make_job, stable_hash
from qbench.reference import check_names
from qbench.registry import QbenchError, Registry, unknown_name_message
from qbench.run.weights import Blend, Refine, RefineBackbone, Train

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = {"name", "matrix", "train", "eval", "report", "monitor", "executor"}
MATRIX_KEYS = {"backbones", "quantizers", "lambdas", "datasets", "seeds", "unlisted_latents"}
#: keys of an entry that qbench reads itself rather than passing to the factory
ENTRY_KEYS = {"name", "label"}
#: keys of a quantizer entry that qbench reads itself (which latents, which recipe)
QUANTIZER_KEYS = ENTRY_KEYS | {"latents", "from_anchor", "refine_steps", "refine_lr", "interpolate"}


#: What a run name may be: it names the folder ``runs/<name>``, so no path.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


class MatrixError(QbenchError):
    """A matrix that cannot run; the message names the file and the key."""


def _safe_name(stem: str) -> str:
    """A default run name from a file stem: characters outside NAME_RE become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip(".-")[:100]
    return name or "matrix"


def default_matrix_path() -> Path:
    """The embedded quick matrix shipped with qbench."""
    return Path(str(resources.files("qbench") / "data" / "quick.toml"))


def defaults() -> dict[str, Any]:
    """The documented defaults of every matrix key (``qbench/data/defaults.toml``)."""
    text = (resources.files("qbench") / "data" / "defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


@dataclass
class Matrix:
    """A validated matrix and its jobs."""

    name: str
    source: str
    raw: dict[str, Any]
    jobs: list[Job]
    train_dataset: Spec
    train: TrainConfig
    eval: EvalConfig
    report: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    loggers: list[Spec] = field(default_factory=list)
    executor: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a run directory records of the matrix it holds: its job set's hash and names."""
        return {
            "id": stable_hash(sorted(j.job_id for j in self.jobs)),
            "name": self.name,
            "source": self.source,
            "jobs": len(self.jobs),
        }

    def resolved(self) -> dict[str, Any]:
        """The matrix as resolved (defaults filled in, overrides applied), for the manifest."""
        return {
            "name": self.name,
            "source": self.source,
            "overrides": self.overrides,
            "train": {"dataset": self.train_dataset.identity(), **asdict(self.train)},
            "eval": asdict(self.eval),
            "report": self.report,
            "monitor": {"loggers": [s.identity() for s in self.loggers]},
            "executor": self.executor,
            "jobs": len(self.jobs),
        }


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def load_matrix(
    path: str | Path | None, registry: Registry, overrides: Sequence[str] = ()
) -> Matrix:
    """Read, validate and expand a matrix file (the embedded quick matrix when ``None``).

    ``overrides`` are ``KEY=VALUE`` strings (``train.steps=200``), applied to
    the file's content before validation; VALUE is read as a TOML value, or as
    a string when it is not one.
    """
    path = default_matrix_path() if path is None else Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MatrixError(f"{source}: cannot read matrix file ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8-sig")  # TOML is UTF-8; a byte-order mark is tolerated
    except UnicodeDecodeError as exc:
        raise MatrixError(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the matrix as UTF-8"
        ) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{source}: malformed TOML: {exc}") from exc
    return parse_matrix(
        raw,
        source,
        registry,
        default_name=path.stem,
        overrides=overrides,
        base_dir=path.resolve().parent,
    )


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """A copy of ``raw`` with each ``KEY.PATH=VALUE`` of ``overrides`` set."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MatrixError(f"{source}: --set {item!r}: expected KEY=VALUE (train.steps=200)")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        table = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                where = ".".join(parts[: i + 1])
                raise MatrixError(f"{source}: --set {item!r}: {where} is not a table")
        table[parts[-1]] = value
    return out


def parse_matrix(
    raw: dict[str, Any],
    source: str,
    registry: Registry,
    default_name: str = "matrix",
    overrides: Sequence[str] = (),
    base_dir: Path | None = None,
) -> Matrix:
    """Validate a parsed TOML document (after ``overrides``) and expand it into jobs.

    Relative paths in entries (the parameters a plugin declares as ``paths``)
    are resolved against ``base_dir``, the matrix file's folder (the working
    directory when ``None``).
    """
    overrides = list(overrides)
    if overrides:
        raw = apply_overrides(raw, overrides, source)
        source = f"{source} (with --set {', '.join(overrides)})"
    base = defaults()
    ck = _Checker(source, registry, base_dir or Path.cwd())
    ck.check_keys(raw, TOP_KEYS, "")
    name = raw.get("name", _safe_name(default_name))
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        ck.fail(
            "name",
            f"expected a run name of letters, digits, '.', '_' and '-' (at most 100, not "
            f"starting with '.' or '-'), got {name!r}; it names the folder runs/<name>",
        )
    if "matrix" not in raw or not isinstance(raw["matrix"], dict):
        ck.fail("matrix", "missing [matrix] table")
    m = raw["matrix"]
    ck.check_keys(m, MATRIX_KEYS, "matrix")
    for key in ("backbones", "quantizers", "lambdas", "datasets"):
        if key not in m:
            ck.fail(f"matrix.{key}", "missing (required)")
    backbones = ck.spec_list("backbone", m["backbones"], "matrix.backbones")
    quantizers = ck.spec_list("quantizer", m["quantizers"], "matrix.quantizers")
    datasets = ck.spec_list("dataset", m["datasets"], "matrix.datasets")
    unlisted = ck.spec(
        "quantizer",
        m.get("unlisted_latents", base["matrix"]["unlisted_latents"]),
        "matrix.unlisted_latents",
        ENTRY_KEYS,
    )
    lambdas = ck.lambdas(m["lambdas"])
    seeds = ck.seeds(m.get("seeds", base["matrix"]["seeds"]))

    train = _section(ck, raw, "train", base["train"])
    train_dataset = ck.spec("dataset", train.pop("dataset"), "train.dataset")
    train_config = TrainConfig.from_table(train, base["train"], ck.failing("train"))
    eval_config = EvalConfig.from_table(
        _section(ck, raw, "eval", base["eval"]), ck.metric_problem, ck.failing("eval")
    )
    report = _section(ck, raw, "report", base["report"])
    labels = [q.label for q in quantizers]
    if report["anchor"] and report["anchor"] not in labels:
        close = difflib.get_close_matches(report["anchor"], labels, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ck.fail("report.anchor", f"{report['anchor']!r} is not a quantizer label{hint}")
    if not report["anchor"]:
        report["anchor"] = labels[0]
    if not 0.0 <= report["min_overlap"] <= 1.0:
        ck.fail("report.min_overlap", f"must lie in [0, 1], got {report['min_overlap']}")
    check_names(
        report["reference_curves"],
        lambda i, msg: ck.fail(f"report.reference_curves[{i}]", msg),
    )

    monitor = _section(ck, raw, "monitor", base["monitor"])
    loggers = (
        tuple(ck.spec_list("logger", monitor["loggers"], "monitor.loggers"))
        if monitor["loggers"]
        else ()
    )
    executor = ExecutorConfig.from_table(
        _section(ck, raw, "executor", base["executor"]), ck.failing("executor")
    ).as_table()

    grid = _Grid(
        ck, backbones, lambdas, datasets, seeds, unlisted, train_dataset, train_config, eval_config
    )
    entries = [
        (i, q, ck.derivation(raw_entry, f"matrix.quantizers[{i}]"))
        for i, (q, raw_entry) in enumerate(zip(quantizers, m["quantizers"]))
    ]
    for stage in (0, 1, 2):  # trained models first, then what derives from them
        for i, q, how in entries:
            if how.stage == stage:
                how.expand(grid, q, f"matrix.quantizers[{i}]")
    jobs = [replace(j, loggers=loggers) for j in grid.jobs] if loggers else grid.jobs
    return Matrix(
        name,
        source,
        raw,
        jobs,
        train_dataset,
        train_config,
        eval_config,
        report,
        overrides,
        list(loggers),
        executor,
    )


# ---------------------------------------------------------------------------
# expansion: one derivation object per kind of quantizer entry
# ---------------------------------------------------------------------------


class _Grid:
    """The matrix's axes, and the jobs expanded so far (by label, lambda and seed)."""

    def __init__(
        self, ck, backbones, lambdas, datasets, seeds, unlisted, train_dataset, train, evaluation
    ) -> None:
        self.ck = ck
        self.backbones, self.lambdas, self.datasets, self.seeds = (
            backbones,
            lambdas,
            datasets,
            seeds,
        )
        self.unlisted, self.train_dataset, self.train = unlisted, train_dataset, train
        self.evaluation = evaluation
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

    def expand(self, grid: _Grid, q: Spec, path: str) -> None:
        grid.plain.append(q)
        for bb, lam, ds, seed in itertools.product(
            grid.backbones, grid.lambdas, grid.datasets, grid.seeds
        ):
            grid.add(bb, q, lam, ds, seed, Train())


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
    stage = 1

    def expand(self, grid: _Grid, q: Spec, path: str) -> None:
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
        origin = f"{anchor_spec.label}@{self.lmbda:g}"
        for bb, lam, ds, seed in itertools.product(
            grid.backbones, grid.lambdas, grid.datasets, grid.seeds
        ):
            anchor = grid.models[(bb.label, anchor_spec.label, self.lmbda, seed)]
            recipe = Refine(
                anchor.train_id, self.refine_steps, origin, self.refine_lr, backbone_only
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

    def expand(self, grid: _Grid, q: Spec, path: str) -> None:
        for bb, lam, ds, seed in itertools.product(
            grid.backbones, grid.lambdas, grid.datasets, grid.seeds
        ):
            recipe = RefineBackbone(self.refine_steps, bb.label, self.refine_lr)
            grid.add(bb, q, lam, ds, seed, recipe)


@dataclass(frozen=True)
class _Interpolation:
    """``interpolate``: ``points`` blends of the models of ``of`` at two lambdas."""

    of: str
    between: tuple[float, float]
    points: int
    stage = 2

    def expand(self, grid: _Grid, q: Spec, path: str) -> None:
        labels = sorted({label for _, label, _, _ in grid.models})
        if self.of not in labels:
            grid.ck.fail(
                f"{path}.interpolate.of",
                unknown_name_message("quantizer label", self.of, labels),
            )
        l1, l2 = self.between
        for lam in (l1, l2):
            grid.require_lambda(lam, f"{path}.interpolate.between")
        origin = f"{self.of}@{l1:g}-{l2:g}"
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


# ---------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------


class _Checker:
    """Checks values against the registries; every failure names the file and key path."""

    def __init__(self, source: str, registry: Registry, base_dir: Path) -> None:
        self.source = source
        self.registry = registry
        self.base_dir = base_dir

    def fail(self, path: str, msg: str) -> None:
        raise MatrixError(f"{self.source}: {path}: {msg}")

    def failing(self, section: str):
        """``fail(key, message)`` for the keys of one section (a config's ``from_table``)."""
        return lambda key, msg: self.fail(f"{section}.{key}", msg)

    def metric_problem(self, name: str) -> str:
        """``""`` when ``name`` is a registered metric, else why not."""
        if ("metric", name) in self.registry:
            return ""
        return unknown_name_message("metric", name, self.registry.names("metric"))

    def type_name(self, value: Any) -> str:
        return {bool: "boolean", int: "integer", float: "float", str: "string"}.get(
            type(value), type(value).__name__
        )

    def check_keys(self, table: dict, allowed: set[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f"{path}.{key}" if path else key
                self.fail(where, f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")

    def check_type(self, value: Any, expected: Any, path: str) -> None:
        """``value`` must have the type of the default ``expected`` (ints pass as floats)."""
        if expected is None or expected is Any:
            return
        if isinstance(expected, bool):
            ok = isinstance(value, bool)
        elif isinstance(expected, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(expected, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(expected, str):
            ok = isinstance(value, str)
        elif isinstance(expected, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        elif isinstance(expected, dict):
            ok = isinstance(value, (dict, str))
        else:
            ok = True
        if not ok:
            self.fail(
                path,
                f"expected {self.type_name(expected)}, got {self.type_name(value)} {value!r}",
            )

    def spec(self, kind: str, entry: Any, path: str, reserved: set[str] = ENTRY_KEYS) -> Spec:
        """A registered name or an inline table ``{name, label, <factory parameters>}``."""
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            self.fail(path, f"expected a {kind} name or an inline table with 'name', got {entry!r}")
        if "name" not in entry or not isinstance(entry["name"], str):
            self.fail(path, f"an inline table needs 'name' (a registered {kind} name)")
        name = entry["name"]
        if (kind, name) not in self.registry:
            self.fail(
                f"{path}.name" if len(entry) > 1 else path,
                unknown_name_message(kind, name, self.registry.names(kind)),
            )
        reg = self.registry.get(kind, name)
        label = entry.get("label", name)
        if not isinstance(label, str) or not label:
            self.fail(f"{path}.label", f"expected a non-empty string, got {label!r}")
        latents = None
        if "latents" in reserved and "latents" in entry:
            lat = entry["latents"]
            if not isinstance(lat, list) or not lat or not all(isinstance(s, str) for s in lat):
                self.fail(
                    f"{path}.latents", f"expected a non-empty list of latent names, got {lat!r}"
                )
            latents = tuple(lat)
        accepted = reg.parameters()
        params = {}
        for key, value in entry.items():
            if key in reserved:
                continue
            if key not in accepted and not reg.accepts_any():
                close = difflib.get_close_matches(key, list(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(
                    f"{path}.{key}",
                    f"{kind} {name!r} has no parameter {key!r}{hint}; accepted: "
                    f"{', '.join(accepted) or 'none'}",
                )
            default = accepted.get(key)
            if default is not inspect.Parameter.empty:
                self.check_type(value, default, f"{path}.{key}")
            params[key] = value
        fingerprints = {}
        for key in reg.metadata.get("paths", ()):
            if params.get(key) is None:
                continue
            if not isinstance(params[key], str) or "\x00" in params[key]:
                self.fail(f"{path}.{key}", f"expected a path, got {params[key]!r}")
            resolved = (self.base_dir / Path(params[key]).expanduser()).resolve()
            params[key] = str(resolved)
            fingerprints[key] = fingerprint(resolved)
        provider = reg.provider
        return Spec(kind, name, label, params, provider, latents, fingerprints)

    def spec_list(self, kind: str, value: Any, path: str) -> list[Spec]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {kind}s, got {self.type_name(value)}")
        if not value:
            self.fail(path, f"the list of {kind}s is empty")
        reserved = QUANTIZER_KEYS if kind == "quantizer" else ENTRY_KEYS
        specs = [self.spec(kind, e, f"{path}[{i}]", reserved) for i, e in enumerate(value)]
        seen: dict[str, int] = {}
        for i, s in enumerate(specs):
            if s.label in seen:
                self.fail(
                    f"{path}[{i}]",
                    f"duplicate label {s.label!r} (also {path}[{seen[s.label]}]); "
                    "give each entry a unique 'label'",
                )
            seen[s.label] = i
        return specs

    def lambdas(self, value: Any) -> list[float]:
        if not isinstance(value, list) or not value:
            self.fail("matrix.lambdas", "expected a non-empty list of positive numbers")
        for i, lam in enumerate(value):
            if isinstance(lam, bool) or not isinstance(lam, (int, float)):
                self.fail(f"matrix.lambdas[{i}]", f"expected a number, got {lam!r}")
            if not (lam > 0 and math.isfinite(lam)):
                self.fail(f"matrix.lambdas[{i}]", f"lambda must be finite and > 0, got {lam!r}")
        if len(set(value)) != len(value):
            self.fail("matrix.lambdas", f"duplicate lambda in {value}")
        return [float(v) for v in value]

    def seeds(self, value: Any) -> list[int]:
        if not isinstance(value, list) or not value:
            self.fail("matrix.seeds", "expected a non-empty list of integers")
        for i, s in enumerate(value):
            if isinstance(s, bool) or not isinstance(s, int):
                self.fail(f"matrix.seeds[{i}]", f"expected an integer, got {s!r}")
        if len(set(value)) != len(value):
            self.fail("matrix.seeds", f"duplicate seed in {value}")
        return list(value)

    def refine_settings(self, entry: dict, path: str) -> tuple[int, float | None]:
        """``(refine_steps, refine_lr)`` of a derived entry, checked."""
        steps = entry.get("refine_steps", 500)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            self.fail(f"{path}.refine_steps", f"expected a positive integer, got {steps!r}")
        lr = entry.get("refine_lr")
        if lr is not None and (
            isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0
        ):
            self.fail(f"{path}.refine_lr", f"expected a positive learning rate, got {lr!r}")
        return steps, None if lr is None else float(lr)

    def derivation(
        self, entry: Any, path: str
    ) -> _Trained | _FromAnchor | _FromBackbone | _Interpolation:
        """What a quantizer entry asks for: a trained model, a derived one, or blends."""
        if not isinstance(entry, dict):
            return _Trained()
        for key in ("refine_steps", "refine_lr"):
            if key in entry and "from_anchor" not in entry:
                self.fail(f"{path}.{key}", "only meaningful with from_anchor")
        if "from_anchor" in entry and "interpolate" in entry:
            self.fail(f"{path}.interpolate", "cannot be combined with from_anchor")
        if entry.get("from_anchor") == "backbone":
            steps, lr = self.refine_settings(entry, path)
            return _FromBackbone(steps, lr)
        if "from_anchor" in entry:
            lam, of = entry["from_anchor"], None
            if isinstance(lam, dict):
                self.check_keys(lam, {"of", "lambda"}, f"{path}.from_anchor")
                of, lam = lam.get("of"), lam.get("lambda")
                if not isinstance(of, str) or not of:
                    self.fail(f"{path}.from_anchor.of", f"expected a quantizer label, got {of!r}")
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
                self.fail(
                    f"{path}.from_anchor",
                    f"expected the anchor's lambda, {{ of = LABEL, lambda = LAMBDA }} or "
                    f'"backbone" (the backbone\'s own weights), got {lam!r}',
                )
            steps, lr = self.refine_settings(entry, path)
            return _FromAnchor(float(lam), steps, lr, of)
        if "interpolate" in entry:
            it = entry["interpolate"]
            if not isinstance(it, dict):
                self.fail(
                    f"{path}.interpolate", "expected { of = LABEL, between = [l1, l2], points = N }"
                )
            self.check_keys(it, {"of", "between", "points"}, f"{path}.interpolate")
            of, between, points = it.get("of"), it.get("between"), it.get("points", 5)
            if not isinstance(of, str):
                self.fail(f"{path}.interpolate.of", f"expected a quantizer label, got {of!r}")
            if (
                not isinstance(between, list)
                or len(between) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in between)
                or not 0 < between[0] < between[1]
            ):
                self.fail(
                    f"{path}.interpolate.between",
                    f"expected two increasing positive lambdas, got {between!r}",
                )
            if isinstance(points, bool) or not isinstance(points, int) or points < 2:
                self.fail(f"{path}.interpolate.points", f"expected an integer >= 2, got {points!r}")
            return _Interpolation(of, (float(between[0]), float(between[1])), points)
        return _Trained()


def _section(ck: _Checker, raw: dict, key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``[key]`` of the matrix over its defaults, each value type-checked against its default."""
    table = raw.get(key, {})
    if not isinstance(table, dict):
        ck.fail(key, f"expected a table [{key}]")
    ck.check_keys(table, set(defaults), key)
    out = dict(defaults)
    for k, v in table.items():
        ck.check_type(v, defaults[k], f"{key}.{k}")
        out[k] = v
    return out
