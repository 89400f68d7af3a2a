"""rayjobs.data.stream: Ray Data streaming from the (moto) S3 server on the session's Ray head, and row validation."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayjobs.data import labels, prepare, storage, stream
from rayjobs.data.manifest import MANIFEST, Manifest, verify_dataset

TINY = ["data.train_fraction=0.05", "data.eval_fraction=0.02"]


def tiny_cfg(*extra: str):
    from twohead.config import load_config

    return load_config(preset="smoke", overrides=[*TINY, *extra])


@pytest.fixture(scope="module")
def data(data_root):
    from twohead.data import build_data

    return build_data(tiny_cfg().data)


@pytest.fixture(scope="module")
def s3_ds(s3_server, data_root) -> Manifest:
    bucket = s3_server.make_bucket(f"stream-{uuid.uuid4().hex[:8]}")
    return prepare.prepare(tiny_cfg(), f"s3://{bucket}/datasets")


def rewrite_train_shard(src: Manifest, dst_url: str, edit) -> Manifest:
    """Copy ``src`` to ``dst_url`` with ``edit(table) -> table`` applied to the first train shard; the manifest is
    updated to match (sha256, bytes), so only row-level validation can catch the edit."""
    for f in storage.list_files(src.url):
        if f != MANIFEST and not f.startswith("labels/"):
            storage.write_bytes(storage.join(dst_url, f), storage.read_bytes(storage.join(src.url, f)))
    shard = src.splits["train"].shards[0]
    t = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(src.url, shard.path))))
    t = edit(t)
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    payload = sink.getvalue().to_pybytes()
    storage.write_bytes(storage.join(dst_url, shard.path), payload)
    d = src.to_json()
    d["splits"]["train"]["shards"][0].update(bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    storage.write_json(storage.join(dst_url, MANIFEST), d)
    return verify_dataset(dst_url)


def set_row(t: pa.Table, column: str, row: int, value) -> pa.Table:
    col = t.column(column).to_pylist()
    col[row] = value
    return t.set_column(t.column_names.index(column), column, pa.array(col, type=t.schema.field(column).type))


def lookup_for(m: Manifest):
    url = labels.ensure_labels(m, tiny_cfg())
    return labels.load_lookup(url)[0]


# --------------------------------------------------------------------------------------------
# Streaming through Ray Data
# --------------------------------------------------------------------------------------------
def test_streams_every_row_once_per_epoch_with_its_cluster(ray_session, s3_ds, data):
    lookup = lookup_for(s3_ds)
    n = s3_ds.splits["train"].num_rows
    ds = stream.train_dataset(s3_ds, lookup=lookup)
    src = stream.RayBatchSource(ds.iterator(), batch_size=64, num_samples=n, augmented=False, seed=0)
    by_pixels = {data.train.images[i].tobytes(): i for i in range(len(data.train))}
    orders = []
    for epoch in range(2):
        seen = []
        for x, y, k in src.batches(epoch):
            assert x.dtype.is_floating_point is False and tuple(x.shape[1:]) == (32, 32, 3)
            for img, lab, clu in zip(x.numpy(), y.tolist(), k.tolist()):
                i = by_pixels[img.tobytes()]  # the streamed pixels are exactly one source image
                assert lab == data.train.labels[i]
                assert clu == lookup(np.array([data.train.ids[i]]))[0]
                seen.append(i)
        assert sorted(seen) == list(range(n)), f"epoch {epoch}: every row exactly once"
        orders.append(seen)
    assert orders[0] != orders[1], "a new order every epoch"


def _epoch_blocks(ds, epochs: int, id_of: dict[bytes, int]) -> list[list[tuple[int, ...]]]:
    """The sample ids of every block the stream delivers, epoch by epoch (one dataset executed ``epochs`` times);
    ``id_of`` names each 32 px image (streamed un-augmented) by its pixels."""
    out = []
    for _ in range(epochs):
        blocks = ds.iter_batches(batch_size=None, batch_format="numpy")
        out.append([tuple(id_of[img.tobytes()] for img in b["image"]) for b in blocks])
    return out


def test_shard_and_row_order_are_new_every_epoch_and_follow_the_seed(ray_session, s3_server, data):
    """Every epoch puts the shards and the rows inside each shard in a new order, drawn from the seed: the same seed
    gives the same batches epoch by epoch (as sets: concurrent shard tasks may finish in any order), another seed
    other batches; each block is one decode batch of one shard."""
    rows = 64
    bucket = s3_server.make_bucket(f"order-{uuid.uuid4().hex[:8]}")
    sharded = prepare.prepare(tiny_cfg(), f"s3://{bucket}/datasets", rows_per_shard=200)
    assert len(sharded.splits["train"].shards) >= 3
    id_of = {data.train.images[i].tobytes(): int(data.train.ids[i]) for i in range(len(data.train))}

    def blocks(seed: int) -> list[list[tuple[int, ...]]]:
        return _epoch_blocks(stream.train_dataset(sharded, lookup=None, seed=seed, decode_batch_size=rows), 2, id_of)

    a, b, other = blocks(0), blocks(0), blocks(7)
    shard_ids = []
    for shard in sharded.splits["train"].shards:
        t = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(sharded.url, shard.path))), columns=["id"])
        shard_ids.append(set(t.column("id").to_pylist()))
    for epoch in a:
        assert sorted(i for blk in epoch for i in blk) == sorted(i for ids in shard_ids for i in ids)  # each row once
        for blk in epoch:
            assert len(blk) <= rows and sum(set(blk) <= ids for ids in shard_ids) == 1  # one batch of one shard
    assert [set(e) for e in a] == [set(e) for e in b], "same seed, same batches every epoch"
    # A new shard order alone would give the same blocks: different blocks mean the rows were reordered too.
    assert set(a[0]) != set(a[1]), "a new row order in the next epoch"
    assert set(other[0]) != set(a[0]), "another seed, other batches"


def test_corrupt_image_names_shard_and_row_then_skip_counts_it(ray_session, s3_ds, s3_server):
    import ray

    bad = rewrite_train_shard(s3_ds, f"{s3_ds.url}-corrupt", lambda t: set_row(t, "image", 5, b"not an image"))
    first = s3_ds.splits["train"].shards[0]
    bad_id = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(s3_ds.url, first.path)))).column("id")[5].as_py()
    lookup = lookup_for(s3_ds)
    # Ray Data re-raises the decode task's RowError inside a RayTaskError that keeps its message
    with pytest.raises(
        ray.exceptions.RayTaskError, match=rf"shard s3://.*-corrupt/train/part-00000\.parquet: row id {bad_id}: undecodable image"
    ):
        for _ in stream.train_dataset(bad, lookup=lookup).iter_batches(batch_size=256):
            pass

    counter = ray.remote(stream.SkipCounter).options(num_cpus=0).remote()
    n = 0
    for _epoch in range(2):
        n = sum(
            len(b["label"])
            for b in stream.train_dataset(bad, lookup=lookup, skip_invalid=True, counter=counter).iter_batches(batch_size=256)
        )
    assert n == bad.splits["train"].num_rows - 1
    summary = ray.get(counter.summary.remote())
    assert summary["skipped"] == 1  # counted once, although both epochs met it
    assert summary["by_reason"] == {"undecodable image": 1}
    assert summary["first"][0]["id"] == bad_id and summary["first"][0]["shard"].endswith("train/part-00000.parquet")


# --------------------------------------------------------------------------------------------
# Row validation (the same UDF, called directly)
# --------------------------------------------------------------------------------------------
def _batch(m: Manifest, rows: int = 8) -> dict:
    t = pq.read_table(pa.BufferReader(storage.read_bytes(m.shard_urls("train")[0])), columns=["image", "label", "id"]).slice(
        0, rows
    )
    return {
        "image": np.asarray(t.column("image").to_pylist(), dtype=object),
        "label": t.column("label").to_numpy(),
        "id": t.column("id").to_numpy(),
        "path": np.asarray([m.shard_urls("train")[0].split("://", 1)[1]] * rows, dtype=object),
    }


def test_label_outside_range_is_named(s3_ds):
    from rayjobs.train.job import check_train_labels

    b = _batch(s3_ds)
    b["label"] = b["label"].copy()
    b["label"][3] = 13
    kw = {"num_classes": 10, "size": 32, "augment": False, "lookup": None, "url_prefix": "s3://"}
    with pytest.raises(stream.RowError, match=rf"part-00000\.parquet: row id {b['id'][3]}: label 13 outside \[0, 10\)"):
        stream.decode_batch(b, **kw)
    out = stream.decode_batch(b, **kw, skip_invalid=True)
    assert len(out["label"]) == 7 and 13 not in out["label"]
    np.testing.assert_array_equal(out["cluster"], out["label"])  # no CDH: cluster id = class

    bad = rewrite_train_shard(s3_ds, f"{s3_ds.url}-badlabel", lambda t: set_row(t, "label", 2, -1))
    with pytest.raises(stream.RowError, match=r"badlabel/train/part-00000\.parquet: row id \d+: label -1 outside \[0, 10\)"):
        check_train_labels(bad)  # the driver's check, before any worker starts


def test_missing_cluster_ids_are_named(s3_ds):
    lookup = lookup_for(s3_ds)
    b = _batch(s3_ds)
    partial = labels.ClusterLookup(
        lookup.ids[~np.isin(lookup.ids, b["id"][:3])],
        lookup.clusters[~np.isin(lookup.ids, b["id"][:3])],
        source="labels file s3://x/labels/random-u10-rceil-s0.parquet",
    )
    with pytest.raises(labels.MissingClusterError, match=r"random-u10-rceil-s0\.parquet has no cluster for 3 ids .*first: \["):
        stream.decode_batch(b, num_classes=10, size=32, augment=False, lookup=partial, skip_invalid=True)
    out = stream.decode_batch(b, num_classes=10, size=32, augment=False, lookup=lookup)
    np.testing.assert_array_equal(out["cluster"], lookup(b["id"]))


def test_large_images_are_augmented_on_cpu(s3_ds):
    b = _batch(s3_ds)
    out = stream.decode_batch(b, num_classes=10, size=96, augment=True, lookup=None)
    assert out["image"].shape == (8, 96, 96, 3) and out["image"].dtype == np.uint8


# --------------------------------------------------------------------------------------------
# LTData of a Ray run
# --------------------------------------------------------------------------------------------
def test_ltdata_from_manifest(s3_ds, data):
    d = stream.ltdata_from_manifest(s3_ds)
    assert d.class_counts.tolist() == data.class_counts.tolist()
    assert d.train.images.strides[0] == 0  # placeholder: no memory per sample
    for name in ("val", "test"):
        np.testing.assert_array_equal(getattr(d, name).images, getattr(data, name).images)
        np.testing.assert_array_equal(getattr(d, name).ids, getattr(data, name).ids)
    other = stream.ltdata_from_manifest(s3_ds, with_eval=False)
    assert other.val is None and len(other.test) == 0


# --------------------------------------------------------------------------------------------
# Large images: decode + RandomResizedCrop on the CPU workers, or encoded for the training GPU
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jpeg_ds(tmp_path_factory) -> Manifest:
    """48 generated 256 px JPEGs in 10 classes, a 224 px dataset (ImageNet-size crops)."""
    from rayjobs.bench.ray_layer import jpeg_dataset

    return jpeg_dataset(f"file://{tmp_path_factory.mktemp('jpeg')}/ds", 48, width=256, height=256, num_classes=10)


def test_stream_and_dataloader_crop_with_one_function(jpeg_ds, tmp_path):
    """The same bytes and random state give the same crop in Ray Data's UDF and in the local DataLoader."""
    import torch

    from twohead.data import Split
    from twohead.data.loader import FileDataset

    b = _batch(jpeg_ds, rows=4)
    files = []
    for i, blob in enumerate(b["image"]):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(blob)
    ds = FileDataset(Split(b["label"], b["id"], files=[str(f) for f in files], image_size=224), train=True)
    for i in range(4):
        torch.manual_seed(i)
        streamed = stream.decode_batch(
            {k: v[i : i + 1] for k, v in b.items()}, num_classes=10, size=224, augment=True, lookup=None
        )
        torch.manual_seed(i)
        local, label, _ = ds[i]
        assert streamed["image"].shape == (1, 224, 224, 3) and label == b["label"][i]
        np.testing.assert_array_equal(streamed["image"][0], local.permute(1, 2, 0).numpy())


def test_gpu_decode_streams_checked_bytes_and_names_bad_rows(jpeg_ds, s3_ds):
    b = _batch(jpeg_ds, rows=6)
    kw = {"num_classes": 10, "size": 224, "augment": True, "lookup": None, "url_prefix": "", "decode": "gpu"}
    out = stream.decode_batch(b, **kw)
    assert [bytes(x) for x in out["image"]] == [bytes(x) for x in b["image"]]  # passed on undecoded
    np.testing.assert_array_equal(out["id"], b["id"])
    b["image"] = b["image"].copy()
    b["image"][4] = b"not an image"
    with pytest.raises(stream.RowError, match=rf"row id {b['id'][4]}: undecodable image: UnidentifiedImageError"):
        stream.decode_batch(b, **kw)
    assert len(stream.decode_batch(b, **kw, skip_invalid=True)["image"]) == 5
    with pytest.raises(ValueError, match=r"decode=gpu is for images of at least 65 px; .* has 32 px"):
        stream.train_dataset(s3_ds, lookup=None, decode="gpu")  # CIFAR: decoded whole on the CPU workers


def test_gpu_decode_path_end_to_end_on_the_cpu(ray_session, jpeg_ds):
    """Ray Data streams encoded JPEGs; RayBatchSource decodes and crops each batch with decode_jpeg on its device
    (the CPU here; device="cuda" on a GPU worker runs the same code on nvJPEG)."""
    ds = stream.train_dataset(jpeg_ds, lookup=None, decode="gpu")
    src = stream.RayBatchSource(ds.iterator(), batch_size=16, num_samples=48, augmented=True, gpu_decode_size=224, device="cpu")
    labels = []
    for x, y, k in src.batches(0):
        assert tuple(x.shape[1:]) == (3, 224, 224) and str(x.dtype) == "torch.uint8"
        assert x.float().std() > 5  # real pixels, not a blank tensor
        assert y.tolist() == k.tolist()  # no class division: cluster id = class
        labels += y.tolist()
    assert sorted(labels) == sorted(np.arange(48) % 10)
