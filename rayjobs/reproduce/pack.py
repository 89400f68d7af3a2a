"""The CIFAR-10 images a reproduction reads, packed for a GPU machine without network access.

    python -m rayjobs.reproduce --pack DIR                    # DIR/cifar10/{train,test}.parquet (~53 MB)
    TWOHEAD_DATA=DIR python -m rayjobs.reproduce ...          # on the offline machine: the same runs, same data

The full CIFAR-10 train split is 86 MB; only the images the runs can select are needed: LDAM-DRW's long-tailed
subsets for the requested imbalances plus the ``data.val_per_class`` validation reserve (:mod:`twohead.data.lt`).

Why the packed file keeps all 50,000 rows: the LT sampler shuffles each class over *all* of its 5,000 training
images (``np.random.RandomState(lt_seed).shuffle`` per class, in label order) and takes ``n_max = len(train) / C``,
so the same subset can only be drawn from the full label column in official order. The packed ``train.parquet``
therefore keeps every row's ``label`` and ``index`` (and the schema metadata: class names etc.) and drops only the
*image bytes* of rows no requested subset selects (a null ``image``). ``twohead.data`` decodes just the selected
rows, so it draws identical ids and identical pixels from the packed folder; a config that would select a dropped
row (another imbalance, a larger ``val_per_class``) fails with "missing image bytes" naming the row, never
silently. The per-class shuffle does not depend on the imbalance, so the union of subsets is the subset of the
smallest imbalance (10) plus the reserve: about 20,600 images, ~36 MB, plus the 17 MB test split.

After writing, the plans built from the packed folder are checked against the source folder (same train and
validation ids for every requested imbalance, every selected row has its image).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twohead import atomic

__all__ = ["needed_ids", "pack_data", "verify_pack", "PackError"]

PACK_KEY = b"twohead_pack"


class PackError(RuntimeError):
    """The source data is missing, or the packed folder does not reproduce the source's LT subsets."""


def _source_split(root: Path, split: str):
    from twohead.data.cifar import read_cifar_split

    folder = Path(root) / "cifar10"
    return read_cifar_split(folder, 10, split)


def needed_ids(labels: np.ndarray, imbalances: Sequence[float], val_per_class: Sequence[int], lt_seed: int = 0) -> np.ndarray:
    """Sorted official-order ids of every train image that an LT subset (any of ``imbalances``) or its validation
    reserve (any of ``val_per_class``) selects, given the train labels in official order."""
    from twohead.data.lt import ldam_lt_split

    keep: set[int] = set()
    for b in imbalances:
        for v in val_per_class:
            sel = ldam_lt_split(labels, 10, float(b), seed=lt_seed, val_per_class=int(v))
            keep.update(sel.train.tolist())
            keep.update(sel.val.tolist())
    return np.asarray(sorted(keep), dtype=np.int64)


def pack_data(
    dest: str | Path,
    source: str | Path | None = None,
    imbalances: Sequence[float] = (100, 50, 10),
    val_per_class: Sequence[int] = (20,),
    lt_seed: int = 0,
) -> dict:
    """Write ``dest/cifar10/train.parquet`` (all rows, images only where needed) and ``dest/cifar10/test.parquet``
    (copied), verify them (:func:`verify_pack`) and return ``{"files": {name: bytes}, "total_bytes", ...}``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from twohead.config import data_root

    src_root = Path(source) if source else data_root()
    src_dir = src_root / "cifar10"
    for name in ("train.parquet", "test.parquet"):
        if not (src_dir / name).is_file():
            raise PackError(f"{src_dir / name} does not exist: point $TWOHEAD_DATA (or data.root) at the folder holding cifar10/")
    dest = Path(dest)
    out_dir = dest / "cifar10"
    if out_dir.resolve() == src_dir.resolve():
        raise PackError(f"--pack {dest} is the source folder {src_root}; choose another folder")

    src, rows, labels, ids, _names = _source_split(src_root, "train")
    need = needed_ids(labels, imbalances, val_per_class, lt_seed)
    need_rows = rows[need]  # ids are official positions; rows[i] is the source row holding position i

    table = pq.read_table(src_dir / "train.parquet")
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[need_rows] = True
    col = table.column("image")
    kept = pc.if_else(pa.chunked_array([pa.array(mask)]), col, pa.scalar(None, type=col.type))
    i = table.schema.get_field_index("image")
    md = dict(table.schema.metadata or {})
    md[PACK_KEY] = json.dumps(
        {
            "source": str((src_dir / "train.parquet").resolve()),
            "imbalances": [float(b) for b in imbalances],
            "val_per_class": [int(v) for v in val_per_class],
            "lt_seed": int(lt_seed),
            "rows": int(table.num_rows),
            "rows_with_image": int(mask.sum()),
            "note": "image is null outside the LDAM-DRW LT subsets + validation reserves listed here",
        }
    ).encode()
    slim = table.set_column(i, table.schema.field(i), kept).replace_schema_metadata(md)

    atomic.write_bytes(out_dir / "train.parquet", _parquet_bytes(slim))
    with atomic.atomic_path(out_dir / "test.parquet") as tmp:
        shutil.copyfile(src_dir / "test.parquet", tmp)
    verify_pack(dest, src_root, imbalances, val_per_class, lt_seed)
    files = {f"cifar10/{n}": (out_dir / n).stat().st_size for n in ("train.parquet", "test.parquet")}
    return {
        "dest": str(dest),
        "files": files,
        "total_bytes": sum(files.values()),
        "train_images": int(mask.sum()),
        "imbalances": list(imbalances),
        "val_per_class": list(val_per_class),
    }


def verify_pack(
    dest: str | Path, source: str | Path, imbalances: Sequence[float], val_per_class: Sequence[int], lt_seed: int = 0
) -> None:
    """Raise :class:`PackError` unless, for every requested (imbalance, val_per_class), the LT train and validation
    ids (and labels) planned from ``dest`` equal those planned from ``source``, and every selected row of the
    carried file has its image bytes. Reads labels and the image column's null mask only; decodes nothing."""
    import pyarrow.parquet as pq

    from twohead.config import DataConfig
    from twohead.data import plan_data

    img = pq.read_table(Path(dest) / "cifar10" / "train.parquet", columns=["image"]).column("image")
    has_image = ~img.is_null().to_numpy(zero_copy_only=False)
    for b in imbalances:
        for v in val_per_class:
            plans = [
                plan_data(
                    DataConfig(dataset="cifar10-lt", root=str(r), imbalance=float(b), val_per_class=int(v), lt_seed=lt_seed)
                )
                for r in (source, dest)
            ]
            for split in ("train", "val", "test"):
                a, c = getattr(plans[0], split), getattr(plans[1], split)
                if a is None and c is None:
                    continue
                if a is None or c is None or not (np.array_equal(a.ids, c.ids) and np.array_equal(a.labels, c.labels)):
                    raise PackError(
                        f"imbalance {b:g}, val_per_class {v}: the {split} split planned from {dest} differs from {source}"
                    )
            for split in ("train", "val"):
                sp = getattr(plans[1], split)
                if sp is not None and not has_image[sp.rows].all():
                    row = int(sp.rows[~has_image[sp.rows]][0])
                    raise PackError(f"imbalance {b:g}, val_per_class {v}: {split} row {row} of the packed file has no image")


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=5000, compression="zstd")
    return buf.getvalue()
