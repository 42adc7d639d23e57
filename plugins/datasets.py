"""Image datasets: ``folder``, the test sets of the papers (``kodak``, ``tecnick``,
``clic-pro``) and the embedded ``embedded`` set.

Each test set reads a local folder, keeps the real download code (an archive
or the files, checked against the published digest, unpacked into the
folder; tested on local mirrors, never downloaded in the tests) and names the
images it expects when some are missing (in the rows' ``skipped`` column).
"""

from __future__ import annotations

import os
import shlex
import zipfile
from importlib import resources
from pathlib import Path

import qbench
from qbench.fetch import FetchError, Offline, curl, fetch
from qbench.images import BadImageError, DatasetError, ImageDataset, list_images, load_image_u8
from qbench.results import read_run_record

KODAK_URL = "http://r0k.us/graphics/kodak/kodak/"
KODAK_SHA256 = {
    "kodim01.png": "6b4fbe6f3e8e0e20150d5b0c32248bf072e22b5989d415f96f796c5b7004a70f",
    "kodim02.png": "1788370471429d992750a09caf6702ac74e56962447de02520d4b161738c0369",
    "kodim03.png": "b9c800ee568f0b18c983817df08d9f7f24a7ddb3abfdc31bde9234c4fde83137",
    "kodim04.png": "0c60c62599ad33fd78b29c36013fbe4120946f6c327c0ef0ec6983297fb48d23",
    "kodim05.png": "ccf694ceb6bbf431e0009ed0d5573a8ff0915095b69ddfb527b91d8325897f5e",
    "kodim06.png": "f4212cc927d1d579c712843cf8320c7eccb571e5ea80456022ffe99d67e9cd5d",
    "kodim07.png": "7cdd6d63ae0a245f6f9d983d740e11c6808c2efc24f8351aad9b5f676c27b55a",
    "kodim08.png": "5a6a089bdb47605287c00d89ebf2a5312981eb998c94b5853d917c93a9066cdb",
    "kodim09.png": "4d8d801592aeaf446978bbd1c83b76c498242d0f684769311a4e7248289500bf",
    "kodim10.png": "7aca487dc83db732a5690b7affe8558e9dadf5bb44a4589ba2b607480a07228b",
    "kodim11.png": "c7c02bd6e942d1181518e3ce2d97cf0451e4494a5e9d6ddee276940e4875d746",
    "kodim12.png": "df571f5e66d1aefd764ea77855e81e3be61528c34962a0fd1d50557502162c1e",
    "kodim13.png": "797949ce1152ef157ff0a1231c95cb8ed7641615e0b0f5f77f851a44aee19e8d",
    "kodim14.png": "08a1898d5702f32e7d9f94a94651d74a62cb9325475775a558b388c8d98f1846",
    "kodim15.png": "416c475f39b0eb9203ce7f77d2af8824f5bffc1a86a4605865017f04c41639b9",
    "kodim16.png": "5d03303693decdf7a1e1e930b5ca6684283aa80a9e7d8d6a842a74fa5f790640",
    "kodim17.png": "19d90e98e5835efae20a6e17e22e5ac6814ee2c8efb32d188ea4359abaf9f5bd",
    "kodim18.png": "83df267dfec61e9b9d3756c422502160b2fab595650c73a8b12940540ad09ec5",
    "kodim19.png": "86560efe85a13413b228ef7e42dde0d439b25a94fb8e2d6fb1dc1631cf48853b",
    "kodim20.png": "1ae187d92b3a4483b6717f7fd08592846ffdfc340c6424f6756627a27f3d8ea7",
    "kodim21.png": "26e193795108c4b5ec47206ae4ff07a353d2492947f7a7ae8d380e042b74027b",
    "kodim22.png": "627b76fccf714b4ddffb739b2eb63ba2817cf5b5a8e222079542dcf2cfdda939",
    "kodim23.png": "85c67d7ea758cb0604fb6980ab0c65091a2eefa7b3b50cbb1bc702a60206dfe5",
    "kodim24.png": "9f1c26df52217bd49f998a720a2ffeba41a535cf826f4ae32e355fb2b0bbc0fe",
}


def folder(path: str, recursive: bool = True) -> ImageDataset:
    """Every image (png/jpg/bmp/tiff/webp/ppm) under ``path``, sorted by path.

    qbench's own run directories below ``path`` (a folder holding a ``run.json`` that
    qbench wrote: ``path = "."`` beside a matrix whose runs go to ``runs/``) are left
    out, and the dataset's description names them: their plots are no training images.
    """
    root = Path(path).expanduser()
    if root.is_file():
        raise DatasetError(
            f"dataset folder {root} is a file, not a folder; path names a folder of images"
        )
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    runs: dict[Path, bool] = {}
    files = [f for f in list_images(root, recursive=recursive) if not _in_run_dir(f, root, runs)]
    excluded = sorted(d.relative_to(root).as_posix() for d, is_run in runs.items() if is_run)
    description = f"folder {root}"
    if excluded:
        description += f" (without qbench's run directories {', '.join(excluded)})"
    if not files:
        raise DatasetError(f"dataset folder {root} holds no image file")
    try:
        return ImageDataset(files, description=description, root=root)
    except DatasetError as exc:
        raise DatasetError(f"{exc}: {_unreadable(files)}") from None


def _in_run_dir(file: Path, root: Path, runs: dict[Path, bool]) -> bool:
    """Whether ``file`` lies in a qbench run directory below ``root`` (``runs`` caches the
    folders seen: ``folder -> is a run directory``)."""
    for parent in file.parents:
        if parent == root or root not in parent.parents:
            return False
        if parent not in runs:
            held, _ = read_run_record(parent / "run.json")
            runs[parent] = held is not None
        if runs[parent]:
            return True
    return False


def _unreadable(files: list[Path], shown: int = 5) -> str:
    """The first ``shown`` unreadable ``files`` with why, for an error message."""
    problems = []
    for f in files:
        try:
            load_image_u8(f)
        except BadImageError as exc:
            problems.append(str(exc))
    more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


class DatasetDownloadError(DatasetError, FetchError):
    """A test set's file or archive that could not be fetched, or whose digest is not the
    published one; the message says how to get it without network."""


def kodak_offline(dest: str | Path, base_url: str = KODAK_URL) -> Offline:
    """Where the Kodak images go when they cannot be downloaded here, and the command that
    fetches them on a machine with network."""
    dest = Path(dest).expanduser()
    base = base_url.rstrip("/") + "/"
    loop = (
        f"for i in $(seq -w 1 24); do curl -fL --create-dirs -o {shlex.quote(str(dest))}"
        f"/kodim$i.png {shlex.quote(base)}kodim$i.png; done"
    )
    return Offline(
        place=f"put kodim01.png..kodim24.png (from {base}) into {dest} (the dataset's "
        "path = ... or $QBENCH_KODAK)",
        command=f"on a machine with network `{loop}`, then copy the 24 files here",
    )


def download_kodak(dest: str | Path, base_url: str = KODAK_URL) -> Path:
    """Fetch kodim01..24 into ``dest`` and verify each file's SHA-256 (:mod:`qbench.fetch`).

    Files already present with the right checksum are kept (nothing is fetched). A
    download whose checksum does not match is not kept and is reported. ``base_url`` may
    be ``file://`` (a local mirror). A file that cannot be fetched raises
    :class:`DatasetDownloadError` naming the URL, the folder and the command.
    """
    dest = Path(dest).expanduser()
    for name, digest in KODAK_SHA256.items():
        url = base_url.rstrip("/") + "/" + name
        try:
            fetch(
                url,
                dest / name,
                f"sha256:{digest}",
                what=f"Kodak {name}",
                offline=kodak_offline(dest, base_url),
            )
        except FetchError as exc:
            raise DatasetDownloadError(str(exc)) from exc
    return dest


def kodak(path: str | None = None, download: bool = False) -> ImageDataset:
    """The 24 Kodak images (kodim01..24) from ``path``.

    ``path`` defaults to ``$QBENCH_KODAK`` or ``~/.cache/qbench/kodak``. With
    ``download = true`` missing files are fetched and checksum-verified first.
    """
    root = Path(path or os.environ.get("QBENCH_KODAK", "~/.cache/qbench/kodak")).expanduser()
    if download:
        download_kodak(root)
    if not root.is_dir():
        raise DatasetError(
            f"Kodak folder {root} does not exist (set path = ..., $QBENCH_KODAK, "
            "or download = true)"
        )
    files = [root / n for n in KODAK_SHA256 if (root / n).exists()]
    if not files:
        raise DatasetError(f"Kodak folder {root} holds none of kodim01..24.png")
    return _test_set(root, "kodak", files, list(KODAK_SHA256))


#: Tecnick TESTIMAGES, SAMPLING set (Asuni, Giachetti, "TESTIMAGES: a large-scale archive
#: for testing visual devices and basic image processing algorithms", STAG 2014): the 100
#: RGB 1200x1200 images the STanH paper evaluates on, in the archive's RGB/RGB_OR_1200x1200.
TECNICK_URL = (
    "https://sourceforge.net/projects/testimages/files/OLD/OLD_SAMPLING/testimages.zip/download"
)
TECNICK_MEMBERS = "RGB/RGB_OR_1200x1200/"
TECNICK_NAMES = [f"RGB_OR_1200x1200_{i:03d}.png" for i in range(1, 101)]

#: CLIC professional sets: (archive URL, SHA-1 as published with it, images expected).
#: The 2020 validation set (41 images) and the 2021 test set.
CLIC_PRO = {
    "valid": (
        "https://data.vision.ee.ethz.ch/cvl/clic/professional_valid_2020.zip",
        "196a602548afcc1949e5ec3a5dd0f6e713b34201",
        41,
    ),
    "test": (
        "https://storage.googleapis.com/clic2021_public/professional_test_2021.zip",
        "6dadb31eeae6cee8d2455a35818129eb68b0adbb",
        None,
    ),
}


def archive_offline(url: str, dest: Path, members: str, sha1: str | None, where: str) -> Offline:
    """Where the images of a test set's archive go when it cannot be downloaded here (the
    archive can be unpacked by hand into the folder) and the commands."""
    zipname = f"{dest.name or 'images'}.zip"
    check = f" && echo '{sha1}  {zipname}' | sha1sum -c" if sha1 else ""
    unzip = (
        f"unzip -j -o -C {shlex.quote(zipname)} {shlex.quote(members + '*.png')} "
        f"-x '*/._*' -d {shlex.quote(str(dest))}"
    )
    return Offline(
        place=f"unpack its PNG images{' under ' + members if members else ''} by hand, flat, "
        f"into {dest} ({where})" + (f"; its SHA-1 is {sha1}" if sha1 else ""),
        command=f"on a machine with network `{curl(url, zipname)}{check}`, copy "
        f"{zipname} here and `{unzip}`",
    )


def download_archive(
    url: str,
    dest: str | Path,
    members: str = "",
    sha1: str | None = None,
    expect: list[str] | None = None,
    where: str = "the dataset's path = ...",
) -> Path:
    """Fetch a zip archive, check it, and unpack its PNG images under ``members`` into ``dest``.

    ``sha1``: the archive's published digest (a mismatch deletes the download
    and raises). ``expect``: file names that must all be in the archive (the
    content check of an archive published without a digest). Only image files
    are written, flat, by their base name; ``url`` may be ``file://`` (a mirror).
    ``where``: how a user chooses ``dest`` (for the message of a download that fails,
    :class:`DatasetDownloadError`, which says how to unpack the archive by hand).
    """
    dest = Path(dest).expanduser()
    archive = dest / ".download.zip"
    if sha1 is None:  # nothing tells a leftover from another archive: fetch it again
        archive.unlink(missing_ok=True)
    try:
        fetch(
            url,
            archive,
            f"sha1:{sha1}" if sha1 else None,
            what=f"the archive of {dest}",
            offline=archive_offline(url, dest, members, sha1, where),
            timeout=120,
        )
    except FetchError as exc:
        raise DatasetDownloadError(str(exc)) from exc
    try:
        with zipfile.ZipFile(archive) as z:
            wanted = [
                n
                for n in z.namelist()
                if n.startswith(members)
                and n.lower().endswith(".png")
                and not Path(n).name.startswith("._")
            ]
            names = {Path(n).name for n in wanted}
            missing = sorted(set(expect or ()) - names)
            if missing:
                raise DatasetError(
                    f"{url}: the archive lacks {len(missing)} expected images under "
                    f"{members or '/'} (e.g. {', '.join(missing[:3])}); nothing kept"
                )
            for n in wanted:
                (dest / Path(n).name).write_bytes(z.read(n))
    finally:
        archive.unlink(missing_ok=True)
    return dest


def _test_set(root: Path, name: str, files: list[Path], expected: list[str] | int | None):
    """The dataset of ``files`` with the expected images that are missing named as skipped."""
    if not files:
        raise DatasetError(f"{name} folder {root} holds none of its images")
    ds = ImageDataset(files, description=f"{name} {root}", root=root)
    if isinstance(expected, list):
        present = {f.name for f in files}
        ds.skipped += [
            (str(root / n), f"missing from {root} ({name} expects it)")
            for n in expected
            if n not in present
        ]
    elif isinstance(expected, int) and len(files) != expected:
        ds.skipped.append((str(root), f"{name} expects {expected} images, {len(files)} found"))
    return ds


def _root(path: str | None, env: str, default: str) -> Path:
    return Path(path or os.environ.get(env, default)).expanduser()


def tecnick(path: str | None = None, download: bool = False) -> ImageDataset:
    """Tecnick TESTIMAGES SAMPLING, RGB 1200x1200: ``RGB_OR_1200x1200_001..100.png``.

    ``path`` defaults to ``$QBENCH_TECNICK`` or ``~/.cache/qbench/tecnick``.
    ``download = true`` fetches the TESTIMAGES archive and unpacks that folder
    (no digest is published with it: the archive must hold all 100 images).
    """
    root = _root(path, "QBENCH_TECNICK", "~/.cache/qbench/tecnick")
    if download and not all((root / n).exists() for n in TECNICK_NAMES):
        download_archive(
            TECNICK_URL,
            root,
            TECNICK_MEMBERS,
            expect=TECNICK_NAMES,
            where="path = ... or $QBENCH_TECNICK",
        )
    if not root.is_dir():
        raise DatasetError(
            f"Tecnick folder {root} does not exist (set path = ..., $QBENCH_TECNICK, or "
            "download = true)"
        )
    files = [root / n for n in TECNICK_NAMES if (root / n).exists()]
    return _test_set(root, "tecnick", files, TECNICK_NAMES)


def clic_pro(split: str = "valid", path: str | None = None, download: bool = False):
    """CLIC professional images: ``split = "valid"`` (2020 validation, 41 images) or
    ``"test"`` (2021 test). ``path`` defaults to ``$QBENCH_CLIC/professional-<split>`` or
    ``~/.cache/qbench/clic/professional-<split>``; ``download = true`` fetches the
    archive and checks its published SHA-1."""
    if split not in CLIC_PRO:
        raise ValueError(f"split must be one of {', '.join(CLIC_PRO)}, got {split!r}")
    url, sha1, count = CLIC_PRO[split]
    base = os.environ.get("QBENCH_CLIC", "~/.cache/qbench/clic")
    root = Path(path).expanduser() if path else Path(base).expanduser() / f"professional-{split}"
    if download and not (root.is_dir() and list_images(root, recursive=False)):
        download_archive(
            url,
            root,
            sha1=sha1,
            where=f"path = ... or $QBENCH_CLIC/professional-{split}",
        )
    if not root.is_dir():
        raise DatasetError(
            f"CLIC folder {root} does not exist (set path = ..., $QBENCH_CLIC, or download = true)"
        )
    return _test_set(root, f"clic-pro {split}", list_images(root, recursive=False), count)


def embedded(split: str = "eval") -> ImageDataset:
    """Small Kodak crops shipped inside qbench (``split`` = ``train`` or ``eval``).

    Training crops come from kodim01-12, evaluation crops from kodim13-24;
    sources in ``qbench/data/images/SOURCES.md``.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    root = resources.files("qbench") / "data" / "images"
    files = sorted(Path(str(p)) for p in root.iterdir() if p.name.startswith(split + "-"))
    return ImageDataset(files, description=f"embedded {split} images")


@qbench.hookimpl
def qbench_register_datasets(register):
    register(
        "folder", folder, description="every image under a folder (path = ...)", paths=("path",)
    )
    register(
        "kodak",
        kodak,
        description="Kodak kodim01..24 (path = ..., download = true)",
        paths=("path",),
    )
    register(
        "tecnick",
        tecnick,
        description="Tecnick TESTIMAGES RGB 1200x1200, 100 images (path = ..., download = true)",
        paths=("path",),
    )
    register(
        "clic-pro",
        clic_pro,
        description="CLIC professional, split = valid (2020) | test (2021) (path = ..., "
        "download = true)",
        paths=("path",),
    )
    register("embedded", embedded, description="small Kodak crops shipped with qbench")
