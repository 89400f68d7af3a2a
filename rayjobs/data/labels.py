"""Per-sample cluster ids of the class-division head (paper Sec. 2.2, Eq. 3), stored beside the shards.

    python -m rayjobs.labels --data s3://bucket/datasets/cifar10-lt-imb100 --method kmeans --u 10

writes ``<data>/labels/<method>-u<u>-r<rounding>-s<seed>.parquet`` with columns ``id`` (int64) and
``cluster`` (int64, global cluster id in [0, K)). The assignment is
:func:`twohead.division.assign_clusters` on the train labels in the order ``build_data`` returned them (the
shards' ``pos`` column), so it equals the clusters a local run of the same config trains on.

- ``random`` (the paper's default) reads only the ``label``/``id``/``pos`` columns: no image is decoded.
- ``kmeans`` / ``hierarchical`` need an embedding: ``pca`` (default; :func:`twohead.division.pixel_embedding`
  of the train images decoded from the shards at <= 32 px, with Ray Data when Ray is up), ``pixels``, or a
  user Parquet file ``(id, vector)`` given as a URL.

Ray Data attaches the clusters to streamed rows with :class:`ClusterLookup` (a sorted-id binary search inside
``map_batches``; a ``Dataset.join`` was ~5x slower on small tables and needs polars).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from typing import Any

import numpy as np

from rayjobs.data import storage
from rayjobs.data.manifest import Manifest, read_manifest
from rayjobs.data.storage import DatasetError

__all__ = [
    "ClusterLookup",
    "MissingClusterError",
    "check_labels_file",
    "compute_clusters",
    "ensure_labels",
    "labels_url",
    "load_lookup",
    "main",
    "read_train_columns",
    "write_labels",
]

log = logging.getLogger("rayjobs.labels")

THUMB_SIZE = 32  # embedding images are decoded at (at most) this size, like the local path's load_images(size=32)


class MissingClusterError(DatasetError):
    """A labels file has no cluster id for some sample ids of the dataset."""


# --------------------------------------------------------------------------------------------
# Naming
# --------------------------------------------------------------------------------------------
def _embedding_tag(method: str, embedding: str) -> str:
    if method == "random" or embedding in ("", "pca"):
        return ""
    if embedding == "pixels":
        return "-epixels"
    return "-e" + hashlib.sha256(embedding.encode()).hexdigest()[:10]  # a user embedding URL


def labels_url(data_url: str, method: str, u: int, rounding: str = "ceil", seed: int = 0, embedding: str = "pca") -> str:
    """``<data>/labels/<method>-u<u>-r<rounding>-s<seed>.parquet`` (``-e<tag>`` for a non-default embedding)."""
    return storage.join(data_url, "labels", f"{method}-u{u}-r{rounding}-s{seed}{_embedding_tag(method, embedding)}.parquet")


# --------------------------------------------------------------------------------------------
# Reading the train split without its images
# --------------------------------------------------------------------------------------------
def read_train_columns(manifest: Manifest, columns: tuple[str, ...] = ("label", "id", "pos")) -> dict[str, np.ndarray]:
    """Columns of the train shards, concatenated and put back in ``build_data`` order (by ``pos``)."""
    import pyarrow.parquet as pq

    fs, _ = storage.resolve(manifest.url)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    want = tuple(dict.fromkeys((*columns, "pos")))
    pos_parts = []
    for u in manifest.shard_urls("train"):
        _, path = storage.resolve(u)
        with storage._errors(u, "read"):
            t = pq.read_table(path, filesystem=fs, columns=list(want))
        for c in columns:
            parts[c].append(t.column(c).to_numpy())
        pos_parts.append(t.column("pos").to_numpy())
    pos = np.concatenate(pos_parts) if pos_parts else np.zeros(0, np.int64)
    n = manifest.splits["train"].num_rows
    if len(pos) != n or not np.array_equal(np.sort(pos), np.arange(n)):
        raise DatasetError(f"train shards of {manifest.url}: column 'pos' is not a permutation of 0..{n - 1}")
    order = np.argsort(pos, kind="stable")
    return {c: np.concatenate(parts[c])[order].astype(np.int64) for c in columns}


def _decode_thumbnails(manifest: Manifest, size: int) -> np.ndarray:
    """Train images at <= ``size`` px (resize shorter side + center crop), uint8 [N, s, s, 3] in ``pos`` order.

    Uses Ray Data when a Ray cluster is connected (ImageNet-scale shards decode on every CPU of the
    cluster), else decodes in this process.
    """
    n = manifest.splits["train"].num_rows
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    try:
        import ray

        use_ray = ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a dependency
        use_ray = False
    if use_ray:
        import ray.data

        fs, _ = storage.resolve(manifest.url)
        paths = [storage.resolve(u)[1] for u in manifest.shard_urls("train")]
        ds = ray.data.read_parquet(paths, filesystem=fs, columns=["image", "pos"])
        ds = ds.map_batches(_thumbs_batch, fn_kwargs={"size": size}, batch_format="numpy", batch_size=256)
        for b in ds.iter_batches(batch_format="numpy", batch_size=4096):
            out[b["pos"]] = b["image"]
        return out
    import pyarrow.parquet as pq

    fs, _ = storage.resolve(manifest.url)
    for u in manifest.shard_urls("train"):
        t = pq.read_table(storage.resolve(u)[1], filesystem=fs, columns=["image", "pos"])
        b = _thumbs_batch(
            {"image": np.asarray(t.column("image").to_pylist(), dtype=object), "pos": t.column("pos").to_numpy()}, size
        )
        out[b["pos"]] = b["image"]
    return out


def _thumbs_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    from twohead.data.sources import decode_bytes, fit_size

    imgs = np.empty((len(batch["pos"]), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(batch["image"]):
        img = decode_bytes(bytes(data))
        if min(img.shape[-2:]) > size or img.shape[-2:] != (size, size):
            img = fit_size(img, size)
        imgs[i] = img.permute(1, 2, 0).numpy()
    return {"image": imgs, "pos": np.asarray(batch["pos"], dtype=np.int64)}


def _user_embedding(url: str, ids: np.ndarray) -> np.ndarray:
    import pyarrow.parquet as pq

    fs, path = storage.resolve(url)
    with storage._errors(url, "read"):
        t = pq.read_table(path, filesystem=fs)
    if "id" not in t.column_names or "vector" not in t.column_names:
        raise DatasetError(f"embedding file {url} needs columns id and vector; it has {t.column_names}")
    e_ids = t.column("id").to_numpy().astype(np.int64)
    vec = np.asarray(t.column("vector").to_pylist(), dtype=np.float32)
    lookup = ClusterLookup(e_ids, np.arange(len(e_ids)), source=f"embedding file {url}")
    return vec[lookup(ids)]


# --------------------------------------------------------------------------------------------
# Computing and writing
# --------------------------------------------------------------------------------------------
def compute_clusters(
    manifest: Manifest,
    method: str = "random",
    u: int = 10,
    rounding: str = "ceil",
    seed: int = 0,
    embedding: str = "pca",
    thumbs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(ids, clusters, plan)`` for the train split, in ``build_data`` order.

    ``thumbs``: the train images at ``THUMB_SIZE`` px in ``pos`` order, when already decoded (a search decodes
    them once per dataset, :mod:`rayjobs.data.plane`)."""
    from twohead.division import DivisionPlan, assign_clusters, pixel_embedding

    cols = read_train_columns(manifest)
    labels, ids = cols["label"], cols["id"]
    counts = np.bincount(labels, minlength=manifest.num_classes)
    if counts.tolist() != list(manifest.class_counts):
        raise DatasetError(
            f"train shards of {manifest.url} hold class counts {counts.tolist()}; the manifest says {manifest.class_counts}"
        )
    plan = DivisionPlan.from_counts(counts, u, rounding)
    emb = None
    if method != "random":
        if embedding in ("pca", "pixels"):
            if thumbs is None:
                thumbs = _decode_thumbnails(manifest, THUMB_SIZE)
            emb = (
                thumbs.reshape(len(thumbs), -1).astype(np.float32) / 255.0
                if embedding == "pixels"
                else pixel_embedding(thumbs, seed=seed)
            )
        elif embedding.startswith("checkpoint:"):
            raise DatasetError(
                "labels from a checkpoint embedding: compute the features and pass them as an (id, vector) Parquet URL"
            )
        else:
            emb = _user_embedding(embedding, ids)
    clusters = assign_clusters(labels, plan, method, seed, emb)
    return ids, clusters, plan


def write_labels(
    manifest: Manifest,
    method: str = "random",
    u: int = 10,
    rounding: str = "ceil",
    seed: int = 0,
    embedding: str = "pca",
    *,
    overwrite: bool = False,
    url: str | None = None,
    thumbs: np.ndarray | None = None,
) -> str:
    """Compute and publish a labels file (atomic); refuses to replace an existing one unless ``overwrite``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = url or labels_url(manifest.url, method, u, rounding, seed, embedding)
    if not overwrite and storage.exists(url):
        raise FileExistsError(f"{url} already exists; pass --overwrite to recompute it")
    ids, clusters, plan = compute_clusters(manifest, method, u, rounding, seed, embedding, thumbs)
    meta = {
        "method": method,
        "u": str(u),
        "rounding": rounding,
        "seed": str(seed),
        "embedding": embedding,
        "num_clusters": str(plan.num_clusters),
        "u_per_class": json.dumps(list(plan.u_per_class)),
        "dataset": manifest.url,
    }
    table = pa.table(
        {"id": pa.array(ids, pa.int64()), "cluster": pa.array(clusters, pa.int64())},
        schema=pa.schema([("id", pa.int64()), ("cluster", pa.int64())], metadata=meta),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(url, sink.getvalue().to_pybytes())
    log.info("wrote %s: %d samples, K=%d clusters", url, len(ids), plan.num_clusters)
    return url


def ensure_labels(manifest: Manifest, cfg: Any) -> str:
    """The labels file for a run's config (its method and resolved cluster seed), computed once if it does not exist."""
    m, seed = cfg.method, cfg.cluster_seed
    url = labels_url(manifest.url, m.clustering, m.u, m.rounding, seed, m.embedding)
    if storage.exists(url):
        return url
    try:
        return write_labels(manifest, m.clustering, m.u, m.rounding, seed, m.embedding, url=url)
    except FileExistsError:  # another driver wrote it meanwhile: same inputs, same result
        return url


# --------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------
class ClusterLookup:
    """``lookup(ids) -> clusters`` by binary search over sorted ids (small: 16 bytes per sample)."""

    def __init__(self, ids: np.ndarray, clusters: np.ndarray, source: str = "labels"):
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self.clusters = np.asarray(clusters, dtype=np.int64)[order]
        self.source = source
        dup = np.flatnonzero(np.diff(self.ids) == 0)
        if len(dup):
            raise DatasetError(f"{source} lists id {int(self.ids[dup[0]])} more than once ({len(dup)} duplicates)")

    def __len__(self) -> int:
        return len(self.ids)

    def missing(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return ids
        idx = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return ids[self.ids[idx] != ids]

    def __call__(self, ids: np.ndarray, where: str = "") -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            idx = np.zeros(len(ids), dtype=np.int64)
            ok = np.zeros(len(ids), dtype=bool)
        else:
            idx = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
            ok = self.ids[idx] == ids
        if not ok.all():
            miss = ids[~ok]
            raise MissingClusterError(
                f"{self.source} has no cluster for {len(miss)} of {len(ids)} sample ids{where} "
                f"(first: {miss[:5].tolist()}); recompute it with python -m rayjobs.labels --overwrite"
            )
        return self.clusters[idx]


def load_lookup(url: str) -> tuple[ClusterLookup, dict[str, str]]:
    """The lookup table of a labels file and its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.resolve(url)
    with storage._errors(url, "read"):
        if not storage.exists(url):
            raise DatasetError(f"labels file {url} does not exist; create it with python -m rayjobs.labels")
        try:
            t = pq.read_table(path, filesystem=fs)
        except pa.ArrowInvalid as e:  # empty, truncated or not Parquet (an OSError is the store's, handled above)
            raise DatasetError(
                f"labels file {url} is not a readable Parquet file ({' '.join(str(e).split())}); "
                "recreate it with python -m rayjobs.labels --overwrite"
            ) from None
    for c in ("id", "cluster"):
        if c not in t.column_names:
            raise DatasetError(f"labels file {url} has no {c!r} column (columns: {t.column_names})")
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    return ClusterLookup(t.column("id").to_numpy(), t.column("cluster").to_numpy(), source=f"labels file {url}"), meta


def check_labels_file(manifest: Manifest, url: str, plan: Any) -> ClusterLookup:
    """Every train id has a cluster, and every cluster belongs to its sample's class under ``plan``."""
    lookup, _ = load_lookup(url)
    cols = read_train_columns(manifest, ("label", "id"))
    clusters = lookup(cols["id"], where=f" of the train split of {manifest.url}")
    K = plan.num_clusters
    bad = np.flatnonzero((clusters < 0) | (clusters >= K))
    if len(bad):
        raise DatasetError(
            f"labels file {url}: id {int(cols['id'][bad[0]])} has cluster {int(clusters[bad[0]])} outside [0, {K})"
        )
    wrong = np.flatnonzero(plan.cluster_to_class[clusters] != cols["label"])
    if len(wrong):
        i = wrong[0]
        raise DatasetError(
            f"labels file {url}: id {int(cols['id'][i])} of class {int(cols['label'][i])} is in cluster {int(clusters[i])}, "
            f"which belongs to class {int(plan.cluster_to_class[clusters[i]])} ({len(wrong)} such rows); "
            f"was it computed with another u / rounding?"
        )
    return lookup


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from twohead.config import MethodConfig

    d = MethodConfig()
    p = argparse.ArgumentParser(prog="python -m rayjobs.labels", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared dataset URL (holds manifest.json)")
    p.add_argument("--method", default=d.clustering, choices=("random", "kmeans", "hierarchical"))
    p.add_argument("--u", type=int, default=d.u, help="clusters of the largest class (Eq. 3)")
    p.add_argument("--rounding", default=d.rounding, choices=("ceil", "round"))
    p.add_argument("--seed", type=int, default=0, help="cluster seed: the run's method.cluster_seed, else its optim.seed")
    p.add_argument("--embedding", default=d.embedding, help="pca | pixels | URL of an (id, vector) Parquet file")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--address", help="Ray cluster that decodes the images (kmeans/hierarchical; default: RAY_ADDRESS, else a local Ray)"
    )
    args = p.parse_args(argv)
    if args.u < 1:  # Eq. 3: the largest class gets u clusters, the smallest one
        p.error(f"argument --u: {args.u} is not a number of clusters; give an integer >= 1 (the paper uses 10)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rayjobs.cluster.connect import RayAddressError, connect, resolve

    try:
        decode_on_ray = args.method != "random" and args.embedding in ("pca", "pixels")
        target = resolve(args.address) if decode_on_ray else None  # checked before anything is read or written
        manifest = read_manifest(args.data)
        if decode_on_ray:
            connect(target, log_to_driver=False, include_dashboard=False)
        url = write_labels(manifest, args.method, args.u, args.rounding, args.seed, args.embedding, overwrite=args.overwrite)
    except (DatasetError, storage.StorageError, FileExistsError, ValueError, RayAddressError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
