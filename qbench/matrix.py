"""Matrix files: parse, validate against the registries, expand to jobs.

A matrix (TOML, see DESIGN.md) declares backbones x quantizers x lambdas x
datasets x seeds plus a ``[train]``, an optional ``[eval]`` and a
``[report]`` section. Every problem is reported before any job starts, as a
:class:`MatrixError` naming the file and the key path
(``matrix.quantizers[3].zero_center``) and what was expected.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qbench.registry import QbenchError, Registry, unknown_name_message

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Loss and training conventions, recorded in every manifest.
LOSS = "lambda * 255^2 * MSE + bpp (CompressAI's RateDistortionLoss convention)"

TRAIN_DEFAULTS: dict[str, Any] = {
    "dataset": {"name": "embedded", "split": "train"},
    "steps": 2000,
    "batch_size": 8,
    "crop": 128,
    "lr": 1e-4,
    "aux_lr": 1e-3,
    "clip_max_norm": 1.0,
    "log_every": 0,
}
EVAL_DEFAULTS: dict[str, Any] = {
    "metrics": ["bpp", "bpp_bitstream", "psnr", "ms_ssim", "mismatch", "gradients"],
    "max_images": 0,
}
REPORT_DEFAULTS: dict[str, Any] = {"anchor": ""}
TOP_KEYS = {"name", "matrix", "train", "eval", "report"}
MATRIX_KEYS = {"backbones", "quantizers", "lambdas", "datasets", "seeds"}
# keys of a matrix entry that qbench reads itself rather than passing to the factory
RESERVED = {"name", "label"}
QUANTIZER_RESERVED = RESERVED | {"latents", "from_anchor", "refine_steps", "interpolate"}


class MatrixError(QbenchError):
    """A matrix that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class Spec:
    """One resolved matrix entry: a registered name, its label and its factory parameters."""

    kind: str
    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    latents: tuple[str, ...] | None = None  # quantizers only: which latents it quantizes
    provider: str = ""  # "distribution version" of the plugin that registered it
    # quantizers only: qbench-level options (from_anchor, refine_steps, interpolate)
    options: dict[str, Any] = field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        d = {"name": self.name, "params": self.params, "provider": self.provider}
        if self.latents is not None:
            d["latents"] = list(self.latents)
        if self.options:
            d["options"] = self.options
        return d


@dataclass(frozen=True)
class Job:
    """One cell: (backbone, quantizer, lambda, evaluation dataset, seed)."""

    backbone: Spec
    quantizer: Spec
    lmbda: float
    dataset: Spec
    seed: int
    train: dict[str, Any]
    train_dataset: Spec
    eval: dict[str, Any]
    job_id: str
    train_id: str  # jobs differing only in the evaluation dataset share a trained model
    # "train" (from scratch), "refine" (only the quantizer, from an anchor's checkpoint)
    # or "interpolate" (no training: blend the quantizers of two refined models)
    mode: str = "train"
    sources: tuple[str, ...] = ()  # train_ids this job starts from (must finish first)
    refine_steps: int = 0
    interp_weight: float | None = None
    origin: str = ""  # derived: "<anchor label>@<lambda>"; blend: "<label>@<l1>-<l2>"

    def describe(self) -> str:
        extra = f" a={self.interp_weight:g}" if self.interp_weight is not None else ""
        return (
            f"{self.backbone.label} / {self.quantizer.label} / lambda={self.lmbda:g}{extra} / "
            f"{self.dataset.label} / seed={self.seed}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        def spec(s: dict[str, Any]) -> Spec:
            lat = s.get("latents")
            return Spec(**{**s, "latents": tuple(lat) if lat is not None else None})

        return cls(
            **{
                **d,
                "sources": tuple(d.get("sources", ())),
                "backbone": spec(d["backbone"]),
                "quantizer": spec(d["quantizer"]),
                "dataset": spec(d["dataset"]),
                "train_dataset": spec(d["train_dataset"]),
            }
        )


@dataclass
class Matrix:
    """A validated matrix and its jobs."""

    name: str
    source: str
    raw: dict[str, Any]
    jobs: list[Job]
    train: dict[str, Any]
    eval: dict[str, Any]
    report: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        """The matrix as resolved (defaults filled in), for the manifest."""
        return {
            "name": self.name,
            "source": self.source,
            "train": self.train,
            "eval": self.eval,
            "report": self.report,
            "jobs": len(self.jobs),
        }


def default_matrix_path() -> Path:
    """The embedded quick matrix shipped with qbench."""
    return Path(str(resources.files("qbench") / "data" / "quick.toml"))


def _stable_hash(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


class _Checker:
    def __init__(self, source: str, registry: Registry) -> None:
        self.source = source
        self.registry = registry

    def fail(self, path: str, msg: str) -> None:
        raise MatrixError(f"{self.source}: {path}: {msg}")

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

    def spec(self, kind: str, entry: Any, path: str) -> Spec:
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
        reserved = QUANTIZER_RESERVED if kind == "quantizer" else RESERVED
        latents = None
        if kind == "quantizer" and "latents" in entry:
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
        provider = f"{reg.distribution} {reg.version}".strip()
        options = {}
        if kind == "quantizer":
            options = self.quantizer_options(entry, path)
        return Spec(kind, name, label, params, latents, provider, options)

    def quantizer_options(self, entry: dict, path: str) -> dict[str, Any]:
        """``from_anchor``/``refine_steps`` (derived models), ``interpolate`` (blends)."""
        opts: dict[str, Any] = {}
        if "from_anchor" in entry:
            lam = entry["from_anchor"]
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
                self.fail(f"{path}.from_anchor", f"expected the anchor's lambda, got {lam!r}")
            opts["from_anchor"] = float(lam)
            steps = entry.get("refine_steps", 500)
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                self.fail(f"{path}.refine_steps", f"expected a positive integer, got {steps!r}")
            opts["refine_steps"] = steps
        elif "refine_steps" in entry:
            self.fail(f"{path}.refine_steps", "only meaningful with from_anchor")
        if "interpolate" in entry:
            if "from_anchor" in entry:
                self.fail(f"{path}.interpolate", "cannot be combined with from_anchor")
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
                or not all(isinstance(v, (int, float)) for v in between)
                or not 0 < between[0] < between[1]
            ):
                self.fail(
                    f"{path}.interpolate.between",
                    f"expected two increasing positive lambdas, got {between!r}",
                )
            if isinstance(points, bool) or not isinstance(points, int) or points < 2:
                self.fail(f"{path}.interpolate.points", f"expected an integer >= 2, got {points!r}")
            opts["interpolate"] = {
                "of": of,
                "between": [float(v) for v in between],
                "points": points,
            }
        return opts

    def spec_list(self, kind: str, value: Any, path: str) -> list[Spec]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {kind}s, got {self.type_name(value)}")
        if not value:
            self.fail(path, f"the list of {kind}s is empty")
        specs = [self.spec(kind, e, f"{path}[{i}]") for i, e in enumerate(value)]
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


def load_matrix(path: str | Path | None, registry: Registry) -> Matrix:
    """Read, validate and expand a matrix file (the embedded quick matrix when ``None``)."""
    path = default_matrix_path() if path is None else Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MatrixError(f"{source}: cannot read matrix file ({exc.strerror or exc})") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{source}: malformed TOML: {exc}") from exc
    return parse_matrix(raw, source, registry, default_name=path.stem)


def parse_matrix(
    raw: dict[str, Any], source: str, registry: Registry, default_name: str = "matrix"
) -> Matrix:
    """Validate a parsed TOML document and expand it into jobs."""
    ck = _Checker(source, registry)
    ck.check_keys(raw, TOP_KEYS, "")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name:
        ck.fail("name", f"expected a non-empty string, got {name!r}")
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

    lambdas = m["lambdas"]
    if not isinstance(lambdas, list) or not lambdas:
        ck.fail("matrix.lambdas", "expected a non-empty list of positive numbers")
    for i, lam in enumerate(lambdas):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)):
            ck.fail(f"matrix.lambdas[{i}]", f"expected a number, got {lam!r}")
        if not lam > 0:
            ck.fail(f"matrix.lambdas[{i}]", f"lambda must be positive, got {lam!r}")
    if len(set(lambdas)) != len(lambdas):
        ck.fail("matrix.lambdas", f"duplicate lambda in {lambdas}")
    seeds = m.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        ck.fail("matrix.seeds", "expected a non-empty list of integers")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int):
            ck.fail(f"matrix.seeds[{i}]", f"expected an integer, got {s!r}")
    if len(set(seeds)) != len(seeds):
        ck.fail("matrix.seeds", f"duplicate seed in {seeds}")

    train = _section(ck, raw, "train", TRAIN_DEFAULTS)
    for key in ("steps", "batch_size", "crop"):
        if train[key] < 1:
            ck.fail(f"train.{key}", f"must be >= 1, got {train[key]}")
    for key in ("lr", "aux_lr"):
        if not train[key] > 0:
            ck.fail(f"train.{key}", f"must be > 0, got {train[key]}")
    train_dataset = ck.spec("dataset", train["dataset"], "train.dataset")
    evaluation = _section(ck, raw, "eval", EVAL_DEFAULTS)
    for i, metric in enumerate(evaluation["metrics"]):
        if not isinstance(metric, str):
            ck.fail(f"eval.metrics[{i}]", f"expected a metric name, got {metric!r}")
        if ("metric", metric) not in registry:
            ck.fail(
                f"eval.metrics[{i}]",
                unknown_name_message("metric", metric, registry.names("metric")),
            )
    report = _section(ck, raw, "report", REPORT_DEFAULTS)
    labels = [q.label for q in quantizers]
    if report["anchor"] and report["anchor"] not in labels:
        close = difflib.get_close_matches(report["anchor"], labels, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ck.fail("report.anchor", f"{report['anchor']!r} is not a quantizer label{hint}")
    if not report["anchor"]:
        report["anchor"] = labels[0]

    train_key = {k: v for k, v in train.items() if k not in ("dataset", "log_every")}
    train_key["dataset"] = train_dataset.key()
    ctx = _Expansion(ck, train, train_key, train_dataset, evaluation)
    jobs = []
    plain = [q for q in quantizers if not q.options]
    derived = [q for q in quantizers if "from_anchor" in q.options]
    blends = [q for q in quantizers if "interpolate" in q.options]
    trained: dict[tuple, Job] = {}  # (backbone label, quantizer label, lambda, seed) -> job
    for bb, q, lam, ds, seed in itertools.product(backbones, plain, lambdas, datasets, seeds):
        job = ctx.job(bb, q, float(lam), ds, seed, {})
        jobs.append(job)
        trained[(bb.label, q.label, float(lam), seed)] = job
    for q in derived:
        i = quantizers.index(q)
        anchor_lam = q.options["from_anchor"]
        anchors = [
            a for a in plain if a.name == q.name and a.params == q.params and a.latents == q.latents
        ]
        if not anchors:
            ck.fail(
                f"matrix.quantizers[{i}].from_anchor",
                f"no plain {q.name!r} entry with the same parameters in this matrix to start from",
            )
        if anchor_lam not in [float(v) for v in lambdas]:
            ck.fail(
                f"matrix.quantizers[{i}].from_anchor",
                f"anchor lambda {anchor_lam:g} is not in matrix.lambdas {lambdas}",
            )
        for bb, lam, ds, seed in itertools.product(backbones, lambdas, datasets, seeds):
            anchor = trained[(bb.label, anchors[0].label, anchor_lam, seed)]
            job = ctx.job(
                bb,
                q,
                float(lam),
                ds,
                seed,
                {"sources": (anchor.train_id,)},
                mode="refine",
                refine_steps=q.options["refine_steps"],
                origin=f"{anchors[0].label}@{anchor_lam:g}",
            )
            jobs.append(job)
            trained[(bb.label, q.label, float(lam), seed)] = job
    labels = {q.label for q in quantizers}
    for q in blends:
        i = quantizers.index(q)
        it = q.options["interpolate"]
        if it["of"] not in labels:
            ck.fail(
                f"matrix.quantizers[{i}].interpolate.of",
                unknown_name_message("quantizer label", it["of"], sorted(labels)),
            )
        l1, l2 = it["between"]
        for lam in (l1, l2):
            if lam not in [float(v) for v in lambdas]:
                ck.fail(
                    f"matrix.quantizers[{i}].interpolate.between",
                    f"lambda {lam:g} is not in matrix.lambdas {lambdas}",
                )
        for bb, ds, seed in itertools.product(backbones, datasets, seeds):
            a_job = trained[(bb.label, it["of"], l1, seed)]
            b_job = trained[(bb.label, it["of"], l2, seed)]
            for k in range(it["points"]):
                a = k / (it["points"] - 1)
                nominal = l1 ** (1 - a) * l2**a
                job = ctx.job(
                    bb,
                    a_job.quantizer,
                    nominal,
                    ds,
                    seed,
                    {"sources": (a_job.train_id, b_job.train_id), "a": a},
                    mode="interpolate",
                    interp_weight=a,
                    label=q.label,
                    origin=f"{it['of']}@{l1:g}-{l2:g}",
                )
                jobs.append(job)
    return Matrix(name, source, raw, jobs, train, evaluation, report)


class _Expansion:
    """Builds jobs with stable ids (a hash of everything that determines the result)."""

    def __init__(self, ck, train, train_key, train_dataset, evaluation) -> None:
        self.ck, self.train, self.train_key = ck, train, train_key
        self.train_dataset, self.evaluation = train_dataset, evaluation

    def job(
        self,
        bb,
        q,
        lam,
        ds,
        seed,
        extra,
        mode="train",
        refine_steps=0,
        interp_weight=None,
        label=None,
        origin="",
    ) -> Job:
        if label is not None:  # an interpolated job reports under the blend's own label
            q = Spec(q.kind, q.name, label, q.params, q.latents, q.provider, q.options)
        tkey = {
            "backbone": bb.key(),
            "quantizer": q.key(),
            "lambda": lam,
            "seed": seed,
            "train": self.train_key,
            "mode": mode,
            **extra,
        }
        train_id = _stable_hash(tkey)
        job_id = _stable_hash({**tkey, "dataset": ds.key(), "eval": self.evaluation})
        return Job(
            bb,
            q,
            lam,
            ds,
            seed,
            self.train,
            self.train_dataset,
            self.evaluation,
            job_id,
            train_id,
            mode,
            tuple(extra.get("sources", ())),
            refine_steps,
            interp_weight,
            origin,
        )


def _section(ck: _Checker, raw: dict, key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        ck.fail(key, f"expected a table [{key}]")
    ck.check_keys(table, set(defaults), key)
    out = dict(defaults)
    for k, v in table.items():
        ck.check_type(v, defaults[k], f"{key}.{k}")
        out[k] = v
    return out
