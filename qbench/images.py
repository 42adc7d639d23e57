"""Image I/O for dataset plugins: read any image file as an RGB float tensor.

Grayscale, palette, 16-bit, RGBA (composited on white) and CMYK images become
8-bit RGB, turned upright by their EXIF orientation (as a viewer shows them).
A file Pillow cannot read, and a decompression bomb (more than
``PIL.Image.MAX_IMAGE_PIXELS`` pixels), is reported by path
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
from collections.abc import Iterable, Sequence
from pathlib import Path

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


def load_image_u8(path: str | Path) -> Tensor:
    """Read ``path`` as a ``3 x H x W`` uint8 RGB tensor; :class:`BadImageError` on failure."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = _to_rgb8(ImageOps.exif_transpose(img))
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise BadImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BadImageError(f"{path}: image has no pixels")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_image(path: str | Path) -> Tensor:
    """Read ``path`` as a ``3 x H x W`` float32 RGB tensor in [0, 1]."""
    return load_image_u8(path).float().div_(255.0)


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (by suffix), sorted by path.

    Symlinked subfolders are followed; each real folder is visited once, so a
    symlink loop ends.
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
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
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

    Files are read once at construction and kept as uint8; unreadable files
    are skipped and listed in ``skipped`` as ``(path, reason)``. Images are
    named by their path relative to ``root`` when given (two ``img.png`` in
    different subfolders stay apart), else by file name. A dataset with no readable image raises
    :class:`DatasetError`.
    """

    def __init__(
        self, files: Iterable[str | Path], description: str = "", root: str | Path | None = None
    ) -> None:
        self.description = description
        self.names: list[str] = []
        self.paths: list[Path] = []
        self.skipped: list[tuple[str, str]] = []
        self._images: list[Tensor] = []
        for f in files:
            try:
                img = load_image_u8(f)
            except BadImageError as exc:
                self.skipped.append((str(f), str(exc)))
                continue
            self.paths.append(Path(f))
            self.names.append(_name(Path(f), root))
            self._images.append(img)
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
        return ds

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        return self._images[i].float().div(255.0)

    def uint8(self, i: int) -> Tensor:
        return self._images[i]
