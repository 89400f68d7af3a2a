"""rayjobs.data.plane: the dataset checked once, labels computed once per key, small splits decoded once per node.

Real components: the moto S3 server (a versioned bucket, so every write of a labels file is counted by S3 itself),
the session's Ray head, datasets made by rayjobs.prepare from the shared CIFAR-10.
"""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pytest
import ray

from rayjobs.data import labels, prepare
from rayjobs.data.manifest import read_manifest
from rayjobs.data.plane import labels_key, plan_dataset, start_service, worker_inputs
from rayjobs.data.stream import load_split

TINY = ["data.train_fraction=0.05", "data.eval_fraction=0.05"]


def tiny_cfg(*extra: str):
    from twohead.config import load_config

    return load_config(preset="smoke", overrides=[*TINY, *extra])


@pytest.fixture(scope="module")
def versioned(s3_server) -> str:
    bucket = s3_server.make_bucket(f"plane-{uuid.uuid4().hex[:8]}")
    s3_server.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


@pytest.fixture(scope="module")
def s3_ds(versioned, data_root) -> str:
    return prepare.prepare(tiny_cfg(), f"s3://{versioned}/datasets").url


@pytest.fixture(scope="module")
def data(data_root):
    from twohead.data import build_data

    return build_data(tiny_cfg().data)


def _versions(s3_server, bucket: str, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in s3_server.client().list_object_versions(Bucket=bucket, Prefix=prefix).get("Versions", []):
        name = v["Key"].rsplit("/", 1)[1]
        if name:  # not the folder markers pyarrow creates
            out[name] = out.get(name, 0) + 1
    return out


def test_labels_are_computed_once_per_key_under_concurrent_requests(ray_session, s3_ds, versioned, s3_server):
    plan = plan_dataset(s3_ds, verify="size")
    svc = start_service(plan)
    keys = [("random", 3, "ceil", 0, "pca"), ("kmeans", 3, "ceil", 0, "pca")]
    urls = ray.get([svc.labels.remote(k) for k in keys * 4])  # 8 requests in flight at once
    want = [labels.labels_url(s3_ds, *k) for k in keys]
    assert urls == want * 4
    stats = ray.get(svc.stats.remote())
    assert stats["labels"] == {want[0]: {"computed": 1, "requests": 4}, want[1]: {"computed": 1, "requests": 4}}
    assert stats["thumbnails"] == 1  # the k-means embedding's images, decoded once for the dataset
    prefix = s3_ds.split(f"s3://{versioned}/", 1)[1] + "/labels/"
    assert _versions(s3_server, versioned, prefix) == {"random-u3-rceil-s0.parquet": 1, "kmeans-u3-rceil-s0.parquet": 1}

    # The file holds the clusters rayjobs.labels computes for the same key (== a local run's, test_prepare).
    m = read_manifest(s3_ds)
    ids, clusters, _ = labels.compute_clusters(m, "kmeans", 3, "ceil", 0)
    lookup, _ = labels.load_lookup(want[1])
    np.testing.assert_array_equal(lookup(ids), clusters)

    # The next search on the dataset reuses the files: checked, not recomputed, not rewritten.
    svc2 = start_service(plan)
    assert ray.get(svc2.labels.remote(keys[0])) == want[0]
    assert ray.get(svc2.stats.remote())["labels"] == {want[0]: {"computed": 0, "requests": 1}}
    assert _versions(s3_server, versioned, prefix)["random-u3-rceil-s0.parquet"] == 1


def test_small_splits_are_decoded_once_per_node_and_mapped_read_only(ray_session, s3_ds, data):
    plan = plan_dataset(s3_ds, verify="size")
    assert plan.in_memory
    svc = start_service(plan)
    node = ray.get_runtime_context().get_node_id()
    (first,) = ray.get(svc.node_splits.remote(node))
    (second,) = ray.get(svc.node_splits.remote(node))
    assert first == second  # one object for every worker of the node
    splits = ray.get(first)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(splits[name].images, getattr(data, name).images)
        np.testing.assert_array_equal(splits[name].ids, getattr(data, name).ids)
    assert not splits["train"].images.flags.writeable  # mapped from the object store, not a private copy
    assert ray.get(svc.stats.remote())["node_loads"] == [node]


def test_a_trial_trains_on_the_clusters_of_its_labels_file(ray_session, s3_ds, data):
    cfg = tiny_cfg("method.clustering=random", "method.u=4", "optim.device=cpu")
    plan = plan_dataset(s3_ds, verify="size")
    svc = start_service(plan)
    url = ray.get(svc.labels.remote(labels_key(cfg)))
    assert url == labels.labels_url(s3_ds, "random", 4, "ceil", cfg.cluster_seed)
    ltdata, source, timing = worker_inputs(plan, svc, cfg, labels_url=url)
    lookup, _ = labels.load_lookup(url)
    np.testing.assert_array_equal(source.clusters.numpy(), lookup(ltdata.train.ids))
    np.testing.assert_array_equal(source.labels.numpy(), data.train.labels)
    assert source.num_samples == len(data.train) and timing["data_start_s"] > 0


def test_large_image_eval_splits_are_copied_once_per_node(data_root, tmp_path):
    """The second worker on a node (or a restarted worker group) copies nothing: it works without the shards."""
    ds = prepare.prepare(tiny_cfg("data.image_size=72"), str(tmp_path / "datasets")).url
    m = read_manifest(ds)
    cache = tmp_path / "node-cache"
    first = load_split(m, "test", cache_dir=cache)
    assert first.file_backed and len(first) == m.splits["test"].num_rows
    shutil.rmtree(f"{ds}/test")  # the shards are gone: only the node cache can answer now
    again = load_split(m, "test", cache_dir=cache)
    assert again.files == first.files and again.labels.tolist() == first.labels.tolist()
    assert [open(f, "rb").read()[:4] for f in again.files[:3]] == [open(f, "rb").read()[:4] for f in first.files[:3]]
