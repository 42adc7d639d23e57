"""Image I/O for dataset plugins: read any image file as an RGB float tensor.

Grayscale, palette, 16-bit, RGBA (composited on white) and CMYK images become
8-bit RGB, turned upright by their EXIF orientation (as a viewer shows them).
Only regular files are read (a FIFO or a link to a device named ``*.png`` is
refused without reading). A file Pillow cannot read, and an image of more than
``PIL.Image.MAX_IMAGE_PIXELS`` pixels (known from its header, refused before
decoding), is reported by path
(:class:`BadImageError`); :class:`ImageDataset` skips such files and keeps the
list in ``skipped``; qbench shows that list once, before the first job, and
records it in every row that evaluates the dataset.

**A dataset plugin** registers a factory that returns an :class:`ImageDataset`:
``ImageDataset(files, root=folder)`` reads files (names relative to ``root``),
``ImageDataset.from_tensors(images, names)`` wraps images the plugin makes;
:func:`list_images` lists a folder's images. ``qbench new-plugin NAME --kind
dataset`` writes a working one.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from qbench.registry import QbenchError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class BadImageError(QbenchError):
    """An image file that cannot be read; the message names the file."""


class DatasetError(QbenchError):
    """A dataset that cannot be used at all (missing folder, no readable image)."""


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def pixel_limit() -> int | None:
    """The most pixels an image may have: ``PIL.Image.MAX_IMAGE_PIXELS`` now (``None``: no
    limit). Pillow only refuses twice that; qbench refuses an image above it from its
    header, before anything is decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else None


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (symlinks followed).

    Opened without blocking and checked on the open file, so a FIFO, a device (a link to
    ``/dev/zero``), a socket or a folder named like an image is refused at once
    (:class:`BadImageError` saying what it is), never read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BadImageError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadImageError(f"{path}: not a regular file ({_kind(mode)}); not read")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _kind(mode: int) -> str:
    for test, what in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return what
    return "not a plain file"


_READ_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


def _open_image(f: BinaryIO) -> Image.Image:
    """``Image.open(f)`` without Pillow's warning for an image above its pixel limit (qbench
    refuses such an image itself, naming the file: :func:`_check_pixels`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(f)


def _check_pixels(path: Path, img: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of ``img`` from its header; :class:`BadImageError` above
    :func:`pixel_limit`."""
    w, h = img.size
    limit = pixel_limit()
    if limit is not None and w * h > limit:
        raise BadImageError(
            f"{path}: {w}x{h} is {w * h / 1e6:.1f} MP, more than the {limit / 1e6:.1f} MP an "
            "image may have (PIL.Image.MAX_IMAGE_PIXELS); not decoded"
        )
    return h, w


def image_header(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the image ``path`` as stored (before its EXIF orientation,
    which swaps them at most), read from its header without decoding the pixels; the file
    is checked as far as that can be done without decoding (``Image.verify``).
    :class:`BadImageError` for a file that is not a regular file, not an image, damaged,
    or larger than :func:`pixel_limit`."""
    path = Path(path)
    try:
        with _open_regular(path) as f, _open_image(f) as img:
            size = _check_pixels(path, img)
            img.verify()
    except BadImageError:
        raise
    except _READ_ERRORS as exc:
        raise BadImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if size[0] < 1 or size[1] < 1:
        raise BadImageError(f"{path}: image has no pixels")
    return size


def load_image_u8(path: str | Path) -> Tensor:
    """Read ``path`` as a ``3 x H x W`` uint8 RGB tensor; :class:`BadImageError` on failure
    (not a regular file, not an image, or more pixels than :func:`pixel_limit`, which is
    checked from the header before decoding)."""
    path = Path(path)
    try:
        with _open_regular(path) as f, _open_image(f) as img:
            _check_pixels(path, img)
            img.load()
            arr = _to_rgb8(ImageOps.exif_transpose(img))
    except BadImageError:
        raise
    except _READ_ERRORS as exc:
        raise BadImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BadImageError(f"{path}: image has no pixels")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_image(path: str | Path) -> Tensor:
    """Read ``path`` as a ``3 x H x W`` float32 RGB tensor in [0, 1]."""
    return load_image_u8(path).float().div_(255.0)


def image_size(ds: Any, i: int) -> tuple[int, int]:
    """``(height, width)`` of image ``i`` of dataset ``ds`` without decoding it when the
    dataset knows it (:meth:`ImageDataset.size`), else from the image itself."""
    size = getattr(ds, "size", None)
    if callable(size):
        return tuple(size(i))  # type: ignore[return-value]
    return tuple(ds.uint8(i).shape[-2:])  # type: ignore[return-value]


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Entries under ``root`` named like images (by suffix), sorted by path.

    Symlinked subfolders are followed; each real folder is visited once, so a
    symlink loop ends. Nothing is opened here: an entry that is not a regular file
    (a FIFO, a link to a device, a broken link) is listed too, so that
    :class:`ImageDataset` skips it by name (it reads regular files only) rather than
    losing it silently.
    """
    root = Path(root)
    found = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if not recursive:
            dirs[:] = []
        for f in files:
            p = Path(folder) / f
            if p.suffix.lower() in IMAGE_SUFFIXES:
                found.append(p)
    return sorted(found)


def _name(path: Path, root: str | Path | None) -> str:
    """``path`` relative to ``root`` (POSIX separators), or its file name without a root."""
    if root is None:
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


class ImageDataset(Sequence):
    """A sequence of RGB float images in [0, 1], shape ``3 x H x W``, with names.

    Each file's header is read at construction (its size, checked against
    :func:`pixel_limit`, and the file verified as far as that goes without decoding);
    the pixels are decoded at the first use of an image and kept as uint8, so an
    image an evaluation leaves out for its size (``[eval] max_pixels``) is never
    decoded. Unreadable files (and entries that are not regular files: a FIFO, a
    device) are skipped and listed in ``skipped`` as ``(path, reason)``; a file whose
    pixels turn out damaged at decoding raises :class:`BadImageError` naming it.
    Images are named by their path relative to ``root`` when given (two ``img.png`` in
    different subfolders stay apart), else by file name. A dataset with no readable
    image raises :class:`DatasetError`.
    """

    def __init__(
        self, files: Iterable[str | Path], description: str = "", root: str | Path | None = None
    ) -> None:
        self.description = description
        self.names: list[str] = []
        self.paths: list[Path] = []
        self.skipped: list[tuple[str, str]] = []
        self._sizes: list[tuple[int, int]] = []
        self._images: list[Tensor | None] = []
        for f in files:
            try:
                size = image_header(f)
            except BadImageError as exc:
                self.skipped.append((str(f), str(exc)))
                continue
            self.paths.append(Path(f))
            self.names.append(_name(Path(f), root))
            self._sizes.append(size)
            self._images.append(None)
        if not self._images:
            bad = f" ({len(self.skipped)} unreadable)" if self.skipped else ""
            raise DatasetError(f"no readable image in {description or 'dataset'}{bad}")

    @classmethod
    def from_tensors(
        cls, images: Sequence[Tensor], names: Sequence[str], description: str = ""
    ) -> ImageDataset:
        """A dataset of images already in memory (``3 x H x W`` uint8 RGB tensors).

        For dataset plugins that make or decode their images themselves.
        """
        if len(images) != len(names) or not images:
            raise DatasetError(
                f"{description or 'dataset'}: need one name per image and at least one image"
            )
        for name, img in zip(names, images):
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise DatasetError(
                    f"{description or 'dataset'}: image {name!r} is not a 3 x H x W uint8 "
                    f"tensor ({tuple(img.shape)} {img.dtype})"
                )
        ds = cls.__new__(cls)
        ds.description = description
        ds.names, ds.paths, ds.skipped = list(names), [], []
        ds._images = [img.contiguous() for img in images]
        ds._sizes = [(int(img.shape[1]), int(img.shape[2])) for img in ds._images]
        return ds

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        return self.uint8(i).float().div(255.0)

    def size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i`` without decoding it: from the file's header
        (as stored, before its EXIF orientation, which at most swaps them)."""
        return self._sizes[i]

    def uint8(self, i: int) -> Tensor:
        """Image ``i`` as a ``3 x H x W`` uint8 tensor (decoded at its first use)."""
        img = self._images[i]
        if img is None:
            img = self._images[i] = load_image_u8(self.paths[i])
        return img
