"""Benchmark of the Ray layer: decode cost per core, streaming throughput from S3, Ray Train's step-time overhead.

    python -m rayjobs.bench_ray [--train-fraction 0.1] [--epochs 3] [--jpeg-images 4000] [--gpu-img-per-s 2030]

Self-contained: starts a moto S3 server (a real S3 HTTP endpoint on 127.0.0.1; needs the ``test`` extra) and
a local Ray instance on this machine's cores, then measures

0. decode + RandomResizedCrop(224) + flip of ImageNet-size JPEGs on one core, per decode path, and the decode
   cores one GPU needs at ResNeXt-50 speed (:mod:`rayjobs.bench_decode`; the GPU's speed is an outside reference);
1. Ray Data streaming of prepared shards from S3 through :func:`rayjobs.data.stream.train_dataset`, in images/s
   and images/s per CPU core (the cores Ray Data ran on):
   - CIFAR-size (32 px lossless WebP, all 49,800 CIFAR-10 train images): decode + cluster-id lookup (crop/flip
     run on the device);
   - 224 px JPEG (generated 500x375 JPEGs of ImageNet's ~115 KB): decode + RandomResizedCrop(224) + flip on the
     CPU workers (start-up included: on a small dataset it weighs, on ImageNet's 116k-image epochs it does not);
   plus the same per-batch function in this process alone (no Ray), to show what Ray Data adds.
2. One training step of the same config and device: :func:`twohead.loop.fit` on in-memory data (the bare loop)
   vs a 1-worker ``TorchTrainer`` (:func:`rayjobs.train.job.run`) on the same images from S3, with the default
   ``--stream auto`` (small images: loaded once, device-resident) and with ``--stream on`` (Ray Data every
   epoch). Both use the same torch thread count (the Ray worker's 1 CPU on a CPU machine); the median epoch
   after the first is compared (the first pays for start-up). Target: Ray overhead <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from rayjobs.bench import decode as bench_decode
from rayjobs.cluster.local import free_port
from rayjobs.data import prepare, storage
from rayjobs.data.manifest import MANIFEST, Manifest, ShardInfo, SplitInfo, read_manifest


def start_s3() -> tuple[Any, str]:
    """A moto S3 server reached through the normal S3 code path (``AWS_ENDPOINT_URL``)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1"
    )
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return server, bucket


def jpeg_dataset(
    url: str,
    n: int,
    width: int = 500,
    height: int = 375,
    num_classes: int = 100,
    *,
    blobs: list[bytes] | None = None,
    rows_per_shard: int | None = -1,
) -> Manifest:
    """``n`` generated ``width`` x ``height`` JPEGs (:func:`rayjobs.bench.decode.photos`: at 500x375 about
    ImageNet's bytes per image; or the given ``blobs``) as a one-split, 224 px prepared dataset at ``url``; image
    ``i`` has class ``i % num_classes``. ``rows_per_shard``: -1 four shards, None ``rayjobs.prepare``'s plan."""
    import hashlib

    from rayjobs.bench.decode import photos

    labels = np.arange(n) % num_classes
    blobs = photos(n, width, height) if blobs is None else blobs
    rows = max(256, n // 4) if rows_per_shard == -1 else rows_per_shard
    shards = []
    for k, (a, b) in enumerate(prepare.plan_shards(n, np.mean([len(x) for x in blobs]), rows)):
        payload = prepare.write_shard_table(blobs[a:b], labels[a:b], np.arange(a, b), np.arange(a, b))
        rel = f"train/part-{k:05d}.parquet"
        storage.write_bytes(storage.join(url, rel), payload)
        shards.append(ShardInfo(rel, b - a, len(payload), hashlib.sha256(payload).hexdigest()))
    counts = np.bincount(labels, minlength=num_classes).tolist()
    m = Manifest(
        dataset="jpeg-bench",
        num_classes=num_classes,
        class_names=[str(c) for c in range(num_classes)],
        class_counts=counts,
        image_size=224,
        image_format="jpeg",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        data_config={},
        splits={"train": SplitInfo(n, counts, shards)},
        url=url,
    )
    storage.write_json(storage.join(url, MANIFEST), m.to_json())
    return m


def stream_rate(m: Manifest, lookup, epochs: int = 3) -> tuple[float, float]:
    """(images/s, seconds to the first batch) of the Ray Data pipeline (read from S3 + decode [+ augment]):
    best of ``epochs`` passes, each one epoch = one new execution, start-up included."""
    from rayjobs.data.stream import train_dataset

    ds = train_dataset(m, lookup=lookup)
    best, first = 0.0, []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for b in ds.iter_batches(batch_size=256, batch_format="numpy", prefetch_batches=4):
            if n == 0:
                first.append(time.perf_counter() - t0)
            n += len(b["label"])
        best = max(best, n / (time.perf_counter() - t0))
    return best, statistics.median(first)


def inprocess_rate(m: Manifest, lookup, size: int, augment: bool, limit: int = 4096) -> float:
    """Images/s of the same per-batch function in this process (one core, no Ray, shards read up front;
    best of 3 after a warm-up pass)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayjobs.data.stream import decode_batch

    t = pq.read_table(pa.BufferReader(storage.read_bytes(m.shard_urls("train")[0])), columns=["image", "label", "id"]).slice(
        0, limit
    )
    batch = {
        "image": np.asarray(t.column("image").to_pylist(), dtype=object),
        "label": t.column("label").to_numpy(),
        "id": t.column("id").to_numpy(),
    }
    best = 0.0
    for _ in range(4):
        t0 = time.perf_counter()
        for i in range(0, len(t), 256):
            decode_batch(
                {k: v[i : i + 256] for k, v in batch.items()},
                num_classes=m.num_classes,
                size=size,
                augment=augment,
                lookup=lookup,
            )
        best = max(best, len(t) / (time.perf_counter() - t0))
    return best


def bare_step(cfg, data_cfg_overrides: list[str], threads: int) -> dict[str, float]:
    """The bare loop (in-memory data, no Ray) on this process with ``threads`` torch threads."""
    import torch

    from twohead.config import apply_overrides
    from twohead.data import build_data
    from twohead.loop import fit

    torch.set_num_threads(threads)
    cfg = apply_overrides(cfg, data_cfg_overrides)
    data = build_data(cfg.data)
    with tempfile.TemporaryDirectory() as d:
        fit(cfg, out_dir=d, data=data)
        hist = [json.loads(ln) for ln in (Path(d) / "history.jsonl").read_text().splitlines()]
    return _step_stats(hist, cfg.optim.batch_size)


def _step_stats(hist: list[dict], batch: int) -> dict[str, float]:
    rates = [h["train_img_per_s"] for h in hist[1:]] or [hist[-1]["train_img_per_s"]]
    rate = statistics.median(rates)
    return {"img_per_s": rate, "step_ms": 1000.0 * batch / rate, "epochs_timed": len(rates)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rayjobs.bench_ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-fraction", type=float, default=0.1, help="fraction of CIFAR-10-LT for the step-time runs")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the step-time runs (the first is not timed)")
    p.add_argument("--jpeg-images", type=int, default=4000, help="generated 500x375 JPEGs for the 224 px stream")
    p.add_argument(
        "--gpu-img-per-s",
        type=float,
        default=bench_decode.RESNEXT50_IMG_PER_S,
        help="training img/s of one GPU for the decode-cores estimate (default: ResNeXt-50 on an A100, outside reference)",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray
    import torch

    from rayjobs.data import labels as labels_mod
    from rayjobs.train import job as train
    from twohead.config import load_config

    cores = len(os.sched_getaffinity(0))
    res: dict[str, Any] = {"cores": cores, "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    # ---- 0. decode cost on one core (no Ray, no S3) -------------------------------------------------------
    res["decode"] = bench_decode.measure()
    torch.set_num_threads(cores)
    server, bucket = start_s3()
    try:
        ray.init(num_cpus=cores, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False

        # ---- 1. streaming ------------------------------------------------------------------------------
        # CIFAR-size: all of CIFAR-10 train (imbalance 1, 49,800 images) so an epoch is long enough to measure.
        full = load_config(preset="cifar10-lt", overrides=["data.imbalance=1"])
        t0 = time.perf_counter()
        cifar = prepare.prepare(full, f"s3://{bucket}/datasets")
        res["prepare_cifar10_s"] = time.perf_counter() - t0
        lookup, _ = labels_mod.load_lookup(labels_mod.ensure_labels(cifar, full))
        n_cifar = cifar.splits["train"].num_rows
        r32, first32 = stream_rate(cifar, lookup)
        res["stream_32"] = {
            "images": n_cifar,
            "img_per_s": r32,
            "img_per_s_per_core": r32 / cores,
            "first_batch_s": first32,
            "in_process_1core": inprocess_rate(cifar, lookup, 32, False),
        }
        jpeg = jpeg_dataset(f"s3://{bucket}/datasets/jpeg-bench", args.jpeg_images)
        r224, first224 = stream_rate(jpeg, None)
        res["stream_224"] = {
            "images": args.jpeg_images,
            "img_per_s": r224,
            "img_per_s_per_core": r224 / cores,
            "first_batch_s": first224,
            "in_process_1core": inprocess_rate(jpeg, None, 224, True, limit=512),
        }

        # ---- 2. step time: bare loop vs Ray Train, same config, same device ----------------------------
        small = [f"data.train_fraction={args.train_fraction}", "data.eval_fraction=0.05"]
        cfg = load_config(
            preset="smoke",
            overrides=[
                *small,
                f"optim.epochs={args.epochs}",
                "optim.milestones=[]",
                "run.checkpoint_every=1000",
                "run.plots=false",
            ],
        )
        ds = prepare.prepare(cfg, f"s3://{bucket}/datasets").url
        res["train_images"] = read_manifest(ds).splits["train"].num_rows
        # A CPU Ray Train worker holds 1 CPU and torch uses that many threads; give the bare loop the same.
        threads = 1 if not torch.cuda.is_available() else torch.get_num_threads()
        res["threads"] = threads
        res["bare"] = bare_step(cfg, [], threads)
        for mode in ("auto", "on"):
            out = train.run(
                cfg,
                data_url=ds,
                storage_url=f"s3://{bucket}/runs",
                name=f"bench-{mode}",
                num_workers=1,
                use_gpu=torch.cuda.is_available(),
                stream=mode,
            )
            hist = [json.loads(ln) for ln in storage.read_bytes(f"{out['results_url']}/history.jsonl").decode().splitlines()]
            r = _step_stats(hist, cfg.optim.batch_size)
            r.update(
                device=out["metrics"].get("device"),
                in_memory=out["in_memory"],
                overhead_pct=100.0 * (r["step_ms"] / res["bare"]["step_ms"] - 1.0),
            )
            res[f"ray_{mode}"] = r
    finally:
        ray.shutdown()
        server.stop()

    s32, s224 = res["stream_32"], res["stream_224"]
    dev = res["ray_auto"].get("device") or "cpu"
    print(f"\nRay layer benchmark: {cores} CPU cores, torch {res['torch']}, device {dev}, S3 = moto on 127.0.0.1\n")
    print("Decode + crop on one core (one process, one torch thread, best of 5 passes):\n")
    print(bench_decode.table(res["decode"], args.gpu_img_per_s))
    reduced = res["decode"][0]["reduced decode (decode_random_resized_crop)"]
    need = bench_decode.cores_per_gpu(reduced, args.gpu_img_per_s)
    res["decode_cores_per_gpu"] = need
    print(
        f"\nOne GPU training at {args.gpu_img_per_s:,.0f} img/s needs {need:.1f} decode cores ({math.ceil(need)}) at "
        f"{reduced:.0f} img/s per core ({res['decode'][0]['size']} JPEGs); Ray Data's reading, batching and start-up "
        f"come on top (the 224 px stream below).\n"
    )
    print(
        "| Ray Data stream from S3 (one epoch = one execution, best of 3) | images | img/s | img/s per core | "
        "first batch after (s) | same UDF, one process, no Ray (img/s) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r, what in (
        (s32, "32 px lossless WebP: decode + cluster lookup"),
        (s224, "500x375 JPEG: decode + RandomResizedCrop(224) + flip"),
    ):
        print(
            f"| {what} | {r['images']} | {r['img_per_s']:.0f} | {r['img_per_s_per_core']:.0f} | "
            f"{r['first_batch_s']:.2f} | {r['in_process_1core']:.0f} |"
        )
    print()
    print(
        f"| training step: ResNet-32 two-head, batch {cfg.optim.batch_size}, {res['train_images']} images, "
        f"{threads} torch thread(s), {dev}; median epoch after the first | step ms | img/s | vs bare loop |"
    )
    print("|---|---:|---:|---:|")
    print(f"| bare loop (twohead.loop.fit, in-memory data) | {res['bare']['step_ms']:.1f} | {res['bare']['img_per_s']:.1f} | |")
    for mode, what in (
        ("auto", "--stream auto (loaded once from S3, device-resident)"),
        ("on", "--stream on (Ray Data from S3 every epoch)"),
    ):
        r = res[f"ray_{mode}"]
        print(f"| Ray Train, 1 worker, {what} | {r['step_ms']:.1f} | {r['img_per_s']:.1f} | {r['overhead_pct']:+.1f}% |")
    ok = res["ray_auto"]["overhead_pct"] <= 5
    print(
        f"\nRay Train overhead per step (default --stream auto): {res['ray_auto']['overhead_pct']:+.1f}% "
        f"({'within' if ok else 'ABOVE'} the 5% target). Prepare of CIFAR-10 (49,800 images) to S3: {res['prepare_cifar10_s']:.1f}s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
