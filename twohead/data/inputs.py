"""Images a user hands in for inference, read in order: arrays, PIL images, image files, ``.npy`` files, folders.

:func:`read_images` yields ``(source, uint8 [3, H, W])`` per image at its own size (the caller brings it to the
model's resolution with :func:`twohead.data.loader.test_transform`). Files are decoded by the data pipeline's own
decoder (:func:`twohead.data.sources.decode_bytes`: any format to RGB) as they are reached, so a large folder is
never held in memory at once. Anything that is not uint8 RGB raises :class:`DataError` naming the input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twohead.data.sources import decode_bytes
from twohead.data.types import DataError

__all__ = ["read_images", "image_files", "EXTENSIONS"]

_HINT = "expected uint8 RGB pixels shaped H x W x 3 (one image) or N x H x W x 3"


def _extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS  # the listing image-folder datasets use

    return (*IMG_EXTENSIONS, ".npy")


EXTENSIONS = _extensions()


def image_files(folder: Path) -> list[Path]:
    """Image (and ``.npy``) files under ``folder``, recursively, sorted by path."""
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()), key=str)


def read_images(images: Any, where: str = "the input") -> Iterator[tuple[str | None, torch.Tensor]]:
    """``(source file or None, uint8 [3, H, W])`` for every image of ``images``, in order.

    ``images``: a uint8 H x W x 3 array or N x H x W x 3 batch, a PIL image, an image file, a ``.npy`` array file
    (source ``file.npy[i]`` for a batch), a folder (searched recursively, sorted by path), or a list of these."""
    from PIL import Image

    if isinstance(images, (str, os.PathLike)):
        yield from _read_path(Path(images))
    elif isinstance(images, np.ndarray):
        yield from ((None, img) for img in _array_images(images, where))
    elif isinstance(images, Image.Image):
        yield None, torch.from_numpy(np.asarray(images.convert("RGB")).copy()).permute(2, 0, 1)
    elif isinstance(images, (list, tuple)):
        for i, item in enumerate(images):
            yield from read_images(item, f"item {i} of the input")
    else:
        raise DataError(
            f"cannot read {where} ({type(images).__name__}) as images; pass uint8 H x W x 3 arrays, PIL images, "
            "image files or folders (or a list of them)"
        )


def _read_path(path: Path) -> Iterator[tuple[str | None, torch.Tensor]]:
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(f"no images under {path} (looked for {', '.join(EXTENSIONS)} files, recursively)")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"image path {path} does not exist")
    for f in files:
        if f.suffix.lower() == ".npy":
            try:
                arr = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read the array file {f}: {e}") from None
            for i, img in enumerate(_array_images(arr, str(f))):
                yield (f"{f}[{i}]" if arr.ndim == 4 else str(f)), img
            continue
        try:
            img = decode_bytes(f.read_bytes())
        except OSError as e:
            raise DataError(f"cannot read the image file {f}: {e.strerror or e}") from None
        except ValueError:
            raise DataError(f"cannot decode the image file {f}: corrupt, truncated or not an image format") from None
        yield str(f), img


def _array_images(arr: np.ndarray, where: str) -> Iterator[torch.Tensor]:
    """uint8 [3, H, W] views of an H x W x 3 image or an N x H x W x 3 batch; :class:`DataError` otherwise."""
    if arr.dtype != np.uint8:
        raise DataError(f"{where} has dtype {arr.dtype}; {_HINT}")
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3 or min(arr.shape[-3:-1]) < 1:
        raise DataError(f"{where} has shape {tuple(arr.shape)}; {_HINT} (convert grey or RGBA images to RGB first)")
    batch = torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 4 else arr[None]))
    return (img.permute(2, 0, 1) for img in batch)
