"""Pixels for the training loop: :func:`load_images` (any split, any indices) and :class:`FileDataset`
(the DataLoader path for file-backed splits such as ImageNet-LT); :func:`test_transform` is how one test image
reaches the model's resolution (evaluation and :func:`twohead.load`'s ``predict`` share it).

:class:`FileDataset` yields ``(uint8 [3, S, S], label, position)``: augmentation happens here (ImageNet
recipe: RandomResizedCrop + horizontal flip for training, decoded at the smallest JPEG scale that covers the crop,
:func:`twohead.data.decode_crop.decode_random_resized_crop`; resize to S/0.875 + center crop for evaluation), while
normalisation with ``LTData.mean/std`` is left to the loop, on the device, exactly as for in-memory splits.
``position`` is the sample's index in the split, so the loop can look up its cluster id (Sec. 2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, default_collate

from twohead.config import DataConfig
from twohead.data.decode_crop import decode_random_resized_crop
from twohead.data.files import IN_MEMORY_MAX_SIDE
from twohead.data.sources import ArraySource, FileSource, decode_bytes, fit_size
from twohead.data.types import DataError, Split

__all__ = ["load_images", "FileDataset", "collate_skip_corrupt", "eval_transform", "test_transform", "file_backed"]

# Datasets whose splits are always file-backed (the ImageNet-LT reader; the stand-in is planned by it too).
_FILE_BACKED_DATASETS = ("imagenet-lt", "imagenet-lt-standin")

log = logging.getLogger("twohead.data")


def load_images(split: Split, indices: Sequence[int] | np.ndarray, size: int | None = None) -> np.ndarray:
    """uint8 [n, S, S, 3] pixels of ``split[indices]`` (S = ``size`` or the split's own image size).

    In-memory splits are sliced (and resized only if ``size`` differs); file-backed splits are decoded,
    resized on the shorter side and center-cropped (e.g. for the pixel embedding of k-means clustering).
    """
    idx = np.asarray(indices, dtype=np.int64)
    if split.images is not None:
        out = split.images[idx]
        if size and size != out.shape[1]:
            out, _ = ArraySource(out).decode(np.arange(len(out)), size)
        return out
    size = size or split.image_size
    if not size:
        raise DataError("load_images on a file-backed split needs size (the split has no image_size)")
    out, _ = FileSource(split.files or []).decode(idx, size, skip_corrupt=False, cache=False)
    return out


def eval_transform(size: int):
    """The evaluation crop of file-backed data: resize the shorter side to ``size / 0.875``, centre-crop ``size``
    (the standard ImageNet eval crop, 256 -> 224). Takes and returns uint8 ``[3, H, W]`` tensors."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(int(round(size / 0.875)), antialias=True), v2.CenterCrop(size)])


def file_backed(cfg: DataConfig, image_size: int) -> bool:
    """Whether ``build_data(cfg)`` streams its splits from files at ``image_size`` (the rule of the plans:
    ImageNet-LT and its stand-in always, image folders above ``IN_MEMORY_MAX_SIDE``), decided without the data."""
    return cfg.dataset in _FILE_BACKED_DATASETS or (cfg.dataset == "folder" and image_size > IN_MEMORY_MAX_SIDE)


def test_transform(cfg: DataConfig, image_size: int) -> Callable:
    """uint8 ``[3, H, W]`` -> uint8 ``[3, S, S]`` exactly as a test image of this data reaches the model: file-backed
    data through :func:`eval_transform` (as :class:`FileDataset` evaluates it), in-memory data as it was decoded
    (:func:`~twohead.data.sources.fit_size`: shorter side to S, centre crop; an S x S image keeps its pixels)."""
    if file_backed(cfg, image_size):
        return eval_transform(image_size)
    return lambda img: fit_size(img, image_size)


class FileDataset(Dataset):
    """Decode-on-read dataset over a file-backed :class:`Split`.

    With ``skip_corrupt`` an undecodable image yields None (logged with its path); pass
    :func:`collate_skip_corrupt` as the DataLoader's ``collate_fn`` to drop it from its batch.
    """

    def __init__(self, split: Split, train: bool, image_size: int | None = None, skip_corrupt: bool = False):

        if split.files is None:
            raise DataError("FileDataset needs a file-backed split (Split.files); in-memory splits are batched directly")
        self.files = split.files
        self.labels = split.labels
        self.size = int(image_size or split.image_size)
        if self.size < 1:
            raise DataError(f"FileDataset image_size={self.size} must be >= 1")
        self.skip_corrupt = skip_corrupt
        self.augmented = train  # the BatchSource flag: crop/flip already applied
        self.train = train
        # Training decodes through decode_random_resized_crop (in __getitem__); evaluation uses the eval crop.
        self.transform = eval_transform(self.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read image file {path} (row {i}): {e}") from None
        try:
            # Training: crop box first, then decode only as many pixels as it needs (one function with Ray Data).
            img = decode_random_resized_crop(data, self.size) if self.train else self.transform(decode_bytes(data))
        except ValueError as e:
            if self.skip_corrupt:
                log.warning("skipping undecodable image %s (row %d): %s", path, i, e)
                return None
            raise DataError(f"cannot decode image file {path} (row {i}): {e}; set data.skip_corrupt=true to skip it") from None
        return img, int(self.labels[i]), i


def collate_skip_corrupt(batch: list):
    """``default_collate`` without the None entries :class:`FileDataset` returns for skipped images
    (None when the whole batch was skipped)."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None
