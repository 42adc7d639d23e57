"""Matrix files: read, check against the registries, expand to jobs.

A matrix (TOML, see the README and docs/plugins.md) declares backbones x quantizers x
lambdas x datasets x seeds plus ``[train]``, ``[eval]`` and ``[report]``
sections. Keys a matrix leaves out take their defaults from
``qbench/data/defaults.toml``. ``qbench run --set KEY=VALUE`` overrides a key
before validation, exactly as if the file said it.

Every problem is reported before any job starts, as a :class:`MatrixError`
naming the file and the key path (``matrix.quantizers[3].zero_center``) and
what was expected (:mod:`qbench.plan.checker`). The expansion
(:mod:`qbench.plan.expand`) makes one :class:`~qbench.plan.jobs.Job` per cell,
with the :mod:`~qbench.plan.recipes` recipe that produces its weights:

* a plain quantizer entry trains (:class:`~qbench.plan.recipes.Train`);
* ``from_anchor = LAMBDA`` (+ ``refine_steps``) derives a model at every lambda
  from the entry with the same quantizer and parameters trained at ``LAMBDA``
  (:class:`~qbench.plan.recipes.Refine`);
* ``interpolate = { of = LABEL, between = [l1, l2], points = N }`` blends the
  models of ``LABEL`` at ``l1`` and ``l2`` (:class:`~qbench.plan.recipes.Blend`).
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from qbench.plan.checker import ENTRY_KEYS, Checker, MatrixError, section
from qbench.plan.configs import EvalConfig, ExecutorConfig, Refinement, TrainConfig
from qbench.plan.expand import Axes, expand
from qbench.plan.jobs import Job, Spec, stable_hash
from qbench.reference import check_names
from qbench.registry import Registry, did_you_mean, reason, unknown_name_message

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = {"name", "matrix", "train", "eval", "report", "monitor", "executor"}
MATRIX_KEYS = {"backbones", "quantizers", "lambdas", "datasets", "seeds", "unlisted_latents"}
#: ``[report] rate``: the rate the report compares on (the report's tables name each
#: basis's column: :data:`qbench.report.tables.RATES`).
REPORT_RATES = ("bitstream", "likelihood")


#: What a run name may be: it names the folder ``runs/<name>``, so no path (and no ``..``).
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def _safe_name(stem: str) -> str:
    """A default run name from a file stem: characters outside NAME_RE become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip(".-")[:64]
    name = re.sub(r"\.{2,}", ".", name)
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
        """What a run directory records of the matrix it holds: its job set's hash and names,
        the job ids, and the code each registered name it uses came from (``"kind name"``:
        ``"distribution version code-digest"``), so that a run of the same matrix after a
        plugin edit can tell which jobs the edit touched (:meth:`RunDir.claim`)."""
        return {
            "id": stable_hash(sorted(j.job_id for j in self.jobs)),
            "name": self.name,
            "source": self.source,
            "jobs": len(self.jobs),
            "job_ids": sorted(j.job_id for j in self.jobs),
            "code": self.code(),
        }

    def code(self) -> dict[str, str]:
        """``{"kind name": "distribution version code-digest"}`` of every name the jobs use."""
        code: dict[str, str] = {}
        for job in self.jobs:
            for spec in (job.backbone, job.quantizer, job.unlisted, job.train_dataset, job.dataset):
                code[f"{spec.kind} {spec.name}"] = f"{spec.provider} {spec.code}".strip()
        for name, made in zip(self.eval.metrics, self.eval.metric_code):
            code[f"metric {name}"] = made
        return dict(sorted(code.items()))

    def resolved(self) -> dict[str, Any]:
        """The matrix as resolved (defaults filled in, overrides applied), for the manifest."""
        return {
            "name": self.name,
            "source": self.source,
            "overrides": self.overrides,
            "train": {"dataset": self.train_dataset.identity(), **asdict(self.train)},
            "eval": self.eval.identity(),
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
    raw = read_toml(path)
    return parse_matrix(
        raw,
        str(path),
        registry,
        default_name=path.stem,
        overrides=overrides,
        base_dir=path.resolve().parent,
    )


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file ``path`` as a table; a :class:`MatrixError` naming it when it cannot be
    read, is not UTF-8 or is not TOML."""
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
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{source}: malformed TOML: {exc}") from exc


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """A copy of ``raw`` with each ``KEY.PATH=VALUE`` of ``overrides`` set.

    KEY.PATH is a dotted path of table keys (``train.steps``); VALUE is read as a
    TOML value (``[0.001, 0.01]``, ``{ name = "sua", zero_center = false }``), or as
    a string when it is not one. A list element cannot be addressed
    (``matrix.backbones[0].N``): the error says so and spells the whole-list
    ``--set`` that makes the change.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MatrixError(f"{source}: --set {item!r}: expected KEY=VALUE (train.steps=200)")
        if "\n" in item or "\r" in item:  # TOML would read the rest as other keys, unused
            raise MatrixError(
                f"{source}: --set {item!r}: a value is one line (it holds a newline); "
                "give each key its own --set"
            )
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        parts = key.split(".")
        for i, part in enumerate(parts):
            if "[" in part or "]" in part:
                raise MatrixError(_list_element_message(source, item, out, parts, i, value))
        table = out
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if isinstance(table, list):
                raise MatrixError(_list_element_message(source, item, out, parts, i, value))
            if not isinstance(table, dict):
                where = ".".join(parts[: i + 1])
                raise MatrixError(f"{source}: --set {item!r}: {where} is not a table")
        table[parts[-1]] = value
    return out


#: A ``--set`` path step that indexes a list: ``backbones[0]``.
_INDEXED = re.compile(r"([^\[\]]*)\[(\d+)\]")


def _list_element_message(
    source: str, item: str, raw: dict[str, Any], parts: list[str], i: int, value: Any
) -> str:
    """Why ``--set ITEM`` fails at ``parts[i]`` (a list, or a list index) and what to do:
    the whole list as one TOML value, with the element changed as asked where it can."""
    where = ".".join(parts[: i + 1])
    indexed = _INDEXED.fullmatch(parts[i])
    name = parts[i].split("[", 1)[0]
    list_key = ".".join([*parts[:i], name])
    current: Any = raw
    for step in [*parts[:i], name]:
        current = current.get(step) if isinstance(current, dict) else None
    whole, then = f"{list_key}=[...]", " with every element written out"
    if isinstance(current, list):
        changed = copy.deepcopy(current)
        if indexed and _set_in_element(changed, int(indexed.group(2)), parts[i + 1 :], value):
            whole, then = f"{list_key}={_toml_inline(changed)}", ""
        else:
            whole, then = f"{list_key}={_toml_inline(current)}", " with your change made"
    what = "a list element" if indexed else "a list, not a table"
    return (
        f"{source}: --set {item!r}: {where} is {what}; --set takes a dotted path of table "
        f"keys (train.steps=200, eval.max_images=4) and cannot address a list element. "
        f"Set the whole list as one TOML value instead, e.g. --set {shlex.quote(whole)}{then}, "
        f"or edit the matrix file"
    )


def _set_in_element(items: list, index: int, rest: list[str], value: Any) -> bool:
    """Set ``items[index]`` (``rest`` empty) or its key path ``rest`` to ``value`` in place
    (an entry given as a bare name becomes ``{ name = ... }``); False where it cannot be."""
    if index >= len(items) or any("[" in p or "]" in p for p in rest):
        return False
    if not rest:
        items[index] = value
        return True
    if isinstance(items[index], str):
        items[index] = {"name": items[index]}
    table = items[index]
    for step in rest[:-1]:
        if not isinstance(table, dict):
            return False
        table = table.setdefault(step, {})
    if not isinstance(table, dict):
        return False
    table[rest[-1]] = value
    return True


def _toml_inline(value: Any) -> str:
    """``value`` (as :mod:`tomllib` reads it) written as one inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        keys = [k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k) for k in value]
        inner = ", ".join(f"{k} = {_toml_inline(v)}" for k, v in zip(keys, value.values()))
        return "{ " + inner + " }"
    return json.dumps(str(value))  # dates and times: shown as text


def parse_matrix(
    raw: dict[str, Any],
    source: str,
    registry: Registry,
    default_name: str = "matrix",
    overrides: Sequence[str] = (),
    base_dir: Path | None = None,
) -> Matrix:
    """Validate a parsed TOML document (after ``overrides``) and expand it into jobs.

    Each section is read by its own checker (:class:`~qbench.plan.configs.TrainConfig`,
    :class:`~qbench.plan.configs.EvalConfig`, :class:`~qbench.plan.configs.ExecutorConfig`,
    :func:`_report_section`, ...) and the quantizer entries are expanded by
    :func:`qbench.plan.expand.expand`. Relative paths in entries (the
    parameters a plugin declares as ``paths``) are resolved against
    ``base_dir``, the matrix file's folder (the working directory when ``None``).
    """
    overrides = list(overrides)
    if overrides:
        raw = apply_overrides(raw, overrides, source)
        source = f"{source} (with --set {', '.join(overrides)})"
    base = defaults()
    ck = Checker(source, registry, base_dir or Path.cwd())
    ck.check_keys(raw, TOP_KEYS, "")
    name = _run_name(ck, raw, default_name)
    m = _matrix_table(ck, raw)
    quantizers = ck.spec_list("quantizer", m["quantizers"], "matrix.quantizers")
    train = section(ck, raw, "train", base["train"])
    eval_table = section(ck, raw, "eval", base["eval"])
    refinement = _refinement(ck, eval_table.pop("refine_latents"), quantizers)
    axes = Axes(
        backbones=ck.spec_list("backbone", m["backbones"], "matrix.backbones"),
        lambdas=ck.lambdas(m["lambdas"]),
        datasets=ck.spec_list("dataset", m["datasets"], "matrix.datasets"),
        seeds=ck.seeds(m.get("seeds", base["matrix"]["seeds"])),
        unlisted=ck.spec(
            "quantizer",
            m.get("unlisted_latents", base["matrix"]["unlisted_latents"]),
            "matrix.unlisted_latents",
            ENTRY_KEYS,
        ),
        train_dataset=ck.spec("dataset", train.pop("dataset"), "train.dataset"),
        train=TrainConfig.from_table(train, base["train"], ck.failing("train")),
        evaluation=EvalConfig.from_table(
            eval_table,
            ck.metric_problem,
            ck.failing("eval"),
            partial(ck.provenance, "metric"),
        ),
    )
    # probe_crops = 0: a probe batch is a training batch
    axes = replace(axes, evaluation=axes.evaluation.for_training(axes.train))
    if refinement is not None:
        axes = replace(axes, evaluation=replace(axes.evaluation, refine_latents=refinement))
    report = _report_section(ck, section(ck, raw, "report", base["report"]), quantizers)
    monitor = section(ck, raw, "monitor", base["monitor"])
    loggers = (
        tuple(ck.spec_list("logger", monitor["loggers"], "monitor.loggers"))
        if (monitor["loggers"])
        else ()
    )
    executor = ExecutorConfig.from_table(
        section(ck, raw, "executor", base["executor"]), ck.failing("executor")
    )
    jobs = expand(ck, axes, quantizers, m["quantizers"])
    jobs = [replace(j, loggers=loggers) for j in jobs] if loggers else jobs
    return Matrix(
        name,
        source,
        raw,
        jobs,
        axes.train_dataset,
        axes.train,
        axes.evaluation,
        report,
        overrides,
        list(loggers),
        executor.as_table(),
    )


def _run_name(ck: Checker, raw: dict[str, Any], default_name: str) -> str:
    name = raw.get("name", _safe_name(default_name))
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        ck.fail(
            "name",
            f"expected a run name of letters, digits, '.', '_' and '-' (at most 64, not "
            f"starting with '.' or '-', no '..'), got {name!r}; it names the folder "
            "runs/<name>",
        )
    return name


def _matrix_table(ck: Checker, raw: dict[str, Any]) -> dict[str, Any]:
    if "matrix" not in raw or not isinstance(raw["matrix"], dict):
        ck.fail("matrix", "missing [matrix] table")
    m = raw["matrix"]
    ck.check_keys(m, MATRIX_KEYS, "matrix")
    for key in ("backbones", "quantizers", "lambdas", "datasets"):
        if key not in m:
            ck.fail(f"matrix.{key}", "missing (required)")
    return m


def _report_section(ck: Checker, report: dict[str, Any], quantizers: list[Spec]) -> dict:
    """The ``[report]`` table, checked: its anchor a quantizer label (default: the first),
    ``min_overlap`` in [0, 1], ``rate`` one of :data:`REPORT_RATES`."""
    labels = [q.label for q in quantizers]
    if report["anchor"] and report["anchor"] not in labels:
        hint = did_you_mean(report["anchor"], labels, n=1, cutoff=0.6)
        hint = f"; {hint}" if hint else ""
        ck.fail("report.anchor", f"{report['anchor']!r} is not a quantizer label{hint}")
    if not report["anchor"]:
        report["anchor"] = labels[0]
    if not 0.0 <= report["min_overlap"] <= 1.0:
        ck.fail("report.min_overlap", f"must lie in [0, 1], got {report['min_overlap']}")
    if report["rate"] not in REPORT_RATES:
        hint = did_you_mean(report["rate"], list(REPORT_RATES), n=1, cutoff=0.6)
        hint = f" ({hint})" if hint else ""
        ck.fail(
            "report.rate",
            f"expected one of {', '.join(REPORT_RATES)}, got {report['rate']!r}{hint}",
        )
    check_names(
        report["reference_curves"],
        lambda i, msg: ck.fail(f"report.reference_curves[{i}]", msg),
    )
    return report


def _refinement(ck: Checker, table: dict[str, Any], quantizers: list) -> Refinement | None:
    """``[eval] refine_latents``, checked (``{}``: none): its quantizer a registered one
    that has a training surrogate, positive steps and learning rate, known labels."""
    from qbench.quantizer import Quantizer  # the contract's base: torch, imported on demand

    if not table:
        return None
    where = "eval.refine_latents"
    ck.check_keys(table, {"quantizer", "steps", "lr", "labels"}, where)
    if "quantizer" not in table:
        ck.fail(
            f"{where}.quantizer", 'missing: the surrogate the encoder optimises through, e.g. "sga"'
        )
    spec = ck.spec("quantizer", table["quantizer"], f"{where}.quantizer")
    try:
        built = ck.registry.build("quantizer", spec.name, **spec.params)
    except Exception as exc:
        ck.fail(f"{where}.quantizer", reason(exc))
    if type(built).forward is Quantizer.forward:
        ck.fail(
            f"{where}.quantizer",
            f"{spec.name!r} has no training surrogate (it rounds in training too), so the "
            'latents would get no gradient through it; name a surrogate such as "sga"',
        )
    steps, lr = table.get("steps", 500), table.get("lr", 5e-3)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        ck.fail(f"{where}.steps", f"expected a positive integer, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        ck.fail(f"{where}.lr", f"expected a positive learning rate, got {lr!r}")
    labels = table.get("labels", [])
    known = [q.label for q in quantizers]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        ck.fail(f"{where}.labels", f"expected a list of quantizer labels, got {labels!r}")
    for label in labels:
        if label not in known:
            ck.fail(f"{where}.labels", unknown_name_message("quantizer label", label, known))
    refinement = Refinement(spec, steps, float(lr), tuple(labels))
    clash = [q for q in known if refinement.label_of(q) in known]
    if clash:
        ck.fail(where, f"the refined arm's label {refinement.label_of(clash[0])!r} is taken")
    return refinement
