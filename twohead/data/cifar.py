"""CIFAR-10-LT / CIFAR-100-LT (paper Sec. 3.1) with LDAM-DRW's exact long-tailed subset.

Sources, per split, in order of preference:

1. ``<root>/cifar10/{train,test}.parquet`` (``cifar100`` for C = 100): columns ``image`` (lossless WebP),
   ``label``, ``index`` (position in the official split order), class names in the schema metadata.
2. torchvision's pickles under ``<root>/cifar10/cifar-10-batches-py`` (``cifar100/cifar-100-python``),
   downloaded there by ``torchvision.datasets.CIFAR10/100`` when ``data.download=true``.

Rows are put in official order (by ``index``) before LDAM's sampling, because LDAM indexes torchvision's arrays.
The LT subset and the validation reserve are described in :mod:`twohead.data.lt`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twohead.config import DataConfig
from twohead.data.lt import check_labels, ldam_lt_split
from twohead.data.plan import CIFAR_MEAN, CIFAR_STD, DatasetPlan, SplitPlan
from twohead.data.sources import ArraySource, ParquetSource, _Source
from twohead.data.types import DataError

__all__ = ["plan_cifar", "read_cifar_split"]

_TV_FOLDER = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


def read_cifar_split(
    folder: Path, num_classes: int, split: str, download: bool = False
) -> tuple[_Source, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Open one CIFAR split without decoding images.

    Returns ``(source, rows, labels, ids, class_names)`` with rows/labels/ids in the official split order
    (``rows`` are positions in ``source``).
    """
    name = "cifar10" if num_classes == 10 else "cifar100"
    pq_path = folder / f"{split}.parquet"
    tv_path = folder / _TV_FOLDER[num_classes]
    if pq_path.is_file():
        src = ParquetSource([pq_path], tag=f"{name}-{split}")
        md = src.schema_metadata()
        names = json.loads(md["class_names"]) if "class_names" in md else [str(c) for c in range(num_classes)]
        if len(names) != num_classes:
            raise DataError(f"{pq_path} lists {len(names)} class_names in its schema metadata; {name} has {num_classes}")
        raw = np.asarray(src.read_column("label"))
        if not np.issubdtype(raw.dtype, np.integer):
            raise DataError(f"column 'label' of {pq_path} has type {raw.dtype}; expected integers")
        check_labels(raw, num_classes, src.where)
        n = len(raw)
        if "index" in src.column_names():
            index = np.asarray(src.read_column("index"), dtype=np.int64)
            if not np.array_equal(np.sort(index), np.arange(n)):
                raise DataError(f"column 'index' of {pq_path} is not a permutation of 0..{n - 1}")
            rows = np.argsort(index, kind="stable")  # source row holding official position i
        else:
            rows = np.arange(n, dtype=np.int64)
        return src, rows.astype(np.int64), raw[rows].astype(np.int64), np.arange(n, dtype=np.int64), names
    if tv_path.is_dir() or download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
        created = _missing_parents(folder)
        archive = folder / cls.filename
        had_archive = archive.exists()
        try:
            ds = cls(root=str(folder), train=(split == "train"), download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise DataError(f"torchvision could not load {tv_path}: {e}") from None
        except OSError as e:  # no network (URLError is an OSError), refused, disk full ...
            if not had_archive:
                archive.unlink(missing_ok=True)  # a partial download is not a dataset
            _remove_empty(created)
            reason = " ".join(str(getattr(e, "reason", e)).split())[:160]
            raise DataError(
                f"could not download {name} into {folder} ({reason}); without network access, copy {split}.parquet "
                f"(or torchvision's {_TV_FOLDER[num_classes]}/) there, or point TWOHEAD_DATA / data.root at a folder "
                f"holding {name}/"
            ) from None
        labels = np.asarray(ds.targets, dtype=np.int64)
        check_labels(labels, num_classes, lambda i: f"row {i} of {tv_path} ({split})")
        n = len(labels)
        idx = np.arange(n, dtype=np.int64)
        return ArraySource(np.asarray(ds.data, dtype=np.uint8), tag=f"{name}-{split}"), idx, labels, idx.copy(), list(ds.classes)
    raise DataError(
        f"{name} {split} split not found: neither {pq_path} nor torchvision's folder {tv_path} exists; "
        f"put the Parquet file there, or set data.download=true to let torchvision download it into {folder}"
    )


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet (a failed download removes them again if still empty)."""
    out = []
    p = Path(folder).absolute()
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:  # deepest first
        try:
            p.rmdir()
        except OSError:  # not empty (something else was written there) or already gone: leave it
            pass


def plan_cifar(cfg: DataConfig, root: Path, num_classes: int) -> DatasetPlan:
    """CIFAR-{10,100}-LT: LDAM-DRW's LT subset of train, ``val_per_class`` reserve, the official test split."""
    name = "cifar10" if num_classes == 10 else "cifar100"
    folder = Path(root) / name
    src, rows, labels, ids, names = read_cifar_split(folder, num_classes, "train", cfg.download)
    sel = ldam_lt_split(labels, num_classes, cfg.imbalance, seed=cfg.lt_seed, val_per_class=cfg.val_per_class, class_names=names)
    train = SplitPlan(src, rows[sel.train], labels[sel.train], ids[sel.train])
    val = SplitPlan(src, rows[sel.val], labels[sel.val], ids[sel.val]) if cfg.val_per_class else None
    tsrc, trows, tlabels, tids, _ = read_cifar_split(folder, num_classes, "test", cfg.download)
    test = SplitPlan(tsrc, trows, tlabels, tids)
    return DatasetPlan(
        name=f"{name}-lt",
        class_names=names,
        image_size=cfg.image_size or 32,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        train=train,
        val=val,
        test=test,
        notes=list(sel.notes),
    )
