"""Which code produced a result: the digest of a plugin's source.

A job id must change when the code that builds its quantizer, backbone,
dataset or metric changes, not only when a distribution's version does: an
edited plugin that kept ``version = "0.1.0"`` would otherwise have its old
results reused. :func:`code_digest` gives the digest that enters every
registered name's identity (:class:`qbench.registry.Entry` ``code``, then the
job ids, see :func:`qbench.plan.jobs.job_identity`).

**What the digest covers.** The source file of the module an entry point
loads, and, transitively, every module of the same top-level package that one
of those files imports (``import pkg.sub``, ``from pkg import sub``,
``from .sub import f``, at any depth of the file, functions included), with
the ``__init__.py`` of every package on the way. Files are found without
importing anything (``importlib.util.find_spec`` of the top-level name, then
paths), so the digest costs a few milliseconds and works for commands that
never import the plugin. Two plugins of one package that import nothing of
each other have independent digests: editing one re-runs only its own jobs.
Modules outside the package (torch, CompressAI, qbench itself) are not
covered; a plugin that loads code by a computed name (``importlib``) should
bump its version when that code changes.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path


def code_digest(module: str) -> str:
    """A 16-hex-digit digest of the source of ``module`` and its in-package imports.

    ``""`` when the module's source cannot be found (a module object with no
    file, a compiled extension): its identity then rests on its version.
    """
    files = source_files(module)
    if not files:
        return ""
    root = _package_root(module.split(".")[0])
    entries = []
    for f in files:
        name = str(f.relative_to(root.parent)) if root is not None else f.name
        entries.append([name, hashlib.sha256(f.read_bytes()).hexdigest()])
    blob = json.dumps(sorted(entries), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def source_files(module: str) -> list[Path]:
    """The ``.py`` files :func:`code_digest` covers for ``module``, sorted."""
    top = module.split(".")[0]
    root = _package_root(top)
    if root is None:  # a single-file top-level module
        origin = _origin(top)
        return [origin] if origin is not None and module == top else []
    found: dict[str, Path] = {}
    queue = [module]
    while queue:
        name = queue.pop()
        if name in found:
            continue
        path = _module_file(root, name)
        if path is None:
            continue
        found[name] = path
        parts = name.split(".")
        queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        queue.extend(n for n in _imports(path, name) if n.split(".")[0] == top)
    return sorted(set(found.values()))


def _origin(top: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _package_root(top: str) -> Path | None:
    """The folder of the top-level package ``top`` (None: not a package)."""
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: imports nothing
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _module_file(root: Path, name: str) -> Path | None:
    """The source file of the dotted ``name`` inside the package folder ``root``."""
    base = root.joinpath(*name.split(".")[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, name: str) -> list[str]:
    """Every dotted module name that ``path`` (module ``name``) may import, absolute."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(base_parts)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)  # may be submodules
    return [n for n in names if n]
