"""How far is my curve from the published ones? Reference rate-distortion curves.

The catalogue (``qbench/data/reference_curves.toml``) names published Kodak
curves kept in CompressAI's repository: its zoo models (as evaluated by
CompressAI, real bitstream) and classical codecs (VTM, HM, BPG, AV1, JPEG,
JPEG 2000, WebP), each with its file, SHA-256, dataset and PSNR convention.
qbench does not ship the points: :func:`download` fetches the files of the
pinned commit once (``qbench reference-curves --download``), checks each
SHA-256 and keeps them in :func:`folder` (``$QBENCH_REFERENCE_CURVES``, default
``~/.cache/qbench/reference-curves``). A matrix asks for curves with
``[report] reference_curves = ["compressai/mbt2018-mean", "vtm"]``; the report
draws them on the RD plots of the datasets they were measured on and gives
the BD-rate of every run curve against each of them (with the overlap and
flags of :mod:`qbench.bdrate`). A curve asked for but not downloaded is said
in the report's notes with the command that fetches it; it never fails a run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shlex
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from qbench import fetch
from qbench.registry import QbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV = "QBENCH_REFERENCE_CURVES"
CATALOGUE_ENV = "QBENCH_REFERENCE_CATALOGUE"


@dataclass(frozen=True)
class Source:
    """One catalogue entry: where a published curve comes from and how it was measured."""

    name: str
    file: str
    sha256: str
    dataset: str
    psnr: str
    description: str
    zoo: str = ""


@dataclass(frozen=True)
class ReferenceCurve:
    """A published curve: ``bpp`` and ``psnr`` (and ``ms_ssim``) per operating point."""

    source: Source
    label: str
    bpp: tuple[float, ...]
    psnr: tuple[float, ...]
    ms_ssim: tuple[float, ...] = ()

    def points(self) -> list[tuple[float, float]]:
        return list(zip(self.bpp, self.psnr))


def catalogue() -> tuple[dict[str, Any], dict[str, Source]]:
    """``(settings, {name: Source})`` of ``qbench/data/reference_curves.toml``, or of the
    catalogue file ``$QBENCH_REFERENCE_CATALOGUE`` (your own curves, same format).

    Every entry's ``file`` must be a plain file name (no folder part, no ``..``): it is
    joined to the curves' folder, and nothing may be read or written outside it. A
    catalogue that breaks this, or is not that format, raises :class:`QbenchError`
    naming the catalogue and the entry.
    """
    own = os.environ.get(CATALOGUE_ENV)
    if own:
        where = f"${CATALOGUE_ENV} ({own})"
        try:
            text = Path(own).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise QbenchError(f"${CATALOGUE_ENV}: cannot read {own} ({exc})") from exc
    else:
        where = "qbench/data/reference_curves.toml"
        text = (resources.files("qbench") / "data" / "reference_curves.toml").read_text("utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise QbenchError(f"{where}: not valid TOML ({exc})") from exc
    table = data.pop("curves", None)
    if not isinstance(table, dict):
        raise QbenchError(f"{where}: no [curves.NAME] tables")
    curves = {name: _source(where, name, entry) for name, entry in table.items()}
    return data, curves


def _source(where: str, name: str, entry: Any) -> Source:
    """The :class:`Source` of catalogue entry ``name`` (:func:`catalogue`'s checks)."""
    fields = {"file", "sha256", "dataset", "psnr", "description"}
    if not isinstance(entry, dict) or not fields <= set(entry):
        missing = sorted(fields - set(entry)) if isinstance(entry, dict) else sorted(fields)
        raise QbenchError(f"{where}: curves.{name!r} lacks {', '.join(missing)}")
    known = fields | {"zoo"}
    for key in entry:
        if key not in known:
            raise QbenchError(f"{where}: curves.{name!r}.{key}: unknown key")
        if not isinstance(entry[key], str):
            raise QbenchError(f"{where}: curves.{name!r}.{key}: must be a string")
    file = entry["file"]
    if not file or file in (".", "..") or Path(file).name != file or "\\" in file or "\0" in file:
        raise QbenchError(
            f"{where}: curves.{name!r}.file = {file!r}: must be a plain file name inside the "
            "curves' folder (no folder part, no '..')"
        )
    return Source(name=name, **entry)


def folder(path: str | Path | None = None) -> Path:
    """Where the downloaded curves are kept: ``path``, ``$QBENCH_REFERENCE_CURVES`` or the
    user cache."""
    if path:
        return Path(path)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path.home() / ".cache" / "qbench" / "reference-curves"


def check_names(names: Iterable[Any], fail: Callable[[str, str], None]) -> None:
    """Every name must be in the catalogue (``fail(index, message)`` names the closest)."""
    _, curves = catalogue()
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in curves:
            close = difflib.get_close_matches(str(name), list(curves), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            fail(
                str(i),
                f"unknown reference curve {name!r}{hint} (known: {', '.join(sorted(curves))})",
            )


def _refuse(index: str, message: str) -> None:
    raise QbenchError(message)


def load(name: str, where: str | Path | None = None) -> ReferenceCurve:
    """The curve ``name`` from the downloaded files (QbenchError naming the fix if absent)."""
    _, curves = catalogue()
    if name not in curves:
        raise QbenchError(f"unknown reference curve {name!r}")
    src = curves[name]
    path = folder(where) / src.file
    if not path.is_file():
        raise QbenchError(
            f"reference curve {name!r}: {path} is missing; fetch it with "
            f"`qbench reference-curves --download {name}`; {offline_route([name], where)}"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != src.sha256:
        raise QbenchError(f"reference curve {name!r}: {path} does not match its SHA-256")
    doc = json.loads(data)
    results = doc["results"]
    bpp, psnr = results.get("bpp", []), results.get("psnr-rgb", [])
    if not bpp or len(bpp) != len(psnr):
        raise QbenchError(f"reference curve {name!r}: {path} holds no (bpp, psnr-rgb) points")
    ms_ssim = results.get("ms-ssim-rgb") or [float("nan")] * len(bpp)
    order = sorted(range(len(bpp)), key=lambda i: bpp[i])
    return ReferenceCurve(
        src,
        f"{doc.get('name', name)} (published)",
        tuple(float(bpp[i]) for i in order),
        tuple(float(psnr[i]) for i in order),
        tuple(float(ms_ssim[i]) for i in order),
    )


def offline(names: Iterable[str], where: str | Path | None = None) -> fetch.Offline:
    """How to have the files of the curves ``names`` without a download from here: the
    folder they go to (to copy them by hand), and the commands: ``qbench reference-curves
    --download NAME --url 'file:///PATH/{commit}/...'`` from a copy of the repository at
    the pinned commit, or ``curl`` on a machine with network."""
    settings, curves = catalogue()
    names = list(names)
    target = folder(where)
    files = [curves[n].file for n in names if n in curves] or ["{file}"]
    template, commit = settings["url"], settings["commit"]
    base, tail = _mirror_parts(template)
    inside = tail.split("/")[1:-1]
    dir_option = f" --dir {shlex.quote(str(target))}" if where else ""
    place = (
        f"copy {', '.join(files)} into {target} (the folder of --dir, ${ENV}, default "
        f"~/.cache/qbench/reference-curves) by hand, from a copy of {base} at commit "
        f"{commit}" + (f" (its {'/'.join(inside)}/)" if inside else "")
    )
    copies = " && ".join(
        fetch.curl(template.format(commit=commit, file=f), target / f) for f in files
    )
    command = (
        f"`qbench reference-curves --download {' '.join(names)}{dir_option} --url "
        f"'file:///PATH/{tail}'` with that copy in /PATH/{commit}, or on a machine with "
        f"network `{copies}` and copy the file{'s' if len(files) > 1 else ''} into {target}"
    )
    return fetch.Offline(place, command)


def offline_route(names: Iterable[str], where: str | Path | None = None) -> str:
    """The words of :func:`offline` for a message (a missing curve in :func:`load`, the
    warnings before a run): the same route a failed download gives."""
    route = offline(names, where)
    return f"without network: {route.place}; or {route.command}"


def _mirror_parts(template: str) -> tuple[str, str]:
    """``(what the mirror copies, the URL template's path from {commit} on)``:
    ``("https://github.com/InterDigitalInc/CompressAI", "{commit}/results/image/kodak/{file}")``
    for the shipped catalogue."""
    parts = urllib.parse.urlparse(template)
    segments = parts.path.strip("/").split("/")
    cut = next((i for i, seg in enumerate(segments) if "{commit}" in seg), 0)
    head = "/".join(segments[:cut])
    if parts.netloc == "raw.githubusercontent.com" and head:
        base = f"https://github.com/{head}"
    elif parts.scheme:
        base = f"{parts.scheme}://{parts.netloc}/{head}".rstrip("/")
    else:
        base = head or template
    return base, "/".join(segments[cut:])


def download(
    names: Iterable[str] | None = None,
    where: str | Path | None = None,
    url: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Fetch the catalogue's files (all, or ``names``) into :func:`folder`, SHA-256 checked.

    ``url`` replaces the catalogue's URL template (``{commit}`` and ``{file}``
    are filled in; a ``file://`` mirror works too). A file already there with
    the right checksum is kept (nothing is fetched). A download whose checksum
    differs is not kept (:class:`qbench.fetch.ChecksumError`); a download that
    cannot reach its URL raises :class:`qbench.fetch.FetchError` naming the URL,
    the folder to copy the file into by hand and the mirror command
    (:func:`offline_route`).
    """
    settings, curves = catalogue()
    wanted = list(curves) if names is None else list(names)
    check_names(wanted, _refuse)
    target = folder(where)
    template = url or settings["url"]
    done = []
    for name in wanted:
        src = curves[name]
        path = target / src.file
        fresh = not (path.is_file() and _sha256(path) == src.sha256)
        address = template.format(commit=settings["commit"], file=src.file)
        fetch.fetch(
            address,
            path,
            f"sha256:{src.sha256}",
            what=f"reference curve {name!r}",
            offline=offline([name], where),
        )
        if fresh:
            echo(f"fetched {name} -> {path}")
        done.append(path)
    return done


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
