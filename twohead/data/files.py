"""Bring-your-own datasets: a Parquet table (``data.dataset=parquet``) or an image folder (``folder``).

The training split is taken *as given* (already long-tailed; no resampling). ``data.val_per_class`` images per
class are carved from it for validation (see :func:`twohead.data.lt.carve_val`), and the test split comes from
a ``test`` file / folder next to the training data.

Parquet (``data.path`` = a file or a folder):
    columns ``image`` (encoded bytes: PNG / JPEG / WebP ...), ``label`` (integer, or strings mapped through the
    class list), optional integer ``index`` or ``id`` (stable sample ids; default: row position). Class names
    come from the schema metadata key ``class_names`` (a JSON list) when present. Train = the file itself,
    else ``<path>/train.parquet``, else ``<path>/train/*.parquet``, else every ``<path>/*.parquet`` except
    ``test.parquet``; test = ``test.parquet`` or ``test/*.parquet`` beside it. Always decoded into memory.

Folder (``data.path`` = a folder in torchvision ImageFolder layout):
    ``<path>/train/<class>/<image>`` (or ``<path>/<class>/<image>``, ignoring ``test`` / ``val`` folders) and
    ``<path>/test/<class>/<image>``; classes are the sorted training folder names. Small images (side <= 64 px,
    probed on the first training image, or ``data.image_size`` <= 64) are decoded into memory; larger ones stay
    file-backed and stream through :class:`twohead.data.FileDataset`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twohead.config import DataConfig
from twohead.data.lt import carve_val, check_labels, check_nonempty
from twohead.data.plan import IMAGENET_MEAN, IMAGENET_STD, DatasetPlan, SplitPlan
from twohead.data.sources import FileSource, ParquetSource, _Source, decode_bytes
from twohead.data.types import DataError

__all__ = ["plan_parquet", "plan_folder", "IN_MEMORY_MAX_SIDE"]

IN_MEMORY_MAX_SIDE = 64  # folder datasets at or below this side are decoded into (device) memory


def _probe_side(src: _Source) -> int:
    """Shorter side of the first image of ``src`` (decodes one image)."""
    _, data = next(src._iter_bytes(np.zeros(1, dtype=np.int64)))
    try:
        img = decode_bytes(data)
    except ValueError as e:
        raise DataError(f"cannot decode the image at {src.where(0)}: {e}") from None
    return int(min(img.shape[-2:]))


def _carve(cfg: DataConfig, train: SplitPlan, names: list[str]) -> tuple[SplitPlan, SplitPlan | None, list[str]]:
    if not cfg.val_per_class:
        return train, None, []
    tr, va, notes = carve_val(train.labels, len(names), cfg.val_per_class, seed=cfg.lt_seed, class_names=names)
    return train.subset(tr), train.subset(va), notes


# ------------------------------------------------------------------------------------------------
# Parquet
# ------------------------------------------------------------------------------------------------
def _parquet_dir(d: Path) -> list[Path]:
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise DataError(f"no *.parquet files in {d}")
    return files


def _resolve_parquet(path: Path) -> tuple[list[Path], list[Path]]:
    if not path.exists():
        raise DataError(f"Parquet dataset {path} (data.path) does not exist")
    if path.is_file():
        train, base = [path], path.parent
    else:
        base = path
        if (path / "train.parquet").is_file():
            train = [path / "train.parquet"]
        elif (path / "train").is_dir():
            train = _parquet_dir(path / "train")
        else:
            train = [f for f in sorted(path.glob("*.parquet")) if f.name != "test.parquet"]
            if not train:
                raise DataError(f"no training Parquet files in {path} (expected train.parquet, train/*.parquet or *.parquet)")
    if (base / "test.parquet").is_file():
        test = [base / "test.parquet"]
    elif (base / "test").is_dir():
        test = _parquet_dir(base / "test")
    else:
        raise DataError(f"no test split for the Parquet dataset: neither {base / 'test.parquet'} nor {base / 'test'}/ exists")
    if set(test) & set(train):
        raise DataError(f"the Parquet test split {test[0]} is also the training split; point data.path at the training data")
    return train, test


def _parquet_split(src: ParquetSource) -> tuple[np.ndarray | list, np.ndarray]:
    raw = src.read_column("label")
    cols = src.column_names()
    ids = np.arange(len(src), dtype=np.int64)
    for id_col in ("index", "id"):
        if id_col in cols:
            v = src.read_column(id_col)
            if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.integer):
                ids = v.astype(np.int64)
                break
    return raw, ids


def _to_int_labels(raw, src: ParquetSource, names: list[str]) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        if not np.issubdtype(raw.dtype, np.integer):
            raise DataError(f"column 'label' of {src.files[0]} has type {raw.dtype}; expected integers or strings")
        labels = raw.astype(np.int64)
        check_labels(labels, len(names), src.where)
        return labels
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, r in enumerate(raw):
        if r not in index:
            raise DataError(
                f"label {r!r} at {src.where(i)} is not one of the {len(names)} classes {names[:10]}{' ...' if len(names) > 10 else ''}"
            )
        out[i] = index[r]
    return out


def plan_parquet(cfg: DataConfig, root: Path | None = None) -> DatasetPlan:
    train_files, test_files = _resolve_parquet(Path(cfg.path).expanduser())
    tsrc = ParquetSource(train_files, tag=f"parquet-{train_files[0].stem}-train")
    esrc = ParquetSource(test_files, tag=f"parquet-{test_files[0].stem}-test")
    if len(tsrc) == 0:
        raise DataError(f"training Parquet data {train_files[0]} has no rows")
    raw_tr, ids_tr = _parquet_split(tsrc)
    raw_te, ids_te = _parquet_split(esrc)
    kinds = ["integers" if isinstance(r, np.ndarray) else "strings" for r in (raw_tr, raw_te)]
    if kinds[0] != kinds[1]:  # "3" in one split and 3 in the other would silently mean different classes
        raise DataError(
            f"the 'label' column holds {kinds[0]} in the training data {train_files[0]} but {kinds[1]} in the test data "
            f"{test_files[0]}; write the labels of both splits the same way (class indices, or class names)"
        )
    md = tsrc.schema_metadata()
    if "class_names" in md:
        try:
            names = [str(n) for n in json.loads(md["class_names"])]
        except json.JSONDecodeError as e:
            raise DataError(f"schema metadata class_names of {train_files[0]} is not a JSON list: {e}") from None
    elif isinstance(raw_tr, np.ndarray):
        top = int(max(raw_tr.max(initial=-1), raw_te.max(initial=-1) if isinstance(raw_te, np.ndarray) else -1))
        names = [str(c) for c in range(top + 1)]
    else:
        names = sorted(set(raw_tr))
    y_tr = _to_int_labels(raw_tr, tsrc, names)
    y_te = _to_int_labels(raw_te, esrc, names)
    check_nonempty(np.bincount(y_tr, minlength=len(names)), names, f"the training data {train_files[0]}")
    full = SplitPlan(tsrc, np.arange(len(tsrc), dtype=np.int64), y_tr, ids_tr)
    train, val, notes = _carve(cfg, full, names)
    return DatasetPlan(
        name=f"parquet:{Path(cfg.path).name}",
        class_names=names,
        image_size=cfg.image_size or _probe_side(tsrc),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train=train,
        val=val,
        test=SplitPlan(esrc, np.arange(len(esrc), dtype=np.int64), y_te, ids_te),
        notes=notes,
    )


# ------------------------------------------------------------------------------------------------
# Image folder
# ------------------------------------------------------------------------------------------------
def plan_folder(cfg: DataConfig, root: Path | None = None) -> DatasetPlan:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    base = Path(cfg.path).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} (data.path) does not exist")
    train_root = base / "train" if (base / "train").is_dir() else base
    test_root = base / "test"
    if not test_root.is_dir():
        raise DataError(f"no test split for the image folder: {test_root}/<class>/<image> does not exist")
    reserved = {"test", "val"} if train_root == base else set()
    classes = sorted(d.name for d in train_root.iterdir() if d.is_dir() and d.name not in reserved)
    if not classes:
        raise DataError(f"no class folders under {train_root}")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    unknown = sorted(d.name for d in test_root.iterdir() if d.is_dir() and d.name not in class_to_idx)
    if unknown:
        raise DataError(
            f"test class folder(s) {unknown[:5]} under {test_root} are not training classes (allowed: the {len(classes)} folders of {train_root})"
        )
    # torchvision's walker: sorted, extension-filtered, follows links -- the same listing ImageFolder uses.
    tr = make_dataset(str(train_root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    te = make_dataset(str(test_root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    y_tr = np.asarray([t for _, t in tr], dtype=np.int64)
    check_nonempty(np.bincount(y_tr, minlength=len(classes)), classes, f"the training folder {train_root}")
    if not te:
        raise DataError(f"no images under {test_root}")
    tsrc = FileSource([p for p, _ in tr], tag=f"folder-{base.name}-train")
    esrc = FileSource([p for p, _ in te], tag=f"folder-{base.name}-test")
    side = cfg.image_size or _probe_side(tsrc)
    file_backed = side > IN_MEMORY_MAX_SIDE
    if file_backed and not cfg.image_size:
        side = 224
    full = SplitPlan(tsrc, np.arange(len(tr), dtype=np.int64), y_tr, np.arange(len(tr), dtype=np.int64))
    train, val, notes = _carve(cfg, full, classes)
    n_te = len(te)
    return DatasetPlan(
        name=f"folder:{base.name}",
        class_names=classes,
        image_size=side,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train=train,
        val=val,
        test=SplitPlan(
            esrc, np.arange(n_te, dtype=np.int64), np.asarray([t for _, t in te], dtype=np.int64), np.arange(n_te, dtype=np.int64)
        ),
        file_backed=file_backed,
        notes=notes,
    )
