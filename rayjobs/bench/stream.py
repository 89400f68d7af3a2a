"""The 224 px training stream side by side: a plain torch DataLoader vs Ray Data, on the same shards and cores.

    python -m rayjobs.bench_stream [--images 8000] [--cores N] [--epochs 3] [--short] [--json F] [--stats F]

Self-contained. It writes generated ImageNet-size JPEGs (500x375, ~115 KB: :func:`rayjobs.bench.decode.photos`) as
one prepared dataset (the shard plan of ``rayjobs.prepare``) to a local folder and to a local S3 server (moto, in
its own process so that its CPU time can be counted), pins itself and everything it starts to ``--cores`` cores,
then runs ``--epochs`` epochs of each pipeline, every one delivering uint8 ``[B, 224, 224, 3]`` torch batches
with class and cluster ids to this process:

- **DataLoader** (the plain reference): ``torch.utils.data.DataLoader`` with ``--cores`` worker processes over
  the shard files, each worker reading its shards with pyarrow and running the stream's per-batch function
  (:func:`rayjobs.data.stream.decode_batch`: decode + RandomResizedCrop(224) + flip);
- **Ray Data from file://** and **Ray Data from S3**: :func:`rayjobs.data.stream.train_dataset` consumed by
  :class:`rayjobs.data.stream.RayBatchSource`, exactly as a Ray Train worker consumes it, on a local Ray instance
  with ``--cores`` CPUs.

Per pipeline: img/s delivered to the consumer over whole epochs (start-up included) and after the first batch,
seconds to the first batch, CPU seconds per image (all processes on the machine: the pipeline, Ray's daemons,
the S3 server), the S3 server's share of the cores, and peak memory (RSS) of the consumer and of the busiest
worker process. ``--stats`` writes Ray Data's per-operator ``Dataset.stats()`` of the last epoch of each Ray run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from rayjobs.data import storage
from rayjobs.data.manifest import Manifest

__all__ = ["ShardLoader", "main", "measure_epochs"]

BATCH = 256  # the ImageNet-LT preset's per-worker batch


# --------------------------------------------------------------------------------------------
# The plain reference: a torch DataLoader over the shard files
# --------------------------------------------------------------------------------------------
class ShardLoader(torch.utils.data.IterableDataset):
    """An ``IterableDataset`` over a prepared dataset's train shards: worker ``w`` of ``n`` reads shards
    ``w, w+n, ...`` (in a new order each epoch, like the stream's file shuffle) in ``batch``-row slices and runs
    the stream's per-batch function on each. Yields ``(images, labels, clusters)`` torch batches."""

    def __init__(self, manifest: Manifest, lookup: Any = None, batch: int = BATCH, seed: int = 0):
        self.urls = manifest.shard_urls("train")
        self.manifest = manifest
        self.lookup = lookup
        self.batch = batch
        self.seed = seed
        self._epoch = 0  # counted in each worker: a persistent worker iterates once per epoch

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        import pyarrow.parquet as pq

        from rayjobs.data.stream import CPU_AUGMENT_MIN_SIZE, decode_batch

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        m = self.manifest
        order = np.random.default_rng((self.seed, self._epoch)).permutation(len(self.urls))
        self._epoch += 1
        for k in order[worker::workers].tolist():
            fs, path = storage.resolve(self.urls[k])
            with fs.open_input_file(path) as fh:
                for rb in pq.ParquetFile(fh).iter_batches(batch_size=self.batch, columns=["image", "label", "id"]):
                    out = decode_batch(
                        {c: rb.column(c).to_numpy(zero_copy_only=False) for c in ("image", "label", "id")},
                        num_classes=m.num_classes,
                        size=m.image_size,
                        augment=m.image_size >= CPU_AUGMENT_MIN_SIZE,
                        lookup=self.lookup,
                    )
                    yield tuple(torch.from_numpy(out[c]) for c in ("image", "label", "cluster"))

    def loader(self, workers: int) -> torch.utils.data.DataLoader:
        # batch_size=None: each worker yields whole batches; persistent workers, as a tuned hand-written loader has.
        return torch.utils.data.DataLoader(self, batch_size=None, num_workers=workers, persistent_workers=True, prefetch_factor=2)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
class Sampler:
    """Peak memory per process of each role, sampled every ``every`` seconds in a thread while a pipeline runs.

    PSS (proportional set size): pages shared between processes -- a forked DataLoader worker's copy-on-write
    pages, Ray's shared-memory object store -- count a share to each process, so no page is counted twice."""

    def __init__(self, roles: Callable[[], dict[str, list[Any]]], every: float = 0.2):
        self.roles, self.every = roles, every
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for role, procs in self.roles().items():
                for p in procs:
                    try:
                        mem = p.memory_full_info()
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    self.peak[role] = max(self.peak.get(role, 0.0), getattr(mem, "pss", mem.rss) / 2**20)
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)


def measure_epochs(epoch: Callable[[int], Iterator[tuple[Any, Any, Any]]], epochs: int, *, server: Any = None) -> dict[str, Any]:
    """Run ``epoch(e)`` ``epochs`` times, consuming every batch here; img/s per epoch (whole epoch, and after its
    first batch), seconds to the first batch, CPU seconds per image (whole machine; ``server``'s own apart)."""
    rows = []
    for e in range(epochs):
        cpu0, srv0 = _cpu_s(), _proc_cpu(server)
        t0 = time.perf_counter()
        n, first, t_first, checked = 0, None, None, None
        for x, y, k in epoch(e):
            if first is None:
                first, t_first, first_n = time.perf_counter() - t0, time.perf_counter(), len(y)
                # The labels travel with the images: shapes agree on every batch, dtypes are the loop's.
                checked = (tuple(x.shape[1:]), str(x.dtype), str(y.dtype), str(k.dtype))
            if not (len(x) == len(y) == len(k)):
                raise AssertionError(f"batch of {len(x)} images with {len(y)} labels and {len(k)} cluster ids")
            n += len(y)
        dt = time.perf_counter() - t0
        rows.append(
            {
                "images": n,
                "seconds": dt,
                "img_per_s": n / dt,
                # None when the epoch was one batch (the --short check)
                "img_per_s_after_first": (n - first_n) / (time.perf_counter() - t_first) if n > first_n else None,
                "first_batch_s": first,
                "cpu_s_per_image": (_cpu_s() - cpu0) / n,
                "server_cpu_s": _proc_cpu(server) - srv0,
                "batch": checked,
            }
        )
    return {
        "epochs": rows,
        "img_per_s": max(r["img_per_s"] for r in rows),
        "img_per_s_after_first": max((r["img_per_s_after_first"] or 0.0) for r in rows) or None,
        "first_batch_s": statistics.median(r["first_batch_s"] for r in rows),
        "cpu_s_per_image": statistics.median(r["cpu_s_per_image"] for r in rows),
        "server_cores": statistics.median(r["server_cpu_s"] / r["seconds"] for r in rows),
    }


def _proc_cpu(p: Any) -> float:
    if p is None:
        return 0.0
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _children() -> list[Any]:
    import psutil

    return psutil.Process().children(recursive=True)


def _ray_workers() -> list[Any]:
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if (p.info["name"] or "").startswith("ray::") or any("default_worker.py" in c for c in p.info["cmdline"] or []):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


# --------------------------------------------------------------------------------------------
# The S3 server in its own process
# --------------------------------------------------------------------------------------------
def start_s3_process() -> tuple[Any, str]:
    """moto's S3 server as a child process on a free loopback port; returns (psutil.Process, bucket)."""
    import boto3
    import psutil

    from rayjobs.cluster.local import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1"
    )
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the local S3 server did not start on {endpoint}") from None
            time.sleep(0.2)
    return psutil.Process(proc.pid), bucket


# --------------------------------------------------------------------------------------------
# The pipelines
# --------------------------------------------------------------------------------------------
def run_dataloader(m: Manifest, cores: int, epochs: int) -> dict[str, Any]:
    import psutil

    dl = ShardLoader(m).loader(cores)

    def epoch(e: int):
        yield from dl

    me = psutil.Process()
    with Sampler(lambda: {"consumer": [me], "worker": _children()}) as s:
        res = measure_epochs(epoch, epochs)
    res["peak_pss_mb"] = s.peak
    return res


def run_ray(m: Manifest, epochs: int, *, server: Any = None, stats: list[str] | None = None) -> dict[str, Any]:
    import psutil

    from rayjobs.data.stream import RayBatchSource, train_dataset

    # One dataset, executed once per epoch, as a Ray Train worker iterates its streaming_split shard.
    ds = train_dataset(m, lookup=None, seed=0)
    src = RayBatchSource(ds.iterator(), batch_size=BATCH, num_samples=m.splits["train"].num_rows, augmented=True)
    me = psutil.Process()
    with Sampler(lambda: {"consumer": [me], "worker": _ray_workers()}) as s:
        res = measure_epochs(src.batches, epochs, server=server)
    res["peak_pss_mb"] = s.peak
    if stats is not None:
        stats.append(ds.stats())
    return res


# --------------------------------------------------------------------------------------------
# Data and the command
# --------------------------------------------------------------------------------------------
def write_dataset(url: str, blobs: list[bytes], num_classes: int = 100) -> Manifest:
    """``blobs`` as a one-split 224 px prepared dataset at ``url``, sharded like ``rayjobs.prepare`` shards;
    image ``i`` has class ``i % num_classes``."""
    from rayjobs.bench.ray_layer import jpeg_dataset

    return jpeg_dataset(url, len(blobs), num_classes=num_classes, blobs=blobs, rows_per_shard=None)


def write_datasets(urls: list[str], images: int) -> tuple[list[Manifest], float]:
    """The same ``images`` generated JPEGs written to every URL of ``urls``; (manifests, mean KB per JPEG). Run in
    a child process, so that the consumer's memory figures start clean."""
    from rayjobs.bench.decode import photos

    blobs = photos(images, 500, 375)
    return [write_dataset(u, blobs) for u in urls], float(np.mean([len(b) for b in blobs])) / 1000


def table(res: dict[str, Any]) -> str:
    from tabulate import tabulate

    ref = res["dataloader"]["img_per_s"]
    rows = []
    for key, what in (
        ("dataloader", f"torch DataLoader, {res['cores']} workers, file://"),
        ("ray_file", f"Ray Data, {res['cores']} CPUs, file://"),
        ("ray_s3", f"Ray Data, {res['cores']} CPUs, local S3 server"),
    ):
        r = res[key]
        rss = r["peak_pss_mb"]
        rows.append(
            [
                what,
                f"{r['img_per_s']:.0f}",
                f"{100 * r['img_per_s'] / ref:.0f}%",
                f"{r['img_per_s_after_first']:.0f}" if r["img_per_s_after_first"] else "",
                f"{r['first_batch_s']:.2f}",
                f"{1000 * r['cpu_s_per_image']:.2f}",
                f"{r['server_cores']:.2f}" if key == "ray_s3" else "",
                f"{rss.get('consumer', 0):.0f} / {rss.get('worker', 0):.0f}",
            ]
        )
    head = [
        "pipeline (same shards, same cores)",
        "img/s",
        "vs DataLoader",
        "img/s after 1st batch",
        "1st batch (s)",
        "CPU ms per image",
        "S3 server cores",
        "peak PSS MB consumer / worker",
    ]
    return tabulate(rows, headers=head, tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rayjobs.bench_stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8000, help="generated 500x375 JPEGs (~115 KB each)")
    p.add_argument("--cores", type=int, default=None, help="cores for every pipeline (default: all of this machine's)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline (img/s: the best; 1st batch: the median)")
    p.add_argument("--short", action="store_true", help="a quick check that the table is produced (256 images, 1 epoch)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--stats", help="write Ray Data's per-operator stats of each Ray run to this text file")
    args = p.parse_args(argv)
    avail = sorted(os.sched_getaffinity(0))
    cores = args.cores or len(avail)
    for bad, msg in (
        (not 1 <= cores <= len(avail), f"--cores {cores} must be 1..{len(avail)} (the cores this process may use)"),
        (args.images < 1, f"--images {args.images} must be >= 1"),
        (args.epochs < 1, f"--epochs {args.epochs} must be >= 1"),
    ):
        if bad:
            print(f"error: {msg}", file=sys.stderr)
            return 2
    if args.short:
        args.images, args.epochs = 256, 1
    # Everything started from here (DataLoader workers, Ray's daemons and workers, the S3 server) inherits this.
    os.sched_setaffinity(0, avail[:cores])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import logging
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import ray

    torch.set_num_threads(1)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per execution otherwise
    res: dict[str, Any] = {"cores": cores, "images": args.images, "epochs": args.epochs, "torch": torch.__version__}
    server, bucket = start_s3_process()
    stats: list[str] = []
    with tempfile.TemporaryDirectory(prefix="twohead-bench-stream-") as tmp:
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
                urls = [Path(tmp).as_uri() + "/jpeg", f"s3://{bucket}/jpeg"]
                (local, s3), res["jpeg_kb"] = ex.submit(write_datasets, urls, args.images).result()
            res["shards"] = len(local.shard_urls("train"))
            res["dataloader"] = run_dataloader(local, cores, args.epochs)
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            res["ray_file"] = run_ray(local, args.epochs, stats=stats)
            res["ray_s3"] = run_ray(s3, args.epochs, server=server, stats=stats)
        finally:
            ray.shutdown()
            server.kill()
    print(
        f"\n224 px training stream, {args.images} generated 500x375 JPEGs ({res['jpeg_kb']:.0f} KB) in {res['shards']} "
        f"shards, {cores} cores, torch {res['torch']}; {args.epochs} epochs each (img/s: best epoch, start-up "
        f"included; 1st batch: median)\n"
    )
    print(table(res))
    for key in ("ray_file", "ray_s3"):
        res[f"{key}_ratio"] = res[key]["img_per_s"] / res["dataloader"]["img_per_s"]
    print(
        f"\nRay Data vs DataLoader: file:// {100 * res['ray_file_ratio']:.0f}% (target 70%), S3 "
        f"{100 * res['ray_s3_ratio']:.0f}% (target 60%); first batch {res['ray_file']['first_batch_s']:.2f} s / "
        f"{res['ray_s3']['first_batch_s']:.2f} s (target 3 s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.stats:
        Path(args.stats).write_text("\n\n".join(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
