"""Long-tailed datasets: CIFAR-10/100-LT and Tiny-ImageNet-LT (LDAM-DRW's exact subsets), ImageNet-LT (official
lists), its generated stand-in, and bring-your-own Parquet / image-folder data.

``build_data(cfg.data) -> LTData`` is the one entry point; ``describe_counts(cfg.data)`` gives the per-class
counts without decoding. :class:`FileDataset` (torch) is imported lazily so ``import twohead.data`` stays light.
"""

from __future__ import annotations

from typing import Any

from twohead.data.build import build_data, describe_counts, plan_data
from twohead.data.lt import carve_val, ldam_counts, ldam_lt_split, stratified_subsample
from twohead.data.types import DataError, LTData, Split

__all__ = [
    "DataError",
    "LTData",
    "Split",
    "build_data",
    "describe_counts",
    "plan_data",
    "ldam_counts",
    "ldam_lt_split",
    "carve_val",
    "stratified_subsample",
    "load_images",
    "FileDataset",
    "collate_skip_corrupt",
]

_LAZY = {"load_images", "FileDataset", "collate_skip_corrupt"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from twohead.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'twohead.data' has no attribute {name!r}")
