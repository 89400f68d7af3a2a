"""ImageNet-LT (Liu et al. 2019, OLTR; paper Sec. 3.1): the official split lists over ILSVRC-2012 images.

* ``<root>/imagenet_lt/ImageNet_LT_{train,val,test}.txt`` -- lines ``<relative path> <label>``; train is the
  115,846-image long-tailed list (1280 .. 5 per class), val 20 per class (carved from ILSVRC train), test
  50 per class (the ILSVRC val set).
* ``data.path`` -- the ILSVRC-2012 image root that the relative paths start from (``train/nXXXX/...``,
  ``val/nXXXX/...``).

Splits are file-backed (``Split.files``); images are decoded lazily by :class:`twohead.data.FileDataset`.
The validation split is always the official list (``data.val_per_class`` does not apply).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twohead.config import DataConfig
from twohead.data.lt import check_labels
from twohead.data.plan import IMAGENET_MEAN, IMAGENET_STD, DatasetPlan, SplitPlan
from twohead.data.sources import FileSource
from twohead.data.types import DataError

__all__ = ["plan_imagenet_lt", "read_split_list", "IMAGENET_LT_CLASSES"]

IMAGENET_LT_CLASSES = 1000
_TRAIN_HINT = (
    "ImageNet_LT_train.txt is not bundled with the shared data; download it from "
    "github.com/facebookresearch/classifier-balancing (data/ImageNet_LT/ImageNet_LT_train.txt, a git-lfs file) "
    "or the OLTR release (github.com/zhmiao/OpenLongTailRecognition-OLTR, ImageNet_LT_open.zip)"
)


def read_split_list(path: str | Path, num_classes: int = IMAGENET_LT_CLASSES) -> tuple[list[str], np.ndarray]:
    """Parse a ``path label`` list file; returns (relative paths, int64 labels). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list {path} does not exist")
    rel, labels, linenos = [], [], []
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(f"line {lineno} of {path} is malformed: {line!r} (expected '<path> <label>')")
            try:
                lab = int(parts[1])
            except ValueError:
                raise DataError(f"line {lineno} of {path}: label {parts[1]!r} is not an integer") from None
            rel.append(parts[0])
            labels.append(lab)
            linenos.append(lineno)
    arr = np.asarray(labels, dtype=np.int64)
    check_labels(arr, num_classes, lambda i: f"line {linenos[i]} of {path}")
    return rel, arr


def _wnids(rel: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Class names = the WordNet id folder of each label's images (``train/n01440764/x.JPEG`` -> n01440764)."""
    names = [str(c) for c in range(num_classes)]
    seen = set()
    for r, lab in zip(rel, labels.tolist()):
        if lab not in seen:
            parent = Path(r).parent.name
            if parent:
                names[lab] = parent
            seen.add(lab)
            if len(seen) == num_classes:
                break
    return names


def plan_imagenet_lt(cfg: DataConfig, root: Path, num_classes: int = IMAGENET_LT_CLASSES) -> DatasetPlan:
    lt_dir = Path(root) / "imagenet_lt"
    lists = {s: lt_dir / f"ImageNet_LT_{s}.txt" for s in ("train", "val", "test")}
    if not lists["train"].is_file():
        raise DataError(f"{lists['train']} does not exist: {_TRAIN_HINT}; put it in {lt_dir}")
    for s in ("val", "test"):
        if not lists[s].is_file():
            raise DataError(
                f"{lists[s]} does not exist; get it from github.com/facebookresearch/classifier-balancing "
                f"(data/ImageNet_LT/) and put it in {lt_dir}"
            )
    if not cfg.path:
        raise DataError("data.path must name the ILSVRC-2012 image root (the folder holding train/ and val/) for imagenet-lt")
    img_root = Path(cfg.path).expanduser()
    if not img_root.is_dir():
        raise DataError(f"ImageNet image root {img_root} (data.path) does not exist")

    splits = {}
    names: list[str] | None = None
    for s, p in lists.items():
        rel, labels = read_split_list(p, num_classes)
        if not rel:
            raise DataError(f"split list {p} is empty")
        first = img_root / rel[0]
        if not first.is_file():  # one stat catches a wrong data.path without touching 186k files
            raise DataError(f"{first} (line 1 of {p}) does not exist: is data.path={str(img_root)!r} the ILSVRC-2012 root?")
        if names is None:
            names = _wnids(rel, labels, num_classes)
        n = len(rel)
        src = FileSource([str(img_root / r) for r in rel], tag=f"imagenet-lt-{s}")
        splits[s] = SplitPlan(src, np.arange(n, dtype=np.int64), labels, np.arange(n, dtype=np.int64))
    notes = []
    if cfg.val_per_class and cfg.val_per_class != 20:
        notes.append(f"data.val_per_class={cfg.val_per_class} ignored: ImageNet-LT uses its official 20-per-class val list")
    return DatasetPlan(
        name="imagenet-lt",
        class_names=names or [str(c) for c in range(num_classes)],
        image_size=cfg.image_size or 224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        file_backed=True,
        notes=notes,
    )
