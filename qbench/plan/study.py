"""A study: several matrices that one command runs, each into a folder of its own.

A matrix has one ``[train]`` and one ``[eval]`` for all its entries and runs every
quantizer on every backbone; a study whose questions need different settings (a
from-scratch training beside a fine-tuning, a context model evaluated on fewer
images) is written as a few matrices and a study file that names them::

    name = "reference"
    parts = ["reference-hyperprior.toml", "reference-networks.toml"]

(paths relative to the study file). ``qbench run STUDY --out DIR`` checks every part
before any job starts and runs them in order into ``DIR/<part's run name>/``; each
part resumes as a run does, so the study does. ``--set`` overrides apply to every
part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbench.plan.matrix import MatrixError, read_toml

#: the keys of a study file
STUDY_KEYS = {"name", "parts"}


@dataclass(frozen=True)
class Study:
    """A study file: its name and the matrix files of its parts, in order."""

    name: str
    source: str
    parts: tuple[Path, ...]


def read_study(path: str | Path | None) -> Study | None:
    """The study ``path`` holds, or None when it is a matrix (it has no ``parts``)."""
    if path is None:
        return None
    path = Path(path)
    raw = read_toml(path)
    if "parts" not in raw:
        return None
    return _study(raw, path)


def _study(raw: dict[str, Any], path: Path) -> Study:
    source = str(path)
    unknown = sorted(set(raw) - STUDY_KEYS)
    if unknown:
        raise MatrixError(
            f"{source}: {unknown[0]}: a study file holds only {sorted(STUDY_KEYS)} (its parts "
            "are matrix files of their own)"
        )
    parts = raw["parts"]
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise MatrixError(f"{source}: parts: expected a list of matrix files, got {parts!r}")
    resolved = []
    for i, part in enumerate(parts):
        file = (path.resolve().parent / part).resolve()
        if not file.is_file():
            raise MatrixError(f"{source}: parts[{i}]: no matrix file {file}")
        if file in resolved:
            raise MatrixError(f"{source}: parts[{i}]: {part!r} is named twice")
        resolved.append(file)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise MatrixError(f"{source}: name: expected a run name, got {name!r}")
    return Study(name, source, tuple(resolved))
