"""Checking a matrix's values against the registries: every failure names the file and key.

:class:`Checker` reads entries (a registered name or an inline table) into
:class:`~qbench.plan.jobs.Spec` objects, checks keys against the allowed ones
(with a "did you mean"), types against the documented defaults, lambdas and
seeds; :func:`section` reads one ``[section]`` over its defaults.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any

from qbench.plan.jobs import Spec, fingerprint
from qbench.registry import QbenchError, Registry, did_you_mean, unknown_name_message

#: keys of an entry that qbench reads itself rather than passing to the factory
ENTRY_KEYS = {"name", "label"}
#: keys of a quantizer entry that qbench reads itself (which latents, which recipe)
QUANTIZER_KEYS = ENTRY_KEYS | {
    "latents",
    "from_anchor",
    "refine_steps",
    "refine_lr",
    "refine_reset",
    "interpolate",
    "soft_then_hard",
}
#: What a label may be: it names files (plots, exports) and table cells on every file system,
#: and the report adds ``#config`` or ``@lambdas`` to it, so at most 64 of these characters.
LABEL_RE = re.compile(r"[A-Za-z0-9_.+@#-]{1,64}")
#: Seeds are signed 64-bit integers: torch takes them (and the probes' ``seed + 2``) whole.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def label_problem(label: object) -> str:
    """``""`` when ``label`` is a usable label (:data:`LABEL_RE`, no ``..``), else why not."""
    if isinstance(label, str) and LABEL_RE.fullmatch(label) and ".." not in label:
        return ""
    return f"expected a label of at most 64 letters, digits and '-_.+@#' (no '..'), got {label!r}"


class MatrixError(QbenchError):
    """A matrix that cannot run; the message names the file and the key."""


class Checker:
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

    def provenance(self, kind: str, name: str) -> str:
        """``"distribution version code-digest"`` of a registered name."""
        entry = self.registry.get(kind, name)
        return f"{entry.provider} {entry.code}".strip()

    def type_name(self, value: Any) -> str:
        return {bool: "boolean", int: "integer", float: "float", str: "string"}.get(
            type(value), type(value).__name__
        )

    def check_keys(self, table: dict, allowed: set[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                hint = did_you_mean(key, sorted(allowed), n=1, cutoff=0.6)
                hint = f" ({hint})" if hint else ""
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
        problem = label_problem(label)
        if problem:
            given = "label" in entry
            self.fail(
                f"{path}.label",
                problem + ("" if given else f" (the name {name!r}; give the entry a 'label')"),
            )
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
                hint = did_you_mean(key, list(accepted), n=1, cutoff=0.6)
                hint = f" ({hint})" if hint else ""
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
            try:
                resolved = (self.base_dir / Path(params[key]).expanduser()).resolve()
            except RuntimeError:  # ~user of no such user
                self.fail(f"{path}.{key}", f"{params[key]!r}: no such user's home folder")
            params[key] = str(resolved)
            fingerprints[key] = fingerprint(resolved)
        code = reg.code + self.used_code(reg, params)
        return Spec(kind, name, label, params, reg.provider, latents, fingerprints, code)

    def used_code(self, reg: Any, params: dict[str, Any]) -> str:
        """The providers and code digests of the registered plugins an entry's parameters
        name (registration metadata ``uses = {param: (kind, default name)}``; a parameter
        is a name or an inline table with ``name``), so that editing a member's code
        changes the ids of the jobs that use it through this entry ('' when none)."""
        out = []
        for key, (used_kind, default) in dict(reg.metadata.get("uses", {})).items():
            value = params.get(key)
            used = value.get("name") if isinstance(value, dict) else value
            used = default if used is None else used
            if isinstance(used, str) and (used_kind, used) in self.registry:
                entry = self.registry.get(used_kind, used)
                out.append(f"{key}={used}:{entry.provider} {entry.code}")
        return "; " + "; ".join(out) if out else ""

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
            if not SEED_MIN <= s <= SEED_MAX:
                self.fail(f"matrix.seeds[{i}]", f"expected a seed from -2^63 to 2^63-1, got {s}")
        if len(set(value)) != len(value):
            self.fail("matrix.seeds", f"duplicate seed in {value}")
        return list(value)


def section(ck: Checker, raw: dict, key: str, defaults: dict[str, Any]) -> dict[str, Any]:
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
