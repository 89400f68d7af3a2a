"""The data contract every dataset builder returns: :class:`Split`, :class:`LTData` and :class:`DataError`.

A split is either *in-memory* (``images`` holds decoded uint8 NHWC pixels, the fast path for 32/64 px data that
can live on the GPU) or *file-backed* (``files`` holds image paths decoded lazily by a DataLoader, for
ImageNet-scale data). Both carry int64 ``labels`` and stable int64 ``ids``: the position of each sample in its
source split (the Parquet ``index`` column, the line of a list file, ...), so a subset can always be traced back
to the exact images it was built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DataError", "Split", "LTData"]


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent (names the file / row / class and the allowed range)."""


@dataclass
class Split:
    """One split (train / val / test) of a dataset.

    Attributes:
        labels: int64 [N] class indices in [0, C).
        ids: int64 [N] stable sample ids = index of each sample within its source split.
        images: uint8 [N, H, W, 3] decoded pixels, or None for a file-backed split.
        files: N image paths, or None for an in-memory split.
        image_size: side length the loader should produce for file-backed splits (0 = the images' own size
            for in-memory splits, where ``images.shape[1]`` is authoritative).
    """

    labels: np.ndarray
    ids: np.ndarray
    images: np.ndarray | None = None
    files: list[str] | None = None
    image_size: int = 0

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        n = len(self.labels)
        if self.labels.ndim != 1 or self.ids.shape != (n,):
            raise DataError(f"Split needs 1-D labels and ids of equal length, got {self.labels.shape} and {self.ids.shape}")
        if (self.images is None) == (self.files is None):
            raise DataError("Split needs exactly one of images (in-memory) or files (file-backed)")
        if self.images is not None:
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[3] != 3:
                raise DataError(f"Split images must be uint8 [N={n}, H, W, 3], got {self.images.dtype} {self.images.shape}")
            if not self.image_size:
                self.image_size = int(self.images.shape[1])
        if self.files is not None and len(self.files) != n:
            raise DataError(f"Split has {n} labels but {len(self.files)} files")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def file_backed(self) -> bool:
        return self.images is None

    def subset(self, idx: Sequence[int] | np.ndarray) -> Split:
        """The samples at positions ``idx`` (ids are kept, so they still point into the source split)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            labels=self.labels[idx],
            ids=self.ids[idx],
            images=None if self.images is None else self.images[idx],
            files=None if self.files is None else [self.files[i] for i in idx.tolist()],
            image_size=self.image_size,
        )


@dataclass
class LTData:
    """A long-tailed dataset ready for training: train (long-tailed), optional balanced val, balanced test.

    ``mean`` / ``std`` are per-channel statistics in [0, 1] units for normalising ``x / 255``.
    ``skipped`` counts undecodable images dropped under ``data.skip_corrupt``; ``notes`` records every
    deviation from the nominal recipe (e.g. the head class capped to keep the validation reserve disjoint).
    """

    name: str
    class_names: list[str]
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: Split
    val: Split | None
    test: Split
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def class_counts(self) -> np.ndarray:
        """Training images per class, int64 [C] (the n_c of Eq. 3)."""
        return np.bincount(self.train.labels, minlength=self.num_classes).astype(np.int64)

    def describe(self) -> str:
        counts = self.class_counts
        lines = [
            f"{self.name}: {self.num_classes} classes, {self.image_size}px, train {len(self.train)} "
            f"(n_max {counts.max()}, n_min {counts.min()}, imbalance {counts.max() / max(counts.min(), 1):.1f}), "
            f"val {0 if self.val is None else len(self.val)}, test {len(self.test)}"
            + (f", skipped {self.skipped} corrupt" if self.skipped else "")
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
