"""rayjobs.prepare / storage / labels and the ImageNet-LT stand-in, against real files and a real (moto) S3 server.

No Ray here: shards, manifests, cluster labels and the storage error paths are plain pyarrow + numpy.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayjobs.cluster.local import free_port
from rayjobs.data import labels, prepare, storage
from rayjobs.data.manifest import dataset_state, read_manifest, verify_dataset
from rayjobs.data.storage import DatasetError, StorageError

TINY = ["data.train_fraction=0.05", "data.eval_fraction=0.02"]


def tiny_cfg(*extra: str):
    from twohead.config import load_config

    return load_config(preset="smoke", overrides=[*TINY, *extra])


def read_split(url: str, split: str):
    """(images sorted by pos, labels, ids) decoded from a prepared split with plain pyarrow + PIL."""
    from PIL import Image

    m = read_manifest(url)
    fs, _ = storage.resolve(url)
    tables = [pq.read_table(storage.resolve(u)[1], filesystem=fs) for u in m.shard_urls(split)]
    import pyarrow as pa

    t = pa.concat_tables(tables).sort_by("pos")
    imgs = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in t.column("image").to_pylist()])
    return imgs, t.column("label").to_numpy(), t.column("id").to_numpy(), t


@pytest.fixture(scope="module")
def data(data_root):
    from twohead.data import build_data

    return build_data(tiny_cfg().data)


@pytest.fixture(scope="module")
def local_ds(data_root, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("shards")
    m = prepare.prepare(tiny_cfg(), str(out))
    return m.url


@pytest.fixture()
def bucket(s3_server) -> str:
    return s3_server.make_bucket(f"prep-{uuid.uuid4().hex[:8]}")


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------
def test_shards_hold_exactly_build_data(local_ds, data):
    m = verify_dataset(local_ds)
    assert m.class_counts == data.class_counts.tolist()
    assert m.num_classes == 10 and m.image_size == 32 and m.image_format == "webp"
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        imgs, y, ids, t = read_split(local_ds, name)
        assert m.splits[name].num_rows == len(split)
        np.testing.assert_array_equal(ids, split.ids)
        np.testing.assert_array_equal(y, split.labels)
        np.testing.assert_array_equal(imgs, split.images)  # lossless WebP: bit-exact pixels
        assert t.schema.field("label").type == "int32" and t.schema.field("id").type == "int64"
    # Train rows are stored shuffled (streaming readers only shuffle locally), val/test in order.
    _, _, _, t = read_split(local_ds, "train")
    stored_pos = (
        pq.read_table(storage.resolve(storage.join(local_ds, m.splits["train"].shards[0].path))[1]).column("pos").to_numpy()
    )
    assert not np.array_equal(stored_pos, np.sort(stored_pos))
    assert not any(f.startswith("_tmp-") or "/_tmp-" in f for f in storage.list_files(local_ds))


def test_prepare_to_s3_matches_local(local_ds, bucket):
    m = prepare.prepare(tiny_cfg(), f"s3://{bucket}/datasets")
    assert m.url == f"s3://{bucket}/datasets/cifar10-lt-imb100-f0.05-0.02"
    verify_dataset(m.url)
    local = read_manifest(local_ds)
    # Encoding is deterministic: the same shards, byte for byte, whatever the store.
    assert [s.sha256 for s in m.splits["train"].shards] == [s.sha256 for s in local.splits["train"].shards]
    files = storage.list_files(m.url)
    assert "manifest.json" in files and any(f.startswith("train/part-") for f in files)
    assert not any("_tmp-" in f for f in files)


def test_staging_left_by_an_outage_is_removed_by_the_next_prepare(bucket, s3_server):
    """An outage can cut a prepare before it removes its staging folder, which may hold only the object store's
    empty "folder" markers. That is not a dataset (no refusal), and the next prepare removes it."""
    client = s3_server.client()
    for key in ("datasets/ds/_tmp-0ld/", "datasets/ds/_tmp-0ld/train/", "datasets/ds/_tmp-1ld/train/part-00000.parquet"):
        client.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"half written")
    assert dataset_state(f"s3://{bucket}/datasets/ds") == "missing"
    prepare.prepare(tiny_cfg(), f"s3://{bucket}/datasets", name="ds")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="datasets/ds/").get("Contents", [])]
    assert "datasets/ds/manifest.json" in keys and not [k for k in keys if "_tmp-" in k], keys


def test_refuses_to_overwrite_then_overwrites(tmp_path, data_root):
    m = prepare.prepare(tiny_cfg(), str(tmp_path), name="ds")
    before = {f: storage.sha256(storage.join(m.url, f))[0] for f in storage.list_files(m.url)}
    with pytest.raises(prepare.DatasetExistsError, match="complete dataset.*--overwrite"):
        prepare.prepare(tiny_cfg(), str(tmp_path), name="ds")
    assert (
        prepare.main(["--out", str(tmp_path), "--name", "ds", "--preset", "smoke", *[a for s in TINY for a in ("--set", s)]]) == 2
    )
    assert {f: storage.sha256(storage.join(m.url, f))[0] for f in storage.list_files(m.url)} == before

    # --overwrite replaces the dataset and drops cluster labels derived from the old rows.
    labels.ensure_labels(m, tiny_cfg())
    assert any(f.startswith("labels/") for f in storage.list_files(m.url))
    m2 = prepare.prepare(tiny_cfg("data.imbalance=10"), str(tmp_path), name="ds", overwrite=True)
    assert m2.class_counts != m.class_counts
    assert read_manifest(m.url).class_counts == m2.class_counts
    assert not any(f.startswith("labels/") for f in storage.list_files(m.url))


def test_a_folder_of_other_files_is_never_taken_for_a_dataset(tmp_path, data_root):
    """A run folder given as --data or as prepare's target: named as not a dataset, and left alone even with
    --overwrite (which would otherwise mix shards into it)."""
    run = tmp_path / "runs" / "smoke"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"weights")
    (run / "config.yaml").write_text("method: {u: 5}\n")
    assert dataset_state(str(run)) == "foreign"
    with pytest.raises(DatasetError, match=r"it holds checkpoint\.pt, config\.yaml: not a dataset folder") as e:
        read_manifest(str(run))
    assert "--overwrite" not in str(e.value)
    for overwrite in (False, True):
        with pytest.raises(prepare.DatasetExistsError, match=r"holds files that are not a twohead dataset \(checkpoint\.pt"):
            prepare.prepare(tiny_cfg(), str(tmp_path / "runs"), name="smoke", overwrite=overwrite)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.yaml"]
    assert (run / "checkpoint.pt").read_bytes() == b"weights"


def test_interrupted_dataset_is_refused_and_reported(tmp_path, data_root):
    ds = tmp_path / "ds"
    (ds / "train").mkdir(parents=True)
    (ds / "train" / "part-00000.parquet").write_bytes(b"half written")
    with pytest.raises(prepare.DatasetExistsError, match="interrupted"):
        prepare.prepare(tiny_cfg(), str(tmp_path), name="ds")
    assert (ds / "train" / "part-00000.parquet").read_bytes() == b"half written"
    with pytest.raises(DatasetError, match="no manifest.*--overwrite"):
        read_manifest(str(ds))


def test_manifest_must_match_shards(local_ds, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(local_ds, copy)
    m = verify_dataset(str(copy))
    shard = copy / m.splits["train"].shards[0].path
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"train/part-00000\.parquet has sha256 .* the manifest says"):
        verify_dataset(str(copy))
    verify_dataset(str(copy), checksums=False)  # a size-only check cannot see it
    shard.write_bytes(bytes(raw[:-10]))
    with pytest.raises(DatasetError, match=r"part-00000\.parquet has \d+ bytes; the manifest says"):
        verify_dataset(str(copy), checksums=False)
    shard.unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        verify_dataset(str(copy), checksums=False)


def test_manifest_format_is_checked(local_ds, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(local_ds, copy)
    d = json.loads((copy / "manifest.json").read_text())
    d["format"] = "something-else/9"
    (copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(DatasetError, match="format 'something-else/9'"):
        read_manifest(str(copy))


# --------------------------------------------------------------------------------------------
# Storage errors
# --------------------------------------------------------------------------------------------
def test_missing_bucket(s3_server, data_root):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-x' does not exist"):
        prepare.prepare(tiny_cfg(), "s3://no-such-bucket-x/datasets")
    with pytest.raises(StorageError, match="does not exist"):
        storage.write_bytes("s3://no-such-bucket-x/a/b.json", b"{}")


@pytest.mark.timeout(60)  # a clear error, never a hang (the retries are bounded)
def test_unreachable_endpoint(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # a port nothing listens on
    monkeypatch.setenv("TWOHEAD_S3_RETRIES", "1")
    with pytest.raises(StorageError, match="unreachable"):
        storage.check_reachable("s3://any-bucket/datasets")
    with pytest.raises(StorageError, match="unreachable"):
        read_manifest("s3://any-bucket/datasets/x")


def test_check_reachable_is_quick_and_the_retries_setting_is_checked(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # a port nothing listens on
    monkeypatch.delenv("TWOHEAD_S3_RETRIES", raising=False)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="unreachable"):
        storage.check_reachable("s3://any-bucket/runs")
    # 2 attempts, not the 10 a request mid-run makes (those take a minute or more against a dead endpoint)
    assert time.monotonic() - t0 < 15
    for bad in ("0", "three", "-1"):
        monkeypatch.setenv("TWOHEAD_S3_RETRIES", bad)
        with pytest.raises(StorageError, match=f"TWOHEAD_S3_RETRIES='{bad}' must be a whole number >= 1"):
            storage.resolve("s3://any-bucket/runs")


@pytest.mark.timeout(120)
def test_a_write_rides_out_an_object_store_restart(monkeypatch):
    """The store is down for 5 s (a restart, a failover) when a write starts: the request is retried until it is
    back (AWS standard retry mode, 10 attempts), and the object is there, whole."""
    import threading

    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("TWOHEAD_S3_RETRIES", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="outage")
    server.stop()  # moto keeps its buckets and objects across a stop and start, as a real store does
    back = threading.Event()

    def restart() -> None:
        time.sleep(5)
        nonlocal server
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        back.set()

    threading.Thread(target=restart, daemon=True).start()
    try:
        storage.write_bytes("s3://outage/runs/r/history.jsonl", b'{"epoch": 1}\n')
        assert back.is_set(), "the write returned while the store was still down"
        assert storage.read_bytes("s3://outage/runs/r/history.jsonl") == b'{"epoch": 1}\n'
    finally:
        back.wait(30)
        server.stop()


class _Store:
    """A moto S3 server on a free port with one bucket, the environment that reaches it, and outages on demand
    (moto keeps its objects across a stop and start, as a real bucket outlives an outage)."""

    def __init__(self, monkeypatch, bucket: str):
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        for k, v in {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        self._start()
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)

    def _start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def down_for(self, seconds: float):
        """Stop the server now and start it again ``seconds`` later; the returned event is set once it is back."""
        import threading

        self.server.stop()
        back = threading.Event()

        def restart() -> None:
            time.sleep(seconds)
            self._start()
            back.set()

        threading.Thread(target=restart, daemon=True).start()
        return back


@pytest.mark.timeout(120)
def test_a_located_url_keeps_its_endpoint_and_retries_in_another_process(monkeypatch):
    """A stream task gets ``Located`` (not a pickled pyarrow filesystem, which loses its retry strategy): unpickled
    where no AWS variable is set, it still reaches the driver's endpoint and rides out a 5 s outage of the store,
    which the pickled filesystem does not."""
    import pickle

    store = _Store(monkeypatch, "located")
    monkeypatch.setenv("TWOHEAD_S3_RETRIES", "10")
    storage.write_bytes("s3://located/shards/part-0.parquet", b"shard bytes")
    located = pickle.dumps(storage.Located.of("s3://located/shards/part-0.parquet"))
    pickled_fs = pickle.dumps(storage.resolve("s3://located")[0])
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the other process: none of the driver's settings
    monkeypatch.delenv("TWOHEAD_S3_RETRIES")
    loc = pickle.loads(located)
    assert loc.s3 == storage.S3Settings(store.endpoint, "us-east-1", 10, None)
    back = store.down_for(5)
    try:
        with pytest.raises(OSError):  # pyarrow's default 3 attempts give up within the outage
            with pickle.loads(pickled_fs).open_input_stream("located/shards/part-0.parquet") as f:
                f.read()
    finally:
        back.wait(30)
    back = store.down_for(5)
    try:
        fs, path = loc.resolve()
        with fs.open_input_stream(path) as f:
            assert f.read() == b"shard bytes"
        assert back.is_set(), "the read returned while the store was still down"
    finally:
        back.wait(30)
        store.server.stop()


@pytest.mark.timeout(120)
def test_ray_storage_keeps_its_retries_when_pickled(monkeypatch):
    """Ray Train and Tune pickle ``storage_filesystem`` into every process: the one :func:`storage.ray_storage`
    gives (s3fs in pyarrow's FSSpecHandler) writes through a 5 s outage after a pickle round trip made where no AWS
    variable is set any more."""
    import pickle

    import pyarrow.fs as pafs

    store = _Store(monkeypatch, "ray-storage")
    monkeypatch.delenv("TWOHEAD_S3_RETRIES", raising=False)
    fs, path = storage.ray_storage("s3://ray-storage/runs")
    assert isinstance(fs, pafs.PyFileSystem) and path == "ray-storage/runs"
    fs = pickle.loads(pickle.dumps(fs))
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the settings travel inside the pickle
    back = store.down_for(5)
    try:
        with fs.open_output_stream(f"{path}/cut/checkpoint_000001/state.pt") as f:
            f.write(b"checkpoint")
        assert back.is_set(), "the write returned while the store was still down"
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint)
        assert storage.read_bytes("s3://ray-storage/runs/cut/checkpoint_000001/state.pt") == b"checkpoint"
        assert storage.ray_storage("file:///tmp/x")[1] == "/tmp/x"  # other URLs resolve as everywhere else
    finally:
        back.wait(30)
        store.server.stop()


def test_upload_dir_is_complete_when_marker_exists(tmp_path, bucket):
    src = tmp_path / "run"
    (src / "sub").mkdir(parents=True)
    (src / "metrics.json").write_text('{"top1": 1}')
    (src / "history.jsonl").write_text("{}\n")
    (src / "sub" / "plot.png").write_bytes(b"png")
    url = f"s3://{bucket}/runs/r/results"
    rel = storage.upload_dir(src, url)
    assert rel[-1] == "metrics.json"  # the completion marker is published last
    assert storage.list_files(url) == ["history.jsonl", "metrics.json", "sub/plot.png"]
    assert storage.read_json(f"{url}/metrics.json") == {"top1": 1}
    # an upload the store's going away cut short left its staging folder (a file in it, and an empty one): the
    # next upload removes both and keeps every published file
    storage.write_bytes(f"{url}/_tmp-cut0000000a/history.jsonl", b"{}\n")
    _, path = storage.resolve(url)
    storage.resolve(url)[0].create_dir(f"{path}/_tmp-cut0000000b")
    assert {"_tmp-cut0000000a", "_tmp-cut0000000b"} <= set(storage.list_dir(url))
    (src / "metrics.json").write_text('{"top1": 2}')
    storage.upload_dir(src, url)
    assert storage.list_dir(url) == ["history.jsonl", "metrics.json", "sub"]
    assert storage.read_json(f"{url}/metrics.json") == {"top1": 2}


# --------------------------------------------------------------------------------------------
# Cluster labels
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["random", "kmeans"])
def test_labels_equal_the_local_runs_clusters(local_ds, data, method):
    from twohead.clusters import division_for

    cfg = tiny_cfg(f"method.clustering={method}")
    plan, local = division_for(cfg, data)
    m = read_manifest(local_ds)
    ids, clusters, plan2 = labels.compute_clusters(m, method, cfg.method.u, cfg.method.rounding, cfg.cluster_seed)
    assert plan2.u_per_class == plan.u_per_class
    np.testing.assert_array_equal(ids, data.train.ids)
    np.testing.assert_array_equal(clusters, local)


def test_labels_file_roundtrip_and_checks(local_ds, tmp_path):
    from twohead.division import DivisionPlan

    m = read_manifest(local_ds)
    cfg = tiny_cfg()
    url = labels.ensure_labels(m, cfg)
    assert url == f"{local_ds}/labels/random-u10-rceil-s0.parquet"
    assert labels.ensure_labels(m, cfg) == url  # computed once
    with pytest.raises(FileExistsError):
        labels.write_labels(m, "random", 10, "ceil", 0)
    plan = DivisionPlan.from_counts(m.class_counts, 10, "ceil")
    lookup = labels.check_labels_file(m, url, plan)
    t = pq.read_table(storage.resolve(url)[1])
    assert t.column_names == ["id", "cluster"]
    np.testing.assert_array_equal(lookup(t.column("id").to_numpy()), t.column("cluster").to_numpy())

    # Drop some ids: the error names how many, the first ids and the file.
    partial = str(tmp_path / "partial.parquet")
    pq.write_table(t.slice(7), partial)
    with pytest.raises(labels.MissingClusterError, match=rf"partial\.parquet has no cluster for 7 of {len(t)} .*first: \["):
        labels.check_labels_file(m, partial, plan)
    # Clusters of another u put samples in another class's clusters.
    other = labels.write_labels(m, "random", 3, "ceil", 0)
    with pytest.raises(DatasetError, match="belongs to class"):
        labels.check_labels_file(m, other, plan)


# --------------------------------------------------------------------------------------------
# ImageNet-LT stand-in
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_standin_has_real_counts_layout_and_learnable_classes(data_root, tmp_path):
    from twohead.data import build_data
    from twohead.data.standin import generate_standin

    counts = json.loads((data_root / "imagenet_lt" / "train_class_counts.json").read_text())["counts"]
    t0 = time.perf_counter()
    folder = generate_standin(tmp_path / "standin", 32, seed=0, data_root=data_root, test_per_class=2)
    took = time.perf_counter() - t0
    print(f"stand-in: {sum(counts) + 20_000 + 2_000} JPEGs in {took:.1f}s")
    assert generate_standin(folder, 32, seed=0, data_root=data_root, test_per_class=2) == folder  # cached

    lists = folder / "imagenet_lt"
    train = [ln.split() for ln in (lists / "ImageNet_LT_train.txt").read_text().splitlines()]
    assert np.bincount([int(c) for _, c in train], minlength=1000).tolist() == counts  # the real 115,846
    val = (lists / "ImageNet_LT_val.txt").read_text().splitlines()
    real_val = (data_root / "imagenet_lt" / "ImageNet_LT_val.txt").read_text().splitlines()
    assert val == real_val  # the real val list, paths and all
    test = [ln.split() for ln in (lists / "ImageNet_LT_test.txt").read_text().splitlines()]
    assert np.bincount([int(c) for _, c in test], minlength=1000).tolist() == [2] * 1000
    assert all(p.startswith("val/") for p, _ in test) and all(p.startswith("train/") for p, _ in train)
    assert not {p for p, _ in train} & {ln.split()[0] for ln in val}

    # Read through the real ImageNet-LT code path (list files + image root), as build_data does.
    cfg = tiny_cfg(
        "data.dataset=imagenet-lt-standin",
        "data.image_size=32",
        f"data.path={folder}",
        "data.train_fraction=1",
        "data.eval_fraction=1",
    )
    d = build_data(cfg.data)
    assert d.num_classes == 1000 and d.train.file_backed and len(d.train) == sum(counts)
    assert d.class_counts.tolist() == counts and len(d.val) == 20_000 and len(d.test) == 2_000

    # Learnable: nearest class-mean on raw pixels beats chance by far on 20 classes.
    from PIL import Image

    def load(split, cls, k):
        idx = np.flatnonzero(split.labels == cls)[:k]
        return np.stack([np.asarray(Image.open(split.files[i]), dtype=np.float32) for i in idx])

    classes = list(range(0, 1000, 50))
    means = np.stack([load(d.train, c, 5).mean(0) for c in classes])
    correct = total = 0
    for j, c in enumerate(classes):
        x = load(d.val, c, 20)
        pred = np.argmin(((x[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4)), axis=1)
        correct += int((pred == j).sum())
        total += len(x)
    assert correct / total > 0.5, f"nearest-mean accuracy {correct / total:.2f} on 20 classes (chance 0.05)"

    # prepare copies the original JPEG bytes (no re-encoding) of file-backed data.
    small = tiny_cfg(
        "data.dataset=imagenet-lt-standin",
        "data.image_size=32",
        f"data.path={folder}",
        "data.train_fraction=0.01",
        "data.eval_fraction=0.05",
    )
    m = prepare.prepare(small, str(tmp_path / "shards"))
    assert m.image_format == "jpeg" and m.num_classes == 1000 and m.image_size == 32
    _, _, ids, t = read_split(m.url, "test")
    sub = build_data(small.data)
    by_id = dict(zip(sub.test.ids.tolist(), sub.test.files))
    for rid, blob in list(zip(ids.tolist(), t.column("image").to_pylist()))[:50]:
        assert Path(by_id[rid]).read_bytes() == blob
