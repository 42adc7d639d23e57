"""Downloads: the one path every file qbench fetches goes through, and what to do offline.

:func:`fetch` keeps one file at ``dest`` through `pooch <https://www.fatiando.org/pooch>`_:
a file already there with the right digest is kept without touching the network, a
download is written to a temporary file beside ``dest`` and moved into place only when
its digest (``"sha256:..."`` or ``"sha1:..."``) matches, and ``file://`` URLs (a local
mirror, a copy made on another machine) are copied, so a machine without network works
from a mirror the same way.

Every failure to reach the file (no route, DNS, HTTP error, timeout, a ``file://`` path
that does not exist) raises :class:`FetchError`, whose message names the URL, where the
file goes so it can be put there by hand (:class:`Offline`), and the exact command that
gets it; a digest that does not match raises :class:`ChecksumError`, which says the file
was not kept and what was expected. :func:`offline_message` is that wording, for callers
whose download is not made here (a library's own loader).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shlex
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qbench.registry import QbenchError


class FetchError(QbenchError):
    """A file that could not be fetched; the message says how to get it without network."""


class ChecksumError(FetchError):
    """A fetched file whose digest is not the expected one (it was not kept)."""


@dataclass(frozen=True)
class Offline:
    """What to do when a file cannot be fetched here.

    ``place``: where the file goes and how to put it there by hand (the folder, the
    setting or environment variable that chooses it). ``command``: the exact command(s)
    that get it (a mirror option of qbench, or ``curl`` on a machine with network).
    """

    place: str
    command: str


def offline_message(what: str, url: str, reason: str, offline: Offline) -> str:
    """The error of a download of ``what`` from ``url`` that failed for ``reason``: the URL,
    the local route (``offline.place``) and the command (``offline.command``)."""
    return (
        f"{what}: cannot fetch {url} ({reason}). Without network here: {offline.place}. "
        f"Command: {offline.command}"
    )


def curl(url: str, path: str | Path) -> str:
    """The ``curl`` command that downloads ``url`` to ``path``, creating its folder (quoted
    for a POSIX shell)."""
    return f"curl -fL --create-dirs -o {shlex.quote(str(path))} {shlex.quote(url)}"


def fetch(
    url: str,
    dest: str | Path,
    known_hash: str | None,
    *,
    what: str,
    offline: Offline,
    timeout: float = 60.0,
) -> Path:
    """Keep the file of ``url`` at ``dest`` and return ``dest``.

    ``known_hash``: ``"sha256:<hex>"`` or ``"sha1:<hex>"`` (``None``: no digest is
    published; then a file at ``dest`` is kept as it is). A file at ``dest`` with that
    digest is kept and nothing is fetched. ``url`` may be ``http(s)://``, ``ftp://`` or
    ``file://`` (copied). ``what`` names the file in messages; ``offline`` is the route
    a :class:`FetchError` gives. ``timeout``: seconds to connect or between two reads.
    """
    import pooch

    dest = Path(dest).expanduser()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"{what}: cannot create {dest.parent} ({exc.strerror or exc})") from exc
    seen: dict[str, str] = {}

    def download(address: str, output: str, owner: Any) -> None:
        scheme = urllib.parse.urlparse(address).scheme
        if scheme == "file":
            _copy(address, output)
        elif scheme in ("http", "https"):
            pooch.HTTPDownloader(progressbar=False, timeout=timeout)(address, output, owner)
        else:
            pooch.downloaders.choose_downloader(address)(address, output, owner)
        if known_hash:
            seen["digest"] = _digest(Path(output), known_hash.split(":")[0])

    try:
        with _quiet(pooch.get_logger()):
            pooch.retrieve(url, known_hash, fname=dest.name, path=dest.parent, downloader=download)
    except ValueError:
        if "digest" not in seen or known_hash is None:
            raise
        algorithm, expected = known_hash.split(":", 1)
        raise ChecksumError(
            f"{what}: checksum mismatch: {url} has {_label(algorithm)} {seen['digest']}, "
            f"expected {expected}; the file was not kept"
        ) from None
    except OSError as exc:  # requests' errors are OSErrors too
        raise FetchError(offline_message(what, url, reason(exc, timeout), offline)) from exc
    return dest


def reason(exc: BaseException, timeout: float | None = None) -> str:
    """A short reason for a failed download: ``HTTP 404 Not Found``, ``timed out after
    60 s``, ``Connection refused``, ``Name or service not known``, ``no such file ...``."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} {getattr(response, 'reason', '') or ''}".strip()
    code = getattr(exc, "code", None)  # urllib's HTTPError
    if isinstance(code, int):
        return f"HTTP {code} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(exc)
    if isinstance(exc, TimeoutError) or "timed out" in text.lower():
        return f"timed out after {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, FileNotFoundError):
        return f"no such file {exc.filename}" if exc.filename else "no such file"
    found = re.findall(r"\[Errno -?\d+\] ([^'\"()\]]+)", text)
    if found:
        return found[-1].strip().rstrip(".")
    inner = getattr(exc, "reason", None)
    if inner is not None and inner is not exc:
        return reason(inner, timeout) if isinstance(inner, BaseException) else str(inner)
    return f"{type(exc).__name__}: {text}"[:200]


def _copy(address: str, output: str) -> None:
    """Copy the file a ``file://`` URL names to ``output`` (pooch has no file:// downloader)."""
    parts = urllib.parse.urlparse(address)
    where = urllib.request.url2pathname(parts.path)
    if parts.netloc and parts.netloc != "localhost":
        where = f"//{parts.netloc}{where}"  # a UNC share
    shutil.copyfile(where, output)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _label(algorithm: str) -> str:
    return {"sha256": "SHA-256", "sha1": "SHA-1", "md5": "MD5"}.get(algorithm, algorithm.upper())


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """pooch logs each download to stderr; the callers say what they fetched themselves."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
