"""Ray Data streaming of prepared shards into Ray Train workers, and the eval splits of a Ray run.

Pipeline (one per run, executed once per epoch)::

    from_items(train shard URLs on S3/GCS/local), shard order and a row-order seed drawn anew each epoch
      -> map_batches(decode_shards), one task per shard on CPU workers: read the shard, reorder its rows, and
         per batch of rows (decode_batch) decode, validate label and image, attach the cluster id
         (ClusterLookup), and for large images RandomResizedCrop + flip, decoded at the smallest JPEG scale
         that covers the crop (twohead.data.decode_crop, the function the local DataLoader uses too)
      -> streaming_split(num_workers, equal=True)     # TorchTrainer(datasets={"train": ds})
      -> iter_torch_batches(prefetch)                 # RayBatchSource, given to twohead.loop.fit

With ``decode="gpu"`` (``rayjobs.train --gpu-decode``) the CPU workers only check each image's header and the
training worker decodes, crops and flips every batch on its GPU (``torchvision.io.decode_jpeg(device="cuda")``,
nvJPEG): CPU decoding then no longer limits the GPU (see README, "Keeping GPUs fed").

Images of at most 64 px leave the CPU workers un-augmented (``augmented=False``): the loop crops and flips
whole batches on the device, like a local run. Bad rows -- a label outside [0, C), an undecodable image, an id
without a cluster -- raise :class:`RowError` naming the shard file and the row id; with ``skip_invalid`` they
are dropped instead and counted by a :class:`SkipCounter` actor whose summary the run reports.

(Over 400 lines on purpose: the per-batch UDF, the dataset that maps it and the batch source that consumes it
change together, e.g. for ``decode="gpu"``; the eval-split loading is the rest of a Ray run's data.)
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rayjobs.data import storage
from rayjobs.data.labels import ClusterLookup, MissingClusterError
from rayjobs.data.manifest import Manifest
from rayjobs.data.storage import DatasetError

__all__ = [
    "CPU_AUGMENT_MIN_SIZE",
    "PREFETCH_BATCHES",
    "RayBatchSource",
    "RowError",
    "SkipCounter",
    "decode_batch",
    "decode_shards",
    "in_memory_bytes",
    "load_split",
    "ltdata_from_manifest",
    "train_dataset",
]

log = logging.getLogger("rayjobs.data.stream")

CPU_AUGMENT_MIN_SIZE = 65  # images this large are augmented on the CPU workers (RandomResizedCrop + flip)
# Batches a training worker fetches ahead. Ray Data fills its whole prefetch window before it hands over the first
# batch, so each batch more delays every epoch's start by one batch's decode (~0.6 s at 224 px on 2 cores: 4 batches
# put the first batch at 2.4 s, 1 at 1.3 s, same img/s; python -m rayjobs.bench_stream); one batch ahead already
# overlaps the fetch of the next batch with the training step.
PREFETCH_BATCHES = 1


class RowError(DatasetError):
    """A streamed row is invalid: names the shard file and the row's sample id."""


# --------------------------------------------------------------------------------------------
# Skipped rows
# --------------------------------------------------------------------------------------------
class SkipCounter:
    """Counts rows dropped under ``skip_invalid`` (run as a Ray actor; every epoch re-reads, so rows are
    counted once by (shard, id))."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], str] = {}

    def add(self, items: list[tuple[str, int, str]]) -> None:
        for where, rid, reason in items:
            self.rows.setdefault((where, int(rid)), reason)

    def summary(self) -> dict[str, Any]:
        return skip_summary([(w, i, r) for (w, i), r in self.rows.items()])

    def dropped(self) -> list[dict[str, Any]]:
        return [{"shard": w, "id": i, "reason": r} for (w, i), r in self.rows.items()]


def skip_summary(rows: list[tuple[str, int, str]]) -> dict[str, Any]:
    """``results/data_report.json``: how many rows ``--skip-invalid`` dropped, by reason, and the first ten."""
    unique = {(w, int(i)): r for w, i, r in rows}
    reasons: dict[str, int] = {}
    for r in unique.values():
        key = r.split(":", 1)[0]
        reasons[key] = reasons.get(key, 0) + 1
    first = [{"shard": w, "id": i, "reason": r} for (w, i), r in sorted(unique.items())[:10]]
    return {"skipped": len(unique), "by_reason": reasons, "first": first}


# --------------------------------------------------------------------------------------------
# The per-batch UDF
# --------------------------------------------------------------------------------------------
def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    num_classes: int,
    size: int,
    augment: bool,
    lookup: ClusterLookup | None,
    url_prefix: str = "",
    skip_invalid: bool = False,
    counter: Any = None,
    decode: str = "cpu",
) -> dict[str, np.ndarray]:
    """Decode one Arrow batch of shard rows to ``{"image": uint8 [B,s,s,3], "label", "cluster"}``.

    ``lookup`` None means no class division: the cluster id is the class label (K = C). ``augment`` crops and
    flips (:func:`~twohead.data.decode_crop.decode_random_resized_crop`). ``decode="gpu"`` leaves the images
    encoded (``"image"``: bytes, header checked) for the training worker to decode and crop on its GPU.
    """
    from twohead.data.decode_crop import decode_random_resized_crop
    from twohead.data.sources import decode_bytes, fit_size

    n = len(batch["label"])
    labels = np.asarray(batch["label"], dtype=np.int64)
    ids = np.asarray(batch["id"], dtype=np.int64)
    paths = batch.get("path")
    where = (lambda i: f"{url_prefix}{paths[i]}") if paths is not None else (lambda i: "a shard")
    keep = np.ones(n, dtype=bool)
    dropped: list[tuple[str, int, str]] = []

    def bad(i: int, reason: str) -> None:
        if not skip_invalid:
            raise RowError(
                f"shard {where(i)}: row id {int(ids[i])}: {reason} (set data.skip_corrupt=true / --skip-invalid to skip such rows)"
            )
        keep[i] = False
        dropped.append((where(i), int(ids[i]), reason))

    for i in np.flatnonzero((labels < 0) | (labels >= num_classes)).tolist():
        bad(i, f"label {int(labels[i])} outside [0, {num_classes})")

    encoded = decode == "gpu"
    out = np.empty(n, dtype=object) if encoded else np.empty((n, size, size, 3), dtype=np.uint8)
    for i, data in enumerate(batch["image"]):
        if not keep[i]:
            continue
        blob = bytes(data) if data is not None else b""
        try:
            if encoded:
                out[i] = _checked_header(blob)  # decoded later, on the training GPU
            elif augment:
                out[i] = decode_random_resized_crop(blob, size).permute(1, 2, 0).numpy()
            else:
                out[i] = fit_size(decode_bytes(blob), size).permute(1, 2, 0).numpy()
        except ValueError as e:
            bad(i, f"undecodable image: {e}")

    if lookup is not None:
        clusters = np.zeros(n, dtype=np.int64)
        miss = lookup.missing(ids[keep])
        if len(miss):
            # A missing cluster is a wrong labels file, not a bad row: never skipped.
            first = int(np.flatnonzero(keep & np.isin(ids, miss))[0])
            raise MissingClusterError(
                f"{lookup.source} has no cluster for {len(miss)} ids of this batch (first: {miss[:5].tolist()}, "
                f"in shard {where(first)}); recompute it with python -m rayjobs.labels --overwrite"
            )
        clusters[keep] = lookup(ids[keep])
    else:
        clusters = labels.copy()
    if dropped and counter is not None:
        import ray

        # Wait for the actor to record them: a fire-and-forget call could still be in flight when the run
        # reads the summary after its last batch, and the report would miss rows it skipped.
        ray.get(counter.add.remote(dropped))
    result = {"image": out[keep], "label": labels[keep], "cluster": clusters[keep]}
    if encoded:
        result["id"] = ids[keep]  # names the rows if the GPU decode fails
    return result


def _checked_header(blob: bytes) -> bytes:
    """``blob`` if its header is an image's (format and size readable), else ValueError; nothing is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not blob:
        raise ValueError("empty image bytes")
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.size[0] < 1 or im.size[1] < 1:
                raise ValueError(f"image size {im.size}")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    return blob


def decode_shards(
    batch: dict[str, np.ndarray], *, dataset: storage.Located, rows: int, columns: list[str], **decode_kw: Any
) -> Iterator[dict[str, np.ndarray]]:
    """The stream's map UDF: each input row names one shard (``path``, ``url``) and carries a random number drawn
    anew every epoch (``order``). The shard is read whole, its rows are put in that epoch's order, and they are
    decoded and yielded ``rows`` at a time (:func:`decode_batch`), so the first images leave the task after one
    batch's decode and every epoch's batches are new mixtures of the shard.

    The filesystem is rebuilt here from ``dataset`` (the driver's endpoint, region and retries: a pickled pyarrow
    S3 filesystem would arrive without its retry strategy), so a read rides out a short outage of the store."""
    import pyarrow.parquet as pq

    filesystem, _ = dataset.resolve()
    for path, url, order in zip(batch["path"], batch["url"], batch["order"]):
        with storage._errors(str(url), "read"):
            t = pq.read_table(str(path), filesystem=filesystem, columns=columns)
        perm = np.random.default_rng(int(float(order) * 2**53)).permutation(t.num_rows)
        t = t.take(perm)
        prefix = str(url)[: len(str(url)) - len(str(path))]  # "s3://" etc., so errors name the shard's URL
        for lo in range(0, t.num_rows, rows):
            rb = t.slice(lo, rows)
            cols = {c: rb.column(c).to_numpy() for c in ("label", "id")}
            cols["image"] = rb.column("image").to_numpy(zero_copy_only=False)
            cols["path"] = np.full(len(rb), str(path), dtype=object)
            yield decode_batch(cols, url_prefix=prefix, **decode_kw)


def train_dataset(
    manifest: Manifest,
    *,
    lookup: ClusterLookup | None,
    image_size: int | None = None,
    skip_invalid: bool = False,
    counter: Any = None,
    seed: int = 0,
    decode_batch_size: int | None = None,
    decode_concurrency: int | tuple[int, int] | None = None,
    decode: str = "cpu",
):
    """The streaming train dataset of a prepared dataset (lazy; executes when iterated, once per epoch).

    One Ray Data task per shard reads it and decodes it (:func:`decode_shards`), in a new shard order and a new
    row order every epoch, both drawn from ``seed`` (Ray Data's ``RandomSeedConfig(reseed_after_execution=True)``:
    reproducible, different per execution). Measured against ``read_parquet`` followed by ``map_batches``
    (``python -m rayjobs.bench_stream``): the two-operator plan moved every encoded shard through the object
    store as a separate read block, kept about one decode task running on a 2-core node, and delivered its first
    batch after 7-15 s; a task per shard keeps every CPU decoding and streams its first batch within seconds.

    ``decode="gpu"`` (large images only) streams the encoded images, checked but not decoded, for
    :class:`RayBatchSource` to decode and crop on the training GPU.
    """
    import ray.data
    from ray.data import RandomSeedConfig
    from ray.data.expressions import random

    size = int(image_size or manifest.image_size)
    if decode not in ("cpu", "gpu"):
        raise ValueError(f"decode={decode!r}; allowed: cpu, gpu")
    if decode == "gpu" and size < CPU_AUGMENT_MIN_SIZE:
        raise ValueError(f"decode=gpu is for images of at least {CPU_AUGMENT_MIN_SIZE} px; {manifest.url} has {size} px")
    if decode_batch_size is None:
        # Per-batch overhead dominates a 32 px decode (~70 us): big batches; large images: one training batch.
        decode_batch_size = 2048 if size < CPU_AUGMENT_MIN_SIZE else 256
    urls = manifest.shard_urls("train")
    rows = [{"path": storage.resolve(u)[1], "url": u} for u in urls]
    shards = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block, hence one task, per shard
    shards = shards.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    shards = shards.with_column("order", random(seed=seed, reseed_after_execution=True))
    ds = shards.map_batches(
        decode_shards,
        batch_size=1,
        fn_kwargs={
            "dataset": storage.Located.of(manifest.url),
            "rows": int(decode_batch_size),
            "columns": ["image", "label", "id"],
            "num_classes": manifest.num_classes,
            "size": size,
            "augment": size >= CPU_AUGMENT_MIN_SIZE,
            "lookup": lookup,
            "skip_invalid": skip_invalid,
            "counter": counter,
            "decode": decode,
        },
        batch_format="numpy",
        concurrency=decode_concurrency,
    )
    # Each decoded batch leaves its task as one block: a block limit just under one batch's bytes makes Ray Data
    # emit every yield at once (it would otherwise gather yields up to 128 MiB, ~850 images at 224 px, before the
    # consumer sees any) and never slice it (it slices only blocks over 1.5x the limit).
    per_image = 150 * 1024 if decode == "gpu" else size * size * 3  # encoded ImageNet JPEG ~115 KB; decoded pixels
    ds.context.target_max_block_size = max(64 << 10, int(0.75 * decode_batch_size * per_image))
    return ds


class RayBatchSource:
    """:class:`twohead.loop.BatchSource` over this worker's ``streaming_split`` shard."""

    division = None  # the labels file's DivisionPlan, set by the data plane

    def __init__(
        self,
        shard: Any,
        *,
        batch_size: int,
        num_samples: int,
        augmented: bool,
        prefetch_batches: int = PREFETCH_BATCHES,
        shuffle_buffer: int | None = None,
        seed: int = 0,
        gpu_decode_size: int | None = None,
        device: Any = None,
    ):
        """``gpu_decode_size``: the stream carries encoded images (``train_dataset(decode="gpu")``); each batch is
        decoded, cropped to this size and flipped on ``device`` by
        :func:`~twohead.data.decode_crop.decode_random_resized_crop_batch` (nvJPEG on a GPU)."""
        self.shard = shard
        self.gpu_decode_size = gpu_decode_size
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.num_samples = int(num_samples)
        self.augmented = bool(augmented)
        self.prefetch_batches = prefetch_batches
        # No local shuffle by default: the stream puts the shards and the rows inside each shard in a new order
        # every epoch (train_dataset), and a buffer of 4 batches cost ~2 s before the first batch at 224 px.
        self.shuffle_buffer = shuffle_buffer if shuffle_buffer is not None else 0
        self.seed = seed
        # BatchNorm cannot train on a batch of one: drop the last batch only when it would be a single row.
        self.drop_last = self.num_samples % self.batch_size == 1
        self.last_wait_s = 0.0  # time the last epoch spent blocked on the stream

    def batches(self, epoch: int) -> Iterator[tuple[Any, Any, Any]]:
        kw = {
            "batch_size": self.batch_size,
            "prefetch_batches": self.prefetch_batches,
            "local_shuffle_buffer_size": self.shuffle_buffer or None,
            "local_shuffle_seed": self.seed * 100_003 + epoch if self.shuffle_buffer else None,
            "drop_last": self.drop_last,
        }
        encoded = self.gpu_decode_size is not None
        # Encoded images are bytes, which iter_torch_batches cannot turn into tensors: numpy batches, decoded here.
        it = self.shard.iter_batches(batch_format="numpy", **kw) if encoded else self.shard.iter_torch_batches(**kw)
        # Time blocked on the stream, logged per epoch: the first thing to look at when a run is data-bound.
        waited, n, t = 0.0, 0, time.perf_counter()
        for b in it:
            waited += time.perf_counter() - t
            n += 1
            if encoded:
                yield self._decode(b)
            else:
                yield b["image"], b["label"], b["cluster"]
            t = time.perf_counter()
        self.last_wait_s = waited
        log.info("epoch %d: %d batches, %.2fs waiting for data", epoch + 1, n, waited)

    def _decode(self, b: dict[str, np.ndarray]) -> tuple[Any, Any, Any]:
        import torch

        from twohead.data.decode_crop import decode_random_resized_crop_batch

        device = self.device or "cpu"
        try:
            x = decode_random_resized_crop_batch(list(b["image"]), self.gpu_decode_size, device=device)
        except ValueError as e:
            raise RowError(f"a streamed batch (row ids {b['id'][:5].tolist()}...): {e}") from None
        y = torch.as_tensor(b["label"], device=device)
        return x, y, torch.as_tensor(b["cluster"], device=device)


# --------------------------------------------------------------------------------------------
# Eval splits and LTData for a Ray run
# --------------------------------------------------------------------------------------------
def _read_split_table(manifest: Manifest, split: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = storage.resolve(manifest.url)
    tables = []
    for u in manifest.shard_urls(split):
        with storage._errors(u, "read"):
            tables.append(pq.read_table(storage.resolve(u)[1], filesystem=fs, columns=["image", "label", "id", "pos"]))
    t = pa.concat_tables(tables) if tables else None
    return t.sort_by("pos") if t is not None else None


def load_split(
    manifest: Manifest,
    split: str,
    *,
    cache_dir: str | Path | None = None,
    skip_invalid: bool = False,
    dropped: list | None = None,
):
    """A val/test split as a :class:`twohead.data.Split`: decoded in memory for small images, else the encoded
    bytes are written once to ``cache_dir`` and the split is file-backed (decoded by the loop's loader).

    ``cache_dir`` is shared by every worker of a node (:meth:`rayjobs.data.plane.DataPlan.cache_dir`): the first
    one copies the split under a file lock and leaves a completion marker; the others, and a restarted worker
    group, read the marker and copy nothing. Rows dropped under ``skip_invalid`` are appended to ``dropped`` as
    ``(where, id, reason)``, for ``results/data_report.json``."""
    from twohead.data import Split

    dropped = dropped if dropped is not None else []

    if manifest.image_size >= CPU_AUGMENT_MIN_SIZE:
        folder = Path(cache_dir or tempfile.mkdtemp(prefix="twohead-eval-")) / split
        marker = folder / f"_complete{'-skip' if skip_invalid else ''}.json"
        if not marker.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with _locked(folder / ".lock"):
                if not marker.is_file():
                    _copy_split(manifest, split, folder, marker, skip_invalid)
        done = json.loads(marker.read_text())
        dropped.extend(tuple(d) for d in done.get("dropped", []))
        ids = np.asarray(done["ids"], dtype=np.int64)
        return Split(
            np.asarray(done["labels"], dtype=np.int64),
            ids,
            files=[str(folder / f"{rid}.img") for rid in ids.tolist()],
            image_size=manifest.image_size,
        )
    from twohead.data.sources import decode_bytes, fit_size

    t = _read_split_table(manifest, split)
    labels, ids, keep = _checked_labels(manifest, split, t, skip_invalid, dropped)
    blobs = t.column("image").to_pylist()
    size = manifest.image_size
    shard = f"the {split} shards of {manifest.url}"
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)

    def decode(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            if not keep[i]:
                continue
            try:
                images[i] = fit_size(decode_bytes(blobs[i]), size).permute(1, 2, 0).numpy()
            except ValueError as e:
                if not skip_invalid:
                    raise RowError(f"{shard}: row id {int(ids[i])}: undecodable image: {e}") from None
                keep[i] = False
                dropped.append((shard, int(ids[i]), f"undecodable image: {e}"))

    # The native decoders release the GIL: threads decode in parallel.
    step = 2048
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        list(ex.map(lambda lo: decode(lo, min(lo + step, len(labels))), range(0, len(labels), step)))
    return Split(labels[keep], ids[keep], images=images[keep], image_size=size)


def _checked_labels(
    manifest: Manifest, split: str, t, skip_invalid: bool, dropped: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = t.column("label").to_numpy().astype(np.int64)
    ids = t.column("id").to_numpy().astype(np.int64)
    C = manifest.num_classes
    keep = np.ones(len(labels), dtype=bool)
    where = f"the {split} shards of {manifest.url}"
    for i in np.flatnonzero((labels < 0) | (labels >= C)).tolist():
        reason = f"label {int(labels[i])} outside [0, {C})"
        if not skip_invalid:
            raise RowError(f"{where}: row id {int(ids[i])}: {reason}")
        keep[i] = False
        dropped.append((where, int(ids[i]), reason))
    return labels, ids, keep


def _copy_split(manifest: Manifest, split: str, folder: Path, marker: Path, skip_invalid: bool) -> None:
    """Write the encoded images of a large-image split to ``folder`` (one file per id) and the marker last."""
    from twohead import atomic

    t = _read_split_table(manifest, split)
    dropped: list = []
    labels, ids, keep = _checked_labels(manifest, split, t, skip_invalid, dropped)
    for rid, b in zip(ids.tolist(), t.column("image").to_pylist()):
        p = folder / f"{rid}.img"
        if not p.is_file():
            atomic.write_bytes(p, b)
    atomic.write_text(marker, json.dumps({"ids": ids[keep].tolist(), "labels": labels[keep].tolist(), "dropped": dropped}))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between the processes of one node (released when the holder dies)."""
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def in_memory_bytes(manifest: Manifest) -> int:
    """Decoded size of the train split (uint8 pixels), what ``ltdata_from_manifest(train=True)`` holds."""
    return manifest.splits["train"].num_rows * manifest.image_size**2 * 3


def ltdata_from_manifest(
    manifest: Manifest,
    *,
    train: bool = False,
    with_eval: bool = True,
    cache_dir: str | Path | None = None,
    skip_invalid: bool = False,
    dropped: list | None = None,
):
    """:class:`twohead.data.LTData` of a Ray run: class counts from the manifest, val/test from their shards.

    ``train`` True decodes the whole train split into memory (small images: the loop then keeps it on the
    device, exactly like a local run). Otherwise the train split is streamed (:func:`train_dataset`) and
    ``LTData.train`` only carries labels (for the class counts of Eq. 3 and the LT metrics) and 1-pixel
    placeholder images that take no memory. Every rank evaluates its share of val/test (the loop shards and
    gathers them); ``with_eval`` False gives an empty test split and no val split (label-only uses).
    """
    from twohead.data import Split

    counts = np.asarray(manifest.class_counts, dtype=np.int64)
    n = int(counts.sum())
    if train:
        train_split = load_split(manifest, "train", cache_dir=cache_dir, skip_invalid=skip_invalid, dropped=dropped)
    else:
        placeholder = np.broadcast_to(np.zeros((1, 1, 1, 3), dtype=np.uint8), (n, 1, 1, 3))
        train_split = Split(
            np.repeat(np.arange(len(counts)), counts), np.arange(n), images=placeholder, image_size=manifest.image_size
        )
    if with_eval:
        kw = {"cache_dir": cache_dir, "skip_invalid": skip_invalid, "dropped": dropped}
        val = load_split(manifest, "val", **kw) if "val" in manifest.splits else None
        test = load_split(manifest, "test", **kw)
    else:
        val = None
        test = Split(
            np.zeros(0, np.int64), np.zeros(0, np.int64), images=np.zeros((0, 1, 1, 3), np.uint8), image_size=manifest.image_size
        )
    return manifest_ltdata(manifest, train_split, val, test, f"{'loaded' if train else 'streamed'} from {manifest.url}")


def manifest_ltdata(manifest: Manifest, train: Any, val: Any, test: Any, note: str) -> Any:
    """The :class:`~twohead.data.LTData` of a prepared dataset (its :class:`~twohead.data.Split` s given): names,
    normalisation and image size from its manifest."""
    from twohead.data import LTData

    return LTData(
        name=manifest.dataset,
        class_names=list(manifest.class_names),
        num_classes=manifest.num_classes,
        image_size=manifest.image_size,
        mean=tuple(manifest.mean),
        std=tuple(manifest.std),
        train=train,
        val=val,
        test=test,
        notes=[note],
    )
