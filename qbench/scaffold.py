"""``qbench new-plugin NAME --kind KIND``: a plugin package that passes conformance as written.

The package has a ``pyproject.toml`` declaring the ``qbench`` entry point, one
documented module with a small working example of the kind (to be replaced by
the author's own code), a matrix that uses it, a README and a test that runs
qbench's conformance suite on it; the templates are the files under
``qbench/data/new_plugin/``. ``pip install -e PACKAGE`` then
``pytest PACKAGE`` checks it; ``qbench run PACKAGE/matrix.toml`` runs it.
"""

from __future__ import annotations

import builtins
import keyword
import re
from importlib import resources
from pathlib import Path
from string import Template

from qbench.registry import QbenchError

KINDS = ("quantizer", "backbone", "dataset", "metric")

#: The templates (``string.Template``, ``$name`` placeholders) under qbench/data/new_plugin/.
TEMPLATES = resources.files("qbench") / "data" / "new_plugin"


def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


DESCRIPTION = {
    "quantizer": "additive uniform noise of configurable width (example)",
    "backbone": "small factorized-prior codec (example)",
    "dataset": "synthetic smooth images (example)",
    "metric": "PSNR of the luma channel, BT.601 (example)",
}


def write_plugin(name: str, kind: str, out: str | Path | None = None) -> Path:
    """Write the plugin package for ``name`` of ``kind`` and return its folder."""
    if kind not in KINDS:
        raise QbenchError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise QbenchError(
            f"plugin name {name!r}: use lower-case letters, digits, '-' and '_', "
            "starting with a letter"
        )
    ident = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in re.split(r"[-_]", name))
    for word in (ident, cls):
        if keyword.iskeyword(word) or keyword.issoftkeyword(word) or hasattr(builtins, word):
            raise QbenchError(
                f"plugin name {name!r}: the generated code would name a function or class "
                f"{word!r}, a Python keyword or built-in; choose another name"
            )
    root = Path(out).expanduser() if out else Path(f"qbench-{name}")
    if str(root).startswith("~"):
        raise QbenchError(f"--out {out}: no such user's home folder")
    if root.exists() and not root.is_dir():
        raise QbenchError(f"--out {root} is a file, not a folder; choose another --out")
    if root.exists() and any(root.iterdir()):
        raise QbenchError(f"{root} exists and is not empty; choose another --out")
    module = f"qbench_{ident}"
    words = {
        "name": name,
        "kind": kind,
        "dist": f"qbench-{name}",
        "module": module,
        "cls": cls,
        "func": ident,
        "column": ident,
        "description": DESCRIPTION[kind],
    }
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        "matrix.toml": f"matrix-{kind}.toml.tmpl",
        f"{module}/__init__.py": f"module-{kind}.py.tmpl",
        f"tests/test_{ident}_conformance.py": "test_conformance.py.tmpl",
    }
    try:
        for rel, template in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_template(template).substitute(words), encoding="utf-8")
    except OSError as exc:
        raise QbenchError(
            f"--out {root}: cannot write the package ({exc.strerror or exc}); choose another --out"
        ) from exc
    return root
