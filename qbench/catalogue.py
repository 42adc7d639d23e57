"""What is installed: every registered name, as ``qbench list`` shows it, without torch.

Listing the plugins means importing them, and a plugin module imports torch
and CompressAI (seconds). The catalogue is what the registry held the last
time the same plugins were loaded, cached under
``$QBENCH_CACHE_DIR/catalogue/<key>.json`` (default ``~/.cache/qbench``). The
key covers every entry point of the ``qbench`` group (name, target,
distribution, version, :func:`qbench.provenance.code_digest` of its module),
the disabled plugin names and qbench's own version, so installing, removing,
upgrading or editing a plugin makes a new key and a fresh load. A load that
recorded plugin problems is never cached: a broken plugin is diagnosed live
every time (its fix may be outside its files, e.g. a missing dependency).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from qbench.provenance import code_digest
from qbench.version import __version__

#: Bumped when the cached record's layout changes.
FORMAT = 1


@dataclass(frozen=True)
class Listed:
    """One registered name as listed: who provides it, what it is, what it takes."""

    kind: str
    name: str
    plugin: str
    distribution: str
    version: str
    code: str
    description: str
    details: str = ""  #: the whole ``description`` metadata
    parameters: dict[str, str] = field(default_factory=dict)  #: name: default (repr)
    learned: int | None = None  #: declared learnable parameter count

    @property
    def provider(self) -> str:
        return f"{self.distribution} {self.version}".strip()


@dataclass(frozen=True)
class Catalogue:
    """The registered names and the plugin problems of one load."""

    entries: list[Listed]
    problems: list[dict[str, str]]
    cached: bool = False  #: read from the cache (no plugin was imported)

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [asdict(e) for e in self.entries],
            "problems": self.problems,
        }


def cache_dir() -> Path:
    """``$QBENCH_CACHE_DIR`` or ``~/.cache/qbench``: qbench's per-user cache."""
    return Path(os.environ.get("QBENCH_CACHE_DIR") or Path.home() / ".cache" / "qbench")


def key(disable: tuple[str, ...] = ()) -> str:
    """The cache key of the plugins that a load with ``disable`` would import."""
    from qbench.plugins import disabled_plugins

    eps = sorted(
        (
            ep.name,
            ep.value,
            ep.dist.name if ep.dist is not None else "",
            ep.dist.version if ep.dist is not None else "",
            code_digest(ep.module),
        )
        for ep in importlib_metadata.entry_points(group="qbench")
    )
    blob = json.dumps([FORMAT, __version__, sorted(disabled_plugins(disable)), eps])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def installed(disable: tuple[str, ...] = ()) -> Catalogue:
    """The catalogue: from the cache when the same plugins were listed before, else by
    loading them (and caching the result when every plugin loaded cleanly)."""
    path = cache_dir() / "catalogue" / f"{key(disable)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Catalogue([Listed(**e) for e in data["entries"]], data["problems"], cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from qbench.plugins import get_plugins

    catalogue = from_plugins(get_plugins(disable))
    if not catalogue.problems:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(catalogue.to_json()), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:  # a read-only home: list anyway, uncached
            pass
    return catalogue


def from_plugins(plugin_set: Any) -> Catalogue:
    """The catalogue of a loaded :class:`qbench.plugins.PluginSet`."""
    entries = []
    for e in sorted(plugin_set.registry.entries(), key=lambda e: (e.kind, e.name)):
        params = {
            k: "required" if v is inspect.Parameter.empty else repr(v)
            for k, v in e.parameters().items()
        }
        learned = e.metadata.get("parameters")
        entries.append(
            Listed(
                e.kind,
                e.name,
                e.plugin,
                e.distribution,
                e.version,
                e.code,
                e.description,
                str(e.metadata.get("description", "")).strip(),
                params,
                int(learned) if isinstance(learned, int) else None,
            )
        )
    problems = [
        {"plugin": p.plugin, "distribution": p.distribution, "kind": p.kind, "reason": p.reason}
        for p in plugin_set.problems
    ]
    return Catalogue(entries, problems)


#: The widest line ``qbench list`` prints.
WIDTH = 100


def render(catalogue: Catalogue, long: bool = False, width: int = WIDTH) -> str:
    """The listing: one line per name under its kind (``long``: every detail), then the
    plugins by distribution and the plugin problems; no line is wider than ``width``."""
    import textwrap

    lines: list[str] = []
    from qbench.registry import KINDS

    kinds = [k for k in KINDS if any(e.kind == k for e in catalogue.entries)]
    name_w = max((len(e.name) for e in catalogue.entries), default=4)
    plugin_w = max((len(e.plugin) for e in catalogue.entries), default=6)
    for kind in kinds:
        listed = [e for e in catalogue.entries if e.kind == kind]
        lines.append(f"{kind}s ({len(listed)})")
        for e in listed:
            desc = e.description
            if e.learned:
                desc += f" [{e.learned} learned parameter{'s' if e.learned != 1 else ''}]"
            if not long:  # the description wrapped in its column
                lead = f"  {e.name:<{name_w}}  {e.plugin:<{plugin_w}}  "
                room = max(width - len(lead), 20)
                wrapped = textwrap.wrap(desc, room) or [""]
                lines.append(lead + wrapped[0])
                lines += [" " * len(lead) + w for w in wrapped[1:]]
                continue
            lines.append(f"  {e.name}  (plugin {e.plugin}, {e.provider}, code {e.code or '?'})")
            for paragraph in (e.details or desc).splitlines():
                lines += textwrap.wrap(
                    paragraph, width, initial_indent=" " * 6, subsequent_indent=" " * 6
                ) or [""]
            if e.parameters:
                params = ", ".join(f"{k}={v}" for k, v in e.parameters.items())
                lines += textwrap.wrap(
                    f"parameters: {params}",
                    width,
                    initial_indent=" " * 6,
                    subsequent_indent=" " * 8,
                )
        lines.append("")
    by_dist: dict[str, list[str]] = {}
    for e in catalogue.entries:
        plugins = by_dist.setdefault(e.provider, [])
        if e.plugin not in plugins:
            plugins.append(e.plugin)
    for provider, plugins in by_dist.items():
        lines += textwrap.wrap(f"{provider}: {', '.join(plugins)}", width, subsequent_indent="    ")
    if not long:
        lines.append(
            "(qbench list --long: full descriptions, parameters and code digests; --json: all)"
        )
    if catalogue.problems:
        lines.append("")
        lines.append("Plugin problems:")
        for p in catalogue.problems:
            lines += textwrap.wrap(
                f"{p['plugin']} ({p['distribution']}): {p['reason']}",
                width,
                initial_indent="  ",
                subsequent_indent="    ",
            )
    return "\n".join(lines)
