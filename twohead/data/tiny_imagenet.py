"""Tiny-ImageNet-LT (paper Sec. 3.1): 200 classes, 64 px, LT by LDAM-DRW's rule, tested on the official val split.

Layout (the official ``tiny-imagenet-200.zip``) under ``<root>/tiny-imagenet-200``::

    wnids.txt                       # optional: the 200 wnids (checked against train/)
    words.txt                       # optional: wnid <TAB> names, for readable class names
    train/<wnid>/images/*.JPEG      # 500 per class
    val/images/*.JPEG + val/val_annotations.txt   # file <TAB> wnid <TAB> bbox..., 50 per class

Classes are the sorted wnids (torchvision ImageFolder's order); train images within a class are in sorted file
name order, so ``ids`` (positions in that listing) are stable. The LT subset uses the same LDAM-DRW procedure
as CIFAR (n_max = 100,000 / 200 = 500, numpy seed ``data.lt_seed``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twohead.config import DataConfig
from twohead.data.lt import ldam_lt_split
from twohead.data.plan import IMAGENET_MEAN, IMAGENET_STD, DatasetPlan, SplitPlan
from twohead.data.sources import FileSource
from twohead.data.types import DataError

__all__ = ["plan_tiny_imagenet", "TINY_URL"]

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def _is_image(p: Path) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return p.suffix.lower() in IMG_EXTENSIONS


def plan_tiny_imagenet(cfg: DataConfig, root: Path) -> DatasetPlan:
    base = Path(root) / "tiny-imagenet-200"
    if not base.is_dir():
        if not cfg.download:
            raise DataError(f"Tiny-ImageNet not found at {base}; unzip {TINY_URL} into {Path(root)} or set data.download=true")
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_URL, download_root=str(root), filename="tiny-imagenet-200.zip", md5=TINY_MD5)
    train_dir, val_dir = base / "train", base / "val"
    ann = val_dir / "val_annotations.txt"
    for p in (train_dir, ann):
        if not p.exists():
            raise DataError(f"Tiny-ImageNet is incomplete: {p} does not exist (expected the official tiny-imagenet-200 layout)")
    wnids = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not wnids:
        raise DataError(f"no class folders under {train_dir}")
    listed = base / "wnids.txt"
    if listed.is_file():
        expected = sorted(w.strip() for w in listed.read_text().split() if w.strip())
        if expected != wnids:
            missing = sorted(set(expected) - set(wnids))[:5]
            extra = sorted(set(wnids) - set(expected))[:5]
            raise DataError(f"class folders under {train_dir} do not match {listed}: missing {missing}, unexpected {extra}")
    index = {w: i for i, w in enumerate(wnids)}
    names = list(wnids)
    words = base / "words.txt"
    if words.is_file():
        table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
        names = [table.get(w, w).split(",")[0].strip() or w for w in wnids]

    paths, labels = [], []
    for w in wnids:
        imgs = sorted(p for p in (train_dir / w / "images").glob("*") if _is_image(p))
        paths += [str(p) for p in imgs]
        labels += [index[w]] * len(imgs)
    labels_arr = np.asarray(labels, dtype=np.int64)
    C = len(wnids)
    sel = ldam_lt_split(labels_arr, C, cfg.imbalance, seed=cfg.lt_seed, val_per_class=cfg.val_per_class, class_names=names)
    src = FileSource(paths, tag="tiny-imagenet-train")

    tpaths, tlabels = [], []
    for lineno, line in enumerate(ann.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"line {lineno} of {ann} is malformed: {line!r} (expected file<TAB>wnid<TAB>...)")
        if parts[1] not in index:
            raise DataError(f"line {lineno} of {ann}: wnid {parts[1]!r} is not one of the {C} training classes")
        tpaths.append(str(val_dir / "images" / parts[0]))
        tlabels.append(index[parts[1]])
    tsrc = FileSource(tpaths, tag="tiny-imagenet-val")
    n_test = len(tpaths)
    return DatasetPlan(
        name="tiny-imagenet-lt",
        class_names=names,
        image_size=cfg.image_size or 64,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train=SplitPlan(src, sel.train, labels_arr[sel.train], sel.train.copy()),
        val=SplitPlan(src, sel.val, labels_arr[sel.val], sel.val.copy()) if cfg.val_per_class else None,
        test=SplitPlan(tsrc, np.arange(n_test), np.asarray(tlabels, dtype=np.int64), np.arange(n_test)),
        notes=list(sel.notes),
    )
