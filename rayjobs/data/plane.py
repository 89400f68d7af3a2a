"""The data plane of a Ray run: a prepared dataset (``rayjobs.prepare``) as Ray Train workers and Tune trials read it.

``rayjobs.train`` and ``rayjobs.search --data`` share every step here, so a trial trains on exactly what a
``rayjobs.train`` run of the same config trains on:

1. **Driver, once** (:func:`plan_dataset`): read the manifest and check every shard against it (sha256 or size),
   check the train labels, decide the mode: small images (under 65 px, at most ``TWOHEAD_IN_MEMORY_MAX_BYTES``
   decoded: CIFAR, Tiny-ImageNet, the 32 px stand-in) are held in memory; large ones (ImageNet-LT) are streamed.
2. **One** :class:`DataService` **actor per run / search** (owned by the driver, 0 CPUs):

   - *per node, once*: a task pinned to the node (``NodeAffinitySchedulingStrategy``) decodes the small-image
     splits; its result stays in **that node's object store**, owned by the service, and every worker / trial
     on the node maps it read-only (zero copy) instead of decoding again. Chosen over a detached actor per node
     because nothing outlives the driver (no object store leak after a crash) and nodes the autoscaler adds
     mid-search get their copy on first use; chosen over one ``ray.put`` in the driver because the driver would
     decode and ship every byte to every node (bench: ``python -m rayjobs.bench_search``).
   - *per labels key, once*: ``(clustering, u, rounding, seed, embedding)`` names a file beside the shards
     (:func:`rayjobs.data.labels.labels_url`). Concurrent requests for one key await one computation (the actor's
     event loop is the lock); a file already in the store is checked and reused. k-means / hierarchical
     embeddings are computed on the cluster (Ray Data decodes the thumbnails on every node's CPUs) once per
     dataset; the computation counts are in :meth:`DataService.stats` (a search writes them to ``search.json``).
3. **Worker / trial** (:func:`worker_inputs`): the in-memory arrays of its node with the cluster ids of its
   labels file (a device-resident :class:`~twohead.sources.DeviceSource`, sharded by rank, as a local run), or a
   :class:`~rayjobs.data.stream.RayBatchSource` over the Ray Data stream. Large-image val/test splits are copied once
   per node to a local cache folder shared by every worker there (a restarted worker group finds them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayjobs.data import storage
from rayjobs.data.manifest import Manifest, verify_dataset
from rayjobs.data.stream import PREFETCH_BATCHES
from twohead.division import DivisionPlan

__all__ = [
    "IN_MEMORY_MAX_BYTES",
    "DataPlan",
    "DataService",
    "apply_manifest",
    "check_train_labels",
    "plan_dataset",
    "start_service",
    "worker_inputs",
]

log = logging.getLogger("rayjobs.data.plane")

IN_MEMORY_MAX_BYTES = int(os.environ.get("TWOHEAD_IN_MEMORY_MAX_BYTES", str(4 << 30)))  # decoded train split


@dataclass(frozen=True)
class DataPlan:
    """What every worker needs to know about the dataset (small, picklable; the manifest checked once)."""

    url: str
    manifest: dict
    in_memory: bool
    skip_invalid: bool = False
    gpu_decode: bool = False  # streamed JPEG bytes are decoded on the training GPU (rayjobs.data.stream, decode="gpu")

    @property
    def manifest_obj(self) -> Manifest:
        return Manifest.from_json(self.manifest, url=self.url)

    @property
    def key(self) -> str:
        """Identity of this dataset version (URL + shard checksums): names node-local caches."""
        shards = [s["sha256"] for split in self.manifest["splits"].values() for s in split["shards"]]
        return hashlib.sha256("\n".join([self.url, *shards]).encode()).hexdigest()[:16]

    def cache_dir(self) -> Path:
        """Node-local folder for the val/test images of large-image datasets (shared by every worker there)."""
        root = os.environ.get("TWOHEAD_NODE_CACHE") or os.path.join(tempfile.gettempdir(), "twohead-cache")
        return Path(root) / self.key


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------
def check_train_labels(manifest: Manifest) -> None:
    """Every train label lies in [0, C) (reads only the label/id columns; names shard and row id)."""
    import pyarrow.parquet as pq

    from rayjobs.data.stream import RowError

    fs, _ = storage.resolve(manifest.url)
    C = manifest.num_classes
    for u in manifest.shard_urls("train"):
        with storage._errors(u, "read"):
            t = pq.read_table(storage.resolve(u)[1], filesystem=fs, columns=["label", "id"])
        y = t.column("label").to_numpy()
        bad = np.flatnonzero((y < 0) | (y >= C))
        if len(bad):
            i = int(bad[0])
            raise RowError(
                f"shard {u}: row id {int(t.column('id')[i].as_py())}: label {int(y[i])} outside [0, {C}) "
                f"({len(bad)} such rows in this shard)"
            )


def apply_manifest(cfg: Any, manifest: Manifest) -> Any:
    """The run's data section is the one the shards were built from (recorded in config.yaml)."""
    from twohead.config import apply_overrides

    known = set(type(cfg.data).model_fields)
    over = {f"data.{k}": v for k, v in manifest.data_config.items() if k in known and k not in ("root", "num_workers")}
    out = apply_overrides(cfg, over)
    for key in over:
        name = key.split(".", 1)[1]
        before, after = getattr(cfg.data, name), getattr(out.data, name)
        if before != after:
            log.info("%s=%r from the dataset's manifest (the config said %r)", key, after, before)
    return out.validate()


def manifest_keys(manifest: Manifest, cfg: Any) -> set[str]:
    """The ``data.*`` keys a prepared dataset fixes (a search may not vary them)."""
    known = set(type(cfg.data).model_fields)
    return {f"data.{k}" for k in manifest.data_config if k in known and k not in ("root", "num_workers")}


def plan_dataset(data_url: str, *, verify: str = "full", stream: str = "auto", skip_invalid: bool = False) -> DataPlan:
    """Check the dataset once (manifest, shards, labels) and choose in-memory or streaming (module docstring)."""
    from rayjobs.data.stream import CPU_AUGMENT_MIN_SIZE, in_memory_bytes

    if verify not in ("full", "size"):
        raise ValueError(f"verify={verify!r}; allowed: full (sha256), size")
    if stream not in ("auto", "on", "off"):
        raise ValueError(f"stream={stream!r}; allowed: auto, on, off")
    manifest = verify_dataset(data_url, checksums=verify == "full")
    if not skip_invalid:
        check_train_labels(manifest)
    if stream == "off" and manifest.image_size >= CPU_AUGMENT_MIN_SIZE:
        raise ValueError(f"stream=off needs images under {CPU_AUGMENT_MIN_SIZE} px; {manifest.url} has {manifest.image_size} px")
    small = manifest.image_size < CPU_AUGMENT_MIN_SIZE and in_memory_bytes(manifest) <= IN_MEMORY_MAX_BYTES
    in_memory = stream == "off" or (stream == "auto" and small)
    return DataPlan(url=manifest.url, manifest=manifest.to_json(), in_memory=in_memory, skip_invalid=bool(skip_invalid))


def start_service(plan: DataPlan) -> Any:
    """The run's :class:`DataService` actor (owned by this driver; 0 CPUs: it only coordinates)."""
    import ray

    return ray.remote(DataService).options(num_cpus=0, max_concurrency=64).remote(plan)


# --------------------------------------------------------------------------------------------
# The service actor and its tasks
# --------------------------------------------------------------------------------------------
def _load_splits(plan: DataPlan) -> dict[str, Any]:
    """Decode the small-image splits (runs on the node that will read them; the result stays in its store)."""
    from rayjobs.data.stream import load_split

    m = plan.manifest_obj
    t0 = time.perf_counter()
    dropped: list = []
    out: dict[str, Any] = {
        s: load_split(m, s, skip_invalid=plan.skip_invalid, dropped=dropped) for s in ("train", "val", "test") if s in m.splits
    }
    out["decode_s"] = time.perf_counter() - t0
    out["dropped"] = dropped
    return out


def _thumbnails(plan: DataPlan) -> np.ndarray:
    from rayjobs.data.labels import THUMB_SIZE, _decode_thumbnails

    return _decode_thumbnails(plan.manifest_obj, THUMB_SIZE)


def _labels_file(plan: DataPlan, key: tuple, thumbs: np.ndarray | None) -> tuple[str, bool]:
    """``(url, computed)``: the labels file of ``key``, written when missing, always checked against the plan."""
    from rayjobs.data.labels import check_labels_file, labels_url, write_labels
    from twohead.division import DivisionPlan

    method, u, rounding, seed, embedding = key
    m = plan.manifest_obj
    url = labels_url(m.url, method, u, rounding, seed, embedding)
    computed = False
    if not storage.exists(url):
        try:
            write_labels(m, method, u, rounding, seed, embedding, url=url, thumbs=thumbs)
            computed = True
        except FileExistsError:  # another driver wrote it meanwhile: same inputs, same file
            pass
    check_labels_file(m, url, DivisionPlan.from_counts(m.class_counts, u, rounding))
    return url, computed


class DataService:
    """Per-run coordinator (see the module docstring). Async: every method runs on one event loop, so the
    check-then-start of a computation is atomic and waiting callers do not block each other."""

    def __init__(self, plan: DataPlan):
        self.plan = plan
        self._nodes: dict[str, Any] = {}
        self._labels: dict[tuple, asyncio.Future] = {}
        self._thumbs: Any = None
        self._stats: dict[str, Any] = {"labels": {}, "node_loads": [], "thumbnails": 0}

    async def node_splits(self, node_id: str) -> list:
        """``[ref]`` to the decoded splits on ``node_id`` (loaded there on first request)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if node_id not in self._nodes:
            # 0 CPUs: the trials that wait for it hold the node's CPUs; it only runs while they wait.
            task = ray.remote(_load_splits).options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False), max_retries=2
            )
            self._nodes[node_id] = task.remote(self.plan)
            self._stats["node_loads"].append(node_id)
        return [self._nodes[node_id]]

    async def warm(self, thumbnails: bool) -> None:
        """Compute what trials will need before they hold the CPUs (thumbnails for k-means / hierarchical)."""
        if thumbnails:
            await self._thumbnail_ref()

    async def _thumbnail_ref(self) -> Any:
        import ray

        if self._thumbs is None:
            self._thumbs = ray.remote(_thumbnails).options(num_cpus=0).remote(self.plan)
            self._stats["thumbnails"] += 1
        await self._thumbs
        return self._thumbs

    async def labels(self, key: tuple) -> str:
        """URL of the labels file of ``key = (clustering, u, rounding, seed, embedding)``, computed once."""
        key = tuple(key)
        if key not in self._labels:
            self._labels[key] = asyncio.ensure_future(self._make_labels(key))
        url = await asyncio.shield(self._labels[key])
        self._stats["labels"][url]["requests"] += 1
        return url

    async def _make_labels(self, key: tuple) -> str:
        import ray

        method, _, _, _, embedding = key
        thumbs = await self._thumbnail_ref() if method != "random" and embedding in ("pca", "pixels") else None
        url, computed = await ray.remote(_labels_file).options(num_cpus=0).remote(self.plan, key, thumbs)
        entry = self._stats["labels"].setdefault(url, {"computed": 0, "requests": 0})
        entry["computed"] += int(computed)
        return url

    async def stats(self) -> dict[str, Any]:
        """``labels``: per file, how often it was computed (0: reused) and requested; ``node_loads``: nodes that
        decoded the splits; ``thumbnails``: embedding decodes."""
        return self._stats


def labels_key(cfg: Any) -> tuple:
    """The labels key of a config: its division (method, u, rounding), resolved cluster seed and embedding."""
    m = cfg.method
    return (m.clustering, int(m.u), m.rounding, int(cfg.cluster_seed), m.embedding)


def request_labels(service: Any, cfg: Any) -> str | None:
    """The labels file a config trains with (None without the class-division head)."""
    import ray

    if not cfg.spec.cdh:
        return None
    return ray.get(service.labels.remote(labels_key(cfg)))


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------
def _ltdata(manifest: Manifest, splits: dict[str, Any], note: str):
    from rayjobs.data.stream import manifest_ltdata

    return manifest_ltdata(manifest, splits["train"], splits.get("val"), splits["test"], note)


def _decode_in_my_placement_group() -> None:
    """Run this process's Ray Data tasks in its placement group (a Tune trial reserves a bundle for decoding):
    Ray Data schedules with its own strategy (SPREAD), which would escape the group and wait for free CPUs."""
    from ray.data import DataContext
    from ray.util.placement_group import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    if pg is None:
        return
    ctx = DataContext.get_current()
    ctx.scheduling_strategy = ctx.scheduling_strategy_large_args = PlacementGroupSchedulingStrategy(pg)


def worker_inputs(
    plan: DataPlan,
    service: Any,
    cfg: Any,
    *,
    labels_url: str | None,
    world: int = 1,
    shard: Any = None,
    counter: Any = None,
    prefetch_batches: int = PREFETCH_BATCHES,
) -> tuple[Any, Any, dict[str, Any]]:
    """``(LTData, train source, facts)`` of one worker or trial (module docstring, step 3): the facts are timings and
    the rows ``--skip-invalid`` dropped from the splits loaded here (streamed train rows go to the SkipCounter).

    ``shard`` is the worker's ``streaming_split`` (Ray Train); a single-process trial streams the whole dataset.
    """
    import ray

    from rayjobs.data.labels import load_lookup
    from rayjobs.data.stream import CPU_AUGMENT_MIN_SIZE, RayBatchSource, ltdata_from_manifest, train_dataset
    from twohead.runtime import resolve_device, use_graphs
    from twohead.sources import DeviceSource

    t0 = time.perf_counter()
    manifest = plan.manifest_obj
    lookup, meta = load_lookup(labels_url) if labels_url else (None, {})
    # The labels file's division (Eq. 3 on the manifest's counts), which the class-division head must follow even
    # when --skip-invalid dropped a training row here and shifted a class count.
    division = DivisionPlan(tuple(json.loads(meta["u_per_class"]))) if "u_per_class" in meta else None
    if plan.in_memory:
        (ref,) = ray.get(service.node_splits.remote(ray.get_runtime_context().get_node_id()))
        splits = ray.get(ref)
        data = _ltdata(manifest, splits, f"loaded from {manifest.url} (shared by this node)")
        clusters = lookup(data.train.ids) if lookup is not None else data.train.labels
        device = resolve_device(cfg)
        with warnings.catch_warnings():
            # The node's copy is read-only shared memory; the source copies it to the device.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            source = DeviceSource(
                data.train.images,
                data.train.labels,
                clusters,
                device,
                cfg.optim.batch_size,
                cfg.optim.seed,
                drop_last=use_graphs(cfg, device, world),
            )
        timing = {"data_start_s": time.perf_counter() - t0, "node_decode_s": float(splits.get("decode_s", 0.0))}
        source.division = division
        return data, source, {**timing, "dropped": list(splits.get("dropped", []))}
    dropped: list = []
    data = ltdata_from_manifest(
        manifest, train=False, with_eval=True, cache_dir=plan.cache_dir(), skip_invalid=plan.skip_invalid, dropped=dropped
    )
    if shard is None:
        _decode_in_my_placement_group()
        shard = train_dataset(manifest, lookup=lookup, skip_invalid=plan.skip_invalid, counter=counter, seed=cfg.optim.seed)
    source = RayBatchSource(
        shard,
        batch_size=cfg.optim.batch_size // world,
        num_samples=manifest.splits["train"].num_rows // world,
        augmented=manifest.image_size >= CPU_AUGMENT_MIN_SIZE,
        prefetch_batches=prefetch_batches,
        seed=cfg.optim.seed,
        gpu_decode_size=manifest.image_size if plan.gpu_decode else None,
        device=resolve_device(cfg) if plan.gpu_decode else None,
    )
    source.division = division
    return data, source, {"data_start_s": time.perf_counter() - t0, "dropped": dropped}
