"""Make the CIFAR-10 data a GPU machine needs for :mod:`rayjobs.reproduce`, small enough to carry (< 64 MiB).

    python -m rayjobs.carry                           # -> .data/cifar10/{train,test}.parquet, prints sizes
    python -m rayjobs.carry --imbalances 100 --dest /tmp/carry

The full train split is 86 MB; the device tool carries at most 64 MiB (working tree included). Only the images
that the runs can select are needed: LDAM-DRW's long-tailed subsets for the requested imbalances plus the
``data.val_per_class`` validation reserve (:mod:`twohead.data.lt`).

Why the file keeps all 50,000 rows: the LT sampler shuffles each class over *all* of its 5,000 training images
(``np.random.RandomState(lt_seed).shuffle`` per class, in label order) and takes ``n_max = len(train) / C``, so
the same subset can only be drawn from the full label column in official order. The carried ``train.parquet``
therefore keeps every row's ``label`` and ``index`` (and the schema metadata: class names etc.) and drops only
the *image bytes* of rows no requested subset selects (a null ``image``). ``twohead.data`` decodes just the
selected rows, so it draws identical ids and identical pixels from the carried folder; a config that would select
a dropped row (another imbalance, a larger ``val_per_class``) fails with "missing image bytes" naming the row,
never silently. The per-class shuffle does not depend on the imbalance, so the union of subsets is the subset of
the smallest imbalance (10) plus the reserve: about 20,600 images, ~36 MB, plus the 17 MB test split.

After writing, the plans built from the carried folder are checked against the source folder (same train and
validation ids for every requested imbalance, every selected row has its image).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["needed_ids", "write_carry", "verify_carry", "CarryError", "main"]

MIB = 2**20
CARRY_KEY = b"twohead_carry"


class CarryError(RuntimeError):
    """The carried folder would be too large, or does not reproduce the source's LT subsets."""


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


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_carry(
    dest: str | Path,
    source: str | Path | None = None,
    imbalances: Sequence[float] = (100, 50, 10),
    val_per_class: Sequence[int] = (20,),
    lt_seed: int = 0,
    max_mib: float = 60.0,
) -> dict:
    """Write ``dest/cifar10/train.parquet`` (all rows, images only where needed) and ``dest/cifar10/test.parquet``
    (copied), verify them (:func:`verify_carry`) and return ``{"files": {name: bytes}, "total_bytes", ...}``.

    Raises :class:`CarryError` when the two files together exceed ``max_mib`` MiB (the device tool's 64 MiB
    includes the working tree, hence the 60 MiB default) -- checked before anything is written into ``dest``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from twohead.config import data_root

    src_root = Path(source) if source else data_root()
    src_dir = src_root / "cifar10"
    for name in ("train.parquet", "test.parquet"):
        if not (src_dir / name).is_file():
            raise CarryError(f"{src_dir / name} does not exist: point --source (or $TWOHEAD_DATA) at the shared data folder")
    dest = Path(dest)
    out_dir = dest / "cifar10"
    if out_dir.resolve() == src_dir.resolve():
        raise CarryError(f"--dest {dest} is the source folder {src_root}; choose another folder")

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
    md[CARRY_KEY] = json.dumps({
        "source": str((src_dir / "train.parquet").resolve()),
        "imbalances": [float(b) for b in imbalances],
        "val_per_class": [int(v) for v in val_per_class],
        "lt_seed": int(lt_seed),
        "rows": int(table.num_rows),
        "rows_with_image": int(mask.sum()),
        "note": "image is null outside the LDAM-DRW LT subsets + validation reserves listed here",
    }).encode()
    slim = table.set_column(i, table.schema.field(i), kept).replace_schema_metadata(md)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".train.parquet.tmp{os.getpid()}"
    pq.write_table(slim, tmp, row_group_size=5000, compression="zstd")
    test_bytes = (src_dir / "test.parquet").stat().st_size
    total = tmp.stat().st_size + test_bytes
    if total > max_mib * MIB:
        tmp.unlink()
        raise CarryError(
            f"the carried CIFAR-10 would be {total / MIB:.1f} MiB ({int(mask.sum())} train images for imbalances "
            f"{list(imbalances)} + test) > --max-mib {max_mib:g}; carry fewer imbalances (e.g. --imbalances 100)"
        )
    os.replace(tmp, out_dir / "train.parquet")
    _atomic_copy(src_dir / "test.parquet", out_dir / "test.parquet")
    verify_carry(dest, src_root, imbalances, val_per_class, lt_seed)
    files = {f"cifar10/{n}": (out_dir / n).stat().st_size for n in ("train.parquet", "test.parquet")}
    return {"dest": str(dest), "files": files, "total_bytes": sum(files.values()), "train_images": int(mask.sum()),
            "imbalances": list(imbalances), "val_per_class": list(val_per_class)}


def verify_carry(dest: str | Path, source: str | Path, imbalances: Sequence[float], val_per_class: Sequence[int], lt_seed: int = 0) -> None:
    """Raise :class:`CarryError` unless, for every requested (imbalance, val_per_class), the LT train and validation
    ids (and labels) planned from ``dest`` equal those planned from ``source``, and every selected row of the
    carried file has its image bytes. Reads labels and the image column's null mask only; decodes nothing."""
    import pyarrow.parquet as pq

    from twohead.config import DataConfig
    from twohead.data import plan_data

    img = pq.read_table(Path(dest) / "cifar10" / "train.parquet", columns=["image"]).column("image")
    has_image = ~img.is_null().to_numpy(zero_copy_only=False)
    for b in imbalances:
        for v in val_per_class:
            plans = [plan_data(DataConfig(dataset="cifar10-lt", root=str(r), imbalance=float(b), val_per_class=int(v), lt_seed=lt_seed))
                     for r in (source, dest)]
            for split in ("train", "val", "test"):
                a, c = getattr(plans[0], split), getattr(plans[1], split)
                if a is None and c is None:
                    continue
                if a is None or c is None or not (np.array_equal(a.ids, c.ids) and np.array_equal(a.labels, c.labels)):
                    raise CarryError(f"imbalance {b:g}, val_per_class {v}: the {split} split planned from {dest} differs from {source}")
            for split in ("train", "val"):
                sp = getattr(plans[1], split)
                if sp is not None and not has_image[sp.rows].all():
                    row = int(sp.rows[~has_image[sp.rows]][0])
                    raise CarryError(f"imbalance {b:g}, val_per_class {v}: {split} row {row} of the carried file has no image")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rayjobs.carry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default=".data", help="folder to write cifar10/{train,test}.parquet into (default .data, git-ignored)")
    p.add_argument("--source", default="", help="shared data folder holding cifar10/ (default $TWOHEAD_DATA)")
    p.add_argument("--imbalances", type=_floats, default=[100.0, 50.0, 10.0], help="LT subsets to keep (default 100,50,10)")
    p.add_argument("--val-per-class", type=_ints, default=[20], help="validation reserves to keep (default 20, the config default)")
    p.add_argument("--lt-seed", type=int, default=0)
    p.add_argument("--max-mib", type=float, default=60.0, help="refuse to write more than this (the device tool carries 64 MiB incl. the working tree)")
    args = p.parse_args(argv)
    from twohead.data import DataError

    try:
        info = write_carry(args.dest, args.source or None, args.imbalances, args.val_per_class, args.lt_seed, args.max_mib)
    except (CarryError, DataError) as e:
        print(f"carry: error: {e}", file=sys.stderr)
        return 2
    for name, size in info["files"].items():
        print(f"{Path(info['dest']) / name}  {size / MIB:.2f} MiB")
    print(f"total {info['total_bytes'] / MIB:.2f} MiB ({info['total_bytes']} B); {info['train_images']} train images "
          f"with pixels for imbalances {[f'{b:g}' for b in info['imbalances']]}, val_per_class {info['val_per_class']}; "
          f"LT subsets verified against the source")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
