"""The plugin manager: load every ``qbench`` entry point and build the registry.

Each entry point is loaded on its own, so that one plugin that fails to import,
or that implements a hook qbench does not define, is recorded as a
:class:`qbench.registry.Problem` and skipped while the rest load. qbench's own
distribution is loaded first and the others in name order, so the first
registration of a name (which wins) is deterministic and built-ins cannot be
shadowed by accident.

``QBENCH_DISABLE_PLUGINS=name1,name2`` (or ``qbench --disable-plugin NAME``)
skips plugins by entry-point name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata as importlib_metadata
from typing import Any

import pluggy

from qbench import hookspecs
from qbench.provenance import code_digest
from qbench.registry import Entry, Problem, Registry, reason
from qbench.version import DISTRIBUTION

GROUP = "qbench"
DISABLE_ENV = "QBENCH_DISABLE_PLUGINS"
_HOOK_KIND = {
    "qbench_register_quantizers": "quantizer",
    "qbench_register_backbones": "backbone",
    "qbench_register_datasets": "dataset",
    "qbench_register_metrics": "metric",
    "qbench_register_loggers": "logger",
}


@dataclass
class LoadedPlugin:
    """An entry point that loaded: its name, module object and distribution."""

    name: str
    module: Any
    distribution: str
    version: str
    code: str = ""  #: :func:`qbench.provenance.code_digest` of the module it loaded


@dataclass
class PluginSet:
    """A plugin manager together with the registry its plugins filled."""

    pm: pluggy.PluginManager
    registry: Registry
    plugins: list[LoadedPlugin] = field(default_factory=list)
    #: where a failing hook or logger is reported: standard error, or, in a worker
    #: process of the local executor, the qbench process's console
    warn: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr))

    @property
    def problems(self) -> list[Problem]:
        return self.registry.problems

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def call_guarded(self, name: str, **kwargs: Any) -> None:
        """Call lifecycle hook ``name`` on every plugin; a plugin that raises is reported by name.

        A logger or reporter must never fail a job: its exception is reported
        (:attr:`warn`) with the plugin's name, and the other plugins are still called.
        """
        for impl in getattr(self.pm.hook, name).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                self.warn(
                    f"qbench: warning: plugin {impl.plugin_name!r}: {name} raised {reason(exc)}"
                )


def disabled_plugins(extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """Entry-point names disabled by ``QBENCH_DISABLE_PLUGINS`` and ``extra``."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return names | set(extra)


def _entry_points() -> list[importlib_metadata.EntryPoint]:
    eps = list(importlib_metadata.entry_points(group=GROUP))
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in eps:
        dist = ep.dist.name if ep.dist is not None else ""
        if (ep.name, dist) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, dist))
        unique.append(ep)

    def order(ep: importlib_metadata.EntryPoint) -> tuple[int, str, str]:
        dist = (ep.dist.name if ep.dist is not None else "").lower()
        return (0 if dist == DISTRIBUTION else 1, dist, ep.name)

    return sorted(unique, key=order)


def load_plugins(
    disable: list[str] | tuple[str, ...] = (), extra_plugins: dict[str, Any] | None = None
) -> PluginSet:
    """Load every enabled plugin and build the registry.

    Args:
        disable: entry-point names to skip, in addition to ``QBENCH_DISABLE_PLUGINS``.
        extra_plugins: ``{name: module_or_object}`` registered after the entry
            points, as if they came from a distribution called ``<local>``
            (for tests and notebooks).
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    plugin_set = PluginSet(pm, registry)
    skip = disabled_plugins(disable)

    candidates: list[tuple[str, str, str, Any, str]] = []
    for ep in _entry_points():
        if ep.name in skip:
            continue
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else ""
        try:
            module = ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not break qbench
            registry.problems.append(
                Problem(
                    ep.name,
                    f"{dist} {version}".strip(),
                    _describe(exc, "import failed"),
                    kind="import",
                )
            )
            continue
        candidates.append((ep.name, dist, version, module, code_digest(ep.module)))
    for name, obj in (extra_plugins or {}).items():
        if name not in skip:
            source = getattr(obj, "__name__", None) if hasattr(obj, "__file__") else None
            candidates.append((name, "<local>", "", obj, code_digest(source) if source else ""))

    for name, dist, version, module, code in candidates:
        try:
            if pm.is_registered(module):  # the same module under two names
                raise ValueError(f"module {getattr(module, '__name__', module)!r} already loaded")
            pm.register(module, name=name)
            pm.check_pending()
        except Exception as exc:
            if pm.is_registered(module):
                pm.unregister(module)
            registry.problems.append(
                Problem(
                    name,
                    f"{dist} {version}".strip(),
                    _describe(exc, "rejected"),
                    # pluggy refuses hooks it does not know or whose arguments differ; the
                    # rest is a module or name loaded twice
                    kind="hook" if isinstance(exc, pluggy.PluginValidationError) else "duplicate",
                )
            )
            continue
        plugin_set.plugins.append(LoadedPlugin(name, module, dist, version, code))

    _collect(plugin_set)
    return plugin_set


def _collect(plugin_set: PluginSet) -> None:
    """Call every registration hook plugin by plugin, in load order."""
    pm, registry = plugin_set.pm, plugin_set.registry
    for plugin in plugin_set.plugins:
        for hook_name, kind in _HOOK_KIND.items():
            # pluggy's own view of the plugin's implementations, so that an
            # implementation registered under another name (``specname``) counts
            impls = [
                i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin is plugin.module
            ]
            for impl in impls:
                register = partial(_register, registry, kind, plugin)
                try:
                    impl.function(register=register)
                except (Exception, SystemExit) as exc:
                    innermost = exc.__traceback__
                    while innermost.tb_next is not None:
                        innermost = innermost.tb_next
                    # raised by _register, or by calling it with arguments it cannot take:
                    # the hook called register() wrongly
                    bad_call = innermost.tb_frame.f_code is _register.__code__ or (
                        isinstance(exc, TypeError) and str(exc).startswith("_register()")
                    )
                    registry.problems.append(
                        Problem(
                            plugin.name,
                            f"{plugin.distribution} {plugin.version}".strip(),
                            _describe(exc, f"{hook_name} raised"),
                            kind="register" if bad_call else "hook",
                        )
                    )


def _register(
    registry: Registry, kind: str, plugin: LoadedPlugin, name: str, factory: Any, **metadata: Any
) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"register() needs a non-empty name, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register({name!r}, ...) needs a callable factory, got {factory!r}")
    registry.add(
        Entry(
            kind,
            name,
            factory,
            plugin.name,
            plugin.distribution,
            plugin.version,
            metadata,
            code=plugin.code,
        )
    )


def _describe(exc: BaseException, what: str) -> str:
    return f"{what}: {type(exc).__name__}: {exc}"


_DEFAULT: PluginSet | None = None
_DEFAULT_KEY: tuple | None = None


def get_plugins(disable: list[str] | tuple[str, ...] = ()) -> PluginSet:
    """The process-wide plugin set (loaded once per distinct set of disabled plugins)."""
    global _DEFAULT, _DEFAULT_KEY
    key = tuple(sorted(disabled_plugins(disable)))
    if _DEFAULT is None or key != _DEFAULT_KEY:
        _DEFAULT, _DEFAULT_KEY = load_plugins(disable), key
    return _DEFAULT


def current_plugins() -> PluginSet:
    """The process-wide plugin set as last loaded by :func:`get_plugins` (whatever plugins
    it disabled), or the default one when none was loaded yet. For a plugin that builds
    other registered names at build time (``pair``) without reloading the set."""
    return _DEFAULT if _DEFAULT is not None else get_plugins()


def reset() -> None:
    """Forget the process-wide plugin set (after installing a plugin, in tests)."""
    global _DEFAULT, _DEFAULT_KEY
    _DEFAULT = _DEFAULT_KEY = None
