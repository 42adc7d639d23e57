"""Registries: what the plugins registered, looked up by kind and name.

The registry knows nothing of any particular quantizer, backbone, dataset or
metric; it stores what ``register(name, factory, **metadata)`` was given by
each plugin and builds objects with ``factory(**params)``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("quantizer", "backbone", "dataset", "metric", "logger")


class QbenchError(Exception):
    """Base class of the errors qbench reports to the user (no traceback needed)."""


class UnknownNameError(QbenchError, KeyError):
    """A name that no plugin registered; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginParameterError(QbenchError, TypeError):
    """A factory was given a parameter it does not accept, or its build failed."""


@dataclass(frozen=True)
class Entry:
    """One registered name: who provided it and how to build it.

    ``code`` is the digest of the plugin's source (:func:`qbench.provenance.code_digest`,
    ``""`` when unknown); with ``provider`` it enters the identity of every job
    that uses the name, so that editing a plugin's code re-runs its jobs.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    code: str = ""

    @property
    def provider(self) -> str:
        """``"distribution version"`` of the plugin that registered the name."""
        return f"{self.distribution} {self.version}".strip()

    @property
    def description(self) -> str:
        """The first line of the ``description`` metadata ('' when absent)."""
        lines = str(self.metadata.get("description", "")).strip().splitlines()
        return lines[0] if lines else ""

    def parameters(self) -> dict[str, Any]:
        """The factory's keyword parameters and their defaults (``inspect.Parameter.empty``)."""
        try:
            sig = inspect.signature(self.factory)
        except (TypeError, ValueError):
            return {}
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def accepts_any(self) -> bool:
        try:
            sig = inspect.signature(self.factory)
        except (TypeError, ValueError):
            return True
        return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())

    def build(self, **params: Any) -> Any:
        """``factory(**params)``, with errors that name the plugin and the parameter."""
        accepted = self.parameters()
        if not self.accepts_any():
            unknown = [k for k in params if k not in accepted]
            if unknown:
                raise PluginParameterError(
                    f"{self.kind} {self.name!r} (plugin {self.plugin!r}, "
                    f"{self.provider}) does not accept parameter "
                    f"{unknown[0]!r}; accepted parameters: {', '.join(accepted) or 'none'}"
                )
        try:
            return self.factory(**params)
        except (TypeError, ValueError) as exc:
            raise PluginParameterError(
                f"{self.kind} {self.name!r} (plugin {self.plugin!r}) could not be built "
                f"with {params!r}: {exc}"
            ) from exc


@dataclass(frozen=True)
class Problem:
    """A plugin that failed to load, or a registration that was refused.

    Attributes:
        plugin: the entry-point name of the plugin.
        distribution: ``"distribution version"`` that provides it.
        reason: what happened, for people (its wording may change).
        kind: what went wrong, for programs (one of :attr:`KINDS`): ``"import"``, the
            entry point failed to import; ``"hook"``, pluggy refused the plugin's hook
            implementations (a hook qbench does not define, arguments that do not match)
            or a registration hook raised; ``"register"``, a ``register()`` call was
            malformed (no name, no callable factory); ``"duplicate"``, a name (or the
            plugin itself) was registered twice and the later registration ignored.
    """

    KINDS = ("import", "hook", "register", "duplicate")

    plugin: str
    distribution: str
    reason: str
    kind: str = "import"


class Registry:
    """Entries per kind, in registration order; the first registration of a name wins."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.problems: list[Problem] = []

    def add(self, entry: Entry) -> None:
        taken = self._entries[entry.kind].get(entry.name)
        if taken is not None:
            self.problems.append(
                Problem(
                    entry.plugin,
                    entry.distribution,
                    f"{entry.kind} name {entry.name!r} is already registered by plugin "
                    f"{taken.plugin!r} ({taken.provider}); the registration "
                    f"from {entry.provider} was ignored",
                    kind="duplicate",
                )
            )
            return
        self._entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return list(self._entries[kind])

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        for k in KINDS if kind is None else (kind,):
            yield from self._entries[k].values()

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries[kind]

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; an :class:`UnknownNameError` suggests close names."""
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(kind, name, self.names(kind))) from None

    def build(self, kind: str, name: str, **params: Any) -> Any:
        return self.get(kind, name).build(**params)


def did_you_mean(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"did you mean 'x' or 'y'?"`` for the known names closest to ``name`` ('' if none)."""
    close = difflib.get_close_matches(str(name), list(known), n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def reason(exc: BaseException, limit: int = 500) -> str:
    """One line saying why ``exc`` happened: a :class:`QbenchError`'s own message, whole
    (it was written for the user and ends, often, with what to do), or
    ``"TypeName: message"`` for any other exception, at most ``limit`` characters;
    newlines folded."""
    if isinstance(exc, QbenchError):
        return str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:limit]


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    hint = did_you_mean(name, known)
    hint = f"; {hint}" if hint else ""
    listing = ", ".join(sorted(known)) or "none"
    return f"unknown {kind} {name!r}{hint} (registered {kind}s: {listing})"
