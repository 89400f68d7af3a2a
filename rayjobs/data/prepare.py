"""Turn a twohead dataset into Parquet shards on object storage (a ``ray job submit`` entry point).

    python -m rayjobs.prepare --out s3://bucket/datasets --preset cifar10-lt [--set data.imbalance=50]
    python -m rayjobs.prepare --out s3://bucket/datasets --preset imagenet-lt --set data.path=/mnt/ILSVRC2012

The long-tailed sampling and the validation carve are exactly :func:`twohead.data.build_data`'s, so a Ray run
on the shards sees the same images as a local run of the same config. Each split becomes
``<out>/<name>/<split>/part-NNNNN.parquet`` with columns

- ``image``: encoded bytes -- lossless WebP (re-encoded from the decoded pixels, bit-exact) for images of
  at most 64 px, JPEG for larger in-memory images, the original file bytes for file-backed datasets
  (ImageNet-LT JPEGs are copied, never re-encoded);
- ``label`` (int32), ``id`` (int64, the stable sample id = index in the source split), and ``pos`` (int64,
  the row's position in the split as ``build_data`` returned it; :mod:`rayjobs.labels` uses it to assign
  the same clusters as a local run).

Train rows are written in a seeded random order (streaming readers only shuffle locally, and LT splits
come class by class); val/test keep their order. ``manifest.json`` -- class counts and names, the shard
list with row counts and sha256, image size, the data config -- is published last, so a dataset is
complete exactly when its manifest exists. An existing dataset (complete or not) is never touched
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import itertools
import logging
import math
import os
import sys
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rayjobs.data import storage
from rayjobs.data.manifest import MANIFEST, Manifest, ShardInfo, SplitInfo, dataset_state, foreign_files
from rayjobs.data.storage import DatasetError

__all__ = [
    "DatasetExistsError",
    "WriteInterrupted",
    "default_name",
    "encode_images",
    "main",
    "plan_shards",
    "prepare",
    "write_shard_table",
]

log = logging.getLogger("rayjobs.prepare")

TARGET_SHARD_BYTES = 64 << 20  # big enough to stream efficiently from S3, small enough to spread over readers
ROW_GROUP_ROWS = 1024  # Ray Data can split a shard into read tasks at row-group boundaries
MIN_SHARDS = 16  # enough read tasks to pipeline reads and decoding across a cluster even on CIFAR-size data


class DatasetExistsError(FileExistsError):
    """The output already holds a (complete or interrupted) dataset and ``--overwrite`` was not given."""


class WriteInterrupted(OSError):
    """Writing the shards or the manifest failed part-way (storage unreachable, disk full); nothing was published."""


def default_name(data_cfg: Any) -> str:
    """``cifar10-lt-imb100``, ``imagenet-lt``, ... (+ ``-f<fraction>`` for smoke subsets)."""
    name = data_cfg.dataset
    if name in ("cifar10-lt", "cifar100-lt", "tiny-imagenet-lt"):
        name += f"-imb{data_cfg.imbalance:g}"
    if data_cfg.train_fraction < 1 or data_cfg.eval_fraction < 1:
        name += f"-f{data_cfg.train_fraction:g}-{data_cfg.eval_fraction:g}"
    return name


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------
def _encode_chunk(args: tuple[np.ndarray, str]) -> list[bytes]:
    from PIL import Image

    images, fmt = args
    out = []
    for img in images:
        buf = io.BytesIO()
        if fmt == "webp":
            # method=0: 10x faster than the default effort for ~3% larger files; lossless either way.
            Image.fromarray(img).save(buf, format="WEBP", lossless=True, method=0)
        else:
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def encode_images(images: np.ndarray, fmt: str, threads: int | None = None, chunk: int = 512) -> list[bytes]:
    """Encode uint8 [N, H, W, 3] images as ``webp`` (lossless) or ``jpeg`` (q95), on ``threads`` threads.

    Threads, not processes: Pillow's encoders release the GIL (lossless WebP, the CIFAR case, scales with
    the cores), and the caller may be a Ray driver whose threads a fork would copy.
    """
    if fmt not in ("webp", "jpeg"):
        raise ValueError(f"image format {fmt!r} is unknown; allowed: webp, jpeg")
    chunks = [(images[i : i + chunk], fmt) for i in range(0, len(images), chunk)]
    n = min(threads or len(os.sched_getaffinity(0)), len(chunks))
    if n <= 1:
        return [b for c in chunks for b in _encode_chunk(c)]
    with ThreadPoolExecutor(n) as ex:
        return [b for part in ex.map(_encode_chunk, chunks) for b in part]


def _read_files(paths: Sequence[str], threads: int = 16) -> list[bytes]:
    from twohead.data import DataError

    def read(p: str) -> bytes:
        try:
            with open(p, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(f"image file {p} does not exist") from None

    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(read, paths))


def _file_format(blobs: list[bytes]) -> str:
    return "jpeg" if all(b[:3] == b"\xff\xd8\xff" for b in blobs) else "source"


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------
def write_shard_table(
    images: Sequence[bytes], labels: np.ndarray, ids: np.ndarray, pos: np.ndarray, meta: dict[str, str] | None = None
) -> bytes:
    """One shard as Parquet bytes (image bytes uncompressed: they are compressed already)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("image", pa.binary()), ("label", pa.int32()), ("id", pa.int64()), ("pos", pa.int64())],
        metadata={k.encode(): v.encode() for k, v in (meta or {}).items()},
    )
    table = pa.table(
        {
            "image": pa.array(list(images), type=pa.binary()),
            "label": pa.array(np.asarray(labels, dtype=np.int32)),
            "id": pa.array(np.asarray(ids, dtype=np.int64)),
            "pos": pa.array(np.asarray(pos, dtype=np.int64)),
        },
        schema=schema,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(
        table, sink, row_group_size=ROW_GROUP_ROWS, compression={"image": "none", "label": "zstd", "id": "zstd", "pos": "zstd"}
    )
    return sink.getvalue().to_pybytes()


def plan_shards(n: int, avg_bytes: float, rows_per_shard: int | None) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` of the shards of ``n`` rows: ``rows_per_shard`` each, else about TARGET_SHARD_BYTES
    each but at least MIN_SHARDS shards and ROW_GROUP_ROWS rows per shard."""
    if rows_per_shard is None:
        by_size = max(1, int(TARGET_SHARD_BYTES // max(avg_bytes, 1)))
        rows_per_shard = max(ROW_GROUP_ROWS, min(by_size, math.ceil(n / MIN_SHARDS)))
    k = max(1, math.ceil(n / rows_per_shard))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------
def prepare(
    cfg: Any,
    out: str,
    *,
    name: str | None = None,
    overwrite: bool = False,
    rows_per_shard: int | None = None,
    shuffle_seed: int = 0,
    threads: int | None = None,
) -> Manifest:
    """Build ``cfg.data`` with :func:`twohead.data.build_data` and publish it as shards under ``out/name``.

    Returns the manifest. Raises :class:`DatasetExistsError` if ``out/name`` already holds anything and
    ``overwrite`` is false; everything that can be checked (storage reachable, bucket exists, data
    builds) is checked before the first byte is written.
    """
    from twohead.data import build_data

    data_cfg = cfg.data if hasattr(cfg, "data") else cfg
    storage.check_reachable(out, "--out")
    url = storage.join(out, name or default_name(data_cfg))
    state = dataset_state(url)
    if state == "foreign":  # even with --overwrite: replacing it would mix shards into someone else's files
        raise DatasetExistsError(
            f"{url} holds files that are not a twohead dataset ({', '.join(foreign_files(url))}); choose another --name/--out"
        )
    if state != "missing" and not overwrite:
        what = "a complete dataset" if state == "complete" else "files of an interrupted prepare (no manifest)"
        raise DatasetExistsError(f"{url} already holds {what}; pass --overwrite to replace it, or choose another --name/--out")

    data = build_data(data_cfg)
    log.info("%s", data.describe())
    staging = storage.join(url, f"_tmp-{uuid.uuid4().hex[:12]}")
    try:
        return _publish(data, data_cfg, url, staging, state, rows_per_shard, shuffle_seed, threads)
    except OSError as e:  # the store went away, the disk filled, ...: what was written is not a dataset yet
        raise WriteInterrupted(
            f"writing {url} failed: {' '.join(str(e).split())}; no manifest was published, so readers refuse the "
            "partial dataset: rerun the same command once the storage is reachable again (with --overwrite if it "
            "finds shards of this attempt)"
        ) from e
    finally:
        try:
            storage.delete(staging)
        except OSError as e:  # the store is unreachable: report the error that stopped the prepare, not this one
            log.warning("could not remove the staging folder %s (%s); a rerun with --overwrite removes it", staging, e)


def _publish(
    data: Any,
    data_cfg: Any,
    url: str,
    staging: str,
    state: str,
    rows_per_shard: int | None,
    shuffle_seed: int,
    threads: int | None,
) -> Manifest:
    """Encode every split into shards under ``staging``, move them into ``url`` and publish the manifest last."""
    C = int(data.num_classes)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    infos: dict[str, SplitInfo] = {}
    fmt_seen: set[str] = set()
    for split_name, split in splits.items():
        if split is None:
            continue
        n = len(split)
        order = np.random.default_rng(shuffle_seed).permutation(n) if split_name == "train" else np.arange(n)
        if split.images is not None:
            fmt = "webp" if max(split.images.shape[1:3]) <= 64 else "jpeg"
            blobs = encode_images(split.images[order], fmt, threads)
        else:
            blobs = _read_files([split.files[i] for i in order.tolist()])
            fmt = _file_format(blobs)
        fmt_seen.add(fmt)
        labels, ids = split.labels[order], split.ids[order]
        avg = sum(len(b) for b in blobs) / max(1, n)
        shards = []
        for k, (a, b) in enumerate(plan_shards(n, avg, rows_per_shard)):
            rel = f"{split_name}/part-{k:05d}.parquet"
            payload = write_shard_table(
                blobs[a:b],
                labels[a:b],
                ids[a:b],
                order[a:b],
                {"dataset": data.name, "split": split_name, "image_format": fmt},
            )
            storage.write_bytes(storage.join(staging, rel), payload)
            shards.append(ShardInfo(path=rel, rows=b - a, bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest()))
        infos[split_name] = SplitInfo(
            num_rows=n, class_counts=np.bincount(split.labels, minlength=C).astype(int).tolist(), shards=shards
        )
        log.info("%s: %d rows in %d shard(s) (%s)", split_name, n, len(shards), fmt)

    manifest = Manifest(
        dataset=data.name,
        num_classes=C,
        class_names=[str(c) for c in data.class_names],
        class_counts=[int(c) for c in data.class_counts],
        image_size=int(data_cfg.image_size or data.image_size),
        image_format=fmt_seen.pop() if len(fmt_seen) == 1 else "mixed",
        mean=[float(m) for m in data.mean],
        std=[float(s) for s in data.std],
        data_config=_data_config_dict(data_cfg),
        splits=infos,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        url=url,
    )
    if state != "missing":
        # --overwrite: un-publish first (readers now see "incomplete", never a mix of old and new shards),
        # then replace the split folders; cluster labels were derived from the old rows, so they go too.
        storage.delete(storage.join(url, MANIFEST))
        for sub in ("train", "val", "test", "labels"):
            storage.delete(storage.join(url, sub))
    # Staging folders of earlier attempts that the store's going away kept from being removed.
    storage.remove_stale_staging(url, keep=staging.rsplit("/", 1)[-1])
    for info in infos.values():
        for s in info.shards:
            storage.move(storage.join(staging, s.path), storage.join(url, s.path))
    storage.write_json(storage.join(url, MANIFEST), manifest.to_json())  # publish
    return manifest


def _data_config_dict(data_cfg: Any) -> dict[str, Any]:
    d = data_cfg.model_dump(mode="json")
    d.pop("root", None)  # machine-specific; the shards replace it
    return d


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rayjobs.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="storage URL of the datasets folder (s3://bucket/datasets, file:///data, a path)")
    p.add_argument("--name", help="dataset folder name under --out (default: dataset + imbalance, e.g. cifar10-lt-imb100)")
    p.add_argument("--config", help="YAML config whose data section selects the dataset")
    p.add_argument("--preset", help="named preset (cifar10-lt, imagenet-lt, imagenet-lt-standin, smoke, ...)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. data.imbalance=50 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out/--name")
    p.add_argument(
        "--rows-per-shard", type=int, help="rows per Parquet shard (default: ~64 MiB shards, at least 16 of >= 1024 rows)"
    )
    p.add_argument("--shuffle-seed", type=int, default=0, help="seed of the train rows' write order")
    p.add_argument("--threads", type=int, help="encoder threads (default: all cores)")
    return p


def _check_args(args: argparse.Namespace) -> str | None:
    """The first invalid argument, described in one line, or None. Checked before anything is read or written."""
    name = args.name
    if name is not None and (not name.strip() or "/" in name or "\\" in name or name in (".", "..")):
        return f"--name {name!r} must be a plain folder name (no '/', not '.' or '..'): the dataset goes to --out/NAME"
    if not args.out.strip():
        return "--out must name a storage URL or folder (s3://bucket/datasets, file:///data, a path)"
    for flag, value in (("--rows-per-shard", args.rows_per_shard), ("--threads", args.threads)):
        if value is not None and value < 1:
            return f"{flag} {value} must be an integer >= 1 (leave it out for the default)"
    if args.shuffle_seed < 0:
        return f"--shuffle-seed {args.shuffle_seed} must be >= 0"
    return None


def _left_behind(cfg: Any, args: argparse.Namespace) -> str:
    """What an interrupted prepare left in its dataset folder, and how to go on (the staging folder is removed by
    :func:`prepare` itself; the manifest is published last, so readers never take a partial dataset)."""
    if cfg is None:
        return "nothing was written; run the same command again"
    url = storage.join(args.out, args.name or default_name(cfg.data))
    try:
        state = dataset_state(url)
    except (OSError, storage.StorageError):
        state = "unknown"
    if state == "complete":
        return f"{url} was already published and is complete"
    if state == "missing":
        return f"nothing was written to {url}; run the same command again"
    return f"{url} holds part of a dataset and no manifest (readers refuse it); run the same command with --overwrite"


def main(argv: list[str] | None = None) -> int:
    from twohead.config import ConfigError, load_config
    from twohead.data import DataError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = None
    try:
        cfg = load_config(args.config, preset=args.preset, overrides=args.overrides)
        m = prepare(
            cfg,
            args.out,
            name=args.name,
            overwrite=args.overwrite,
            rows_per_shard=args.rows_per_shard,
            shuffle_seed=args.shuffle_seed,
            threads=args.threads,
        )
    except (ConfigError, DataError, DatasetError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WriteInterrupted as e:  # the store went away (or the disk filled) mid-way: not bad input
        print(f"error: {e}", file=sys.stderr)
        return 1
    except storage.StorageError as e:  # unreachable or refused before anything was written
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted: {_left_behind(cfg, args)}", file=sys.stderr)
        return 130
    rows = {k: v.num_rows for k, v in m.splits.items()}
    print(f"prepared {m.url}: {m.dataset}, {m.num_classes} classes, {m.image_size}px {m.image_format}, rows {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
