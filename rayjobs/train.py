"""Train on a Ray cluster: Ray Train workers stream shards and run :func:`twohead.loop.fit` (a ``ray job`` entry point).

    python -m rayjobs.train --data s3://bucket/datasets/cifar10-lt-imb100 --storage s3://bucket/runs \\
        --name c10-twohead-s0 --preset cifar10-lt --num-workers 4 --use-gpu --max-failures 3

- ``TorchTrainer`` + ``ScalingConfig(num_workers, use_gpu, accelerator_type)``; ``--num-workers MIN-MAX`` is
  elastic training: Ray Train starts with as many workers as the cluster holds (at least MIN), asks the
  autoscaler for MAX, and every ``--elastic-resize-interval`` seconds restarts the group, from the latest
  checkpoint, at the size the cluster now holds. ``--accelerator-type A100`` keeps the workers on nodes of
  that GPU type (the ``accelerator_type:A100`` resource of cluster.yaml's node types).
- ``RunConfig(name, storage_path, failure_config=FailureConfig(max_failures))``: Ray Train keeps the
  checkpoints under ``<storage>/<name>/``; a failed worker group restarts from the latest one, and running
  the same command again (same ``--name``) resumes the run instead of starting over.
- The per-worker function is thin: config -> :class:`~rayjobs.stream.RayBatchSource` over
  ``ray.train.get_dataset_shard("train")`` + :class:`RayReporter` -> ``twohead.loop.fit``.
- ``--gpu-decode``: streamed JPEGs are decoded, cropped and flipped on the training GPUs (nvJPEG) instead of by
  Ray Data's CPU workers (:mod:`rayjobs.stream`).
- ``--stream auto`` (default) streams large-image datasets (ImageNet-LT) with Ray Data every epoch, and has
  each worker load small-image ones (CIFAR, Tiny-ImageNet, the 32 px stand-in: at most a few hundred MB
  decoded) from the same shards once, into device memory: their epochs are shorter than a Ray Data pass's
  start-up, and the loop's device-resident path is then exactly a local run's.
- Rank 0's result folder (``config.yaml``, ``history.jsonl``, ``metrics.json``, plots) is uploaded to
  ``<storage>/<name>/results/``, ``metrics.json`` last.

Everything that can be checked before workers start is: the storage is reachable, the dataset matches its
manifest (sha256 with ``--verify full``), labels lie in [0, C), the cluster labels cover every train id, and
the cluster can ever hold ``--num-workers`` workers.

Fault injection (tests, drills): ``TWOHEAD_FAIL_AT_EPOCH=k`` kills rank 0 once, at the end of epoch k before
its report, and records that in ``<storage>/<name>/_fault-injected-epoch<k>`` so the retry passes;
``TWOHEAD_FAIL_MODE=raise`` raises instead of SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rayjobs import storage
from rayjobs.reporting import STATE_FILE, TrainReporter  # noqa: F401 (STATE_FILE re-exported for tests)
from rayjobs.storage import DatasetError, Manifest

__all__ = [
    "InsufficientResourcesError",
    "RayReporter",
    "check_capacity",
    "check_train_labels",
    "main",
    "parse_workers",
    "run",
    "train_loop_per_worker",
]

log = logging.getLogger("rayjobs.train")

IN_MEMORY_MAX_BYTES = int(os.environ.get("TWOHEAD_IN_MEMORY_MAX_BYTES", str(4 << 30)))  # decoded train split per worker


class InsufficientResourcesError(ValueError):
    """``--num-workers`` asks for more than the cluster can ever provide."""


# --------------------------------------------------------------------------------------------
# Checks before anything starts
# --------------------------------------------------------------------------------------------
def parse_workers(text: str | int) -> int | tuple[int, int]:
    """``"4"`` -> 4, ``"2-8"`` -> (2, 8) (elastic)."""
    s = str(text).strip()
    try:
        if "-" in s:
            lo, hi = (int(p) for p in s.split("-", 1))
            if not 1 <= lo <= hi:
                raise ValueError
            return (lo, hi) if lo < hi else lo
        n = int(s)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise argparse.ArgumentTypeError(f"--num-workers {text!r} must be N >= 1 or MIN-MAX with 1 <= MIN <= MAX") from None


def check_capacity(
    num_workers: int | tuple[int, int],
    use_gpu: bool,
    cpus_per_worker: float = 1.0,
    data_cpus: float = 1.0,
    accelerator_type: str | None = None,
) -> dict[str, float]:
    """Raise :class:`InsufficientResourcesError` if the cluster can never hold the (minimum) worker group.

    The ceiling is :func:`rayjobs.cluster_config.cluster_ceiling`: the autoscaler's maximum when the cluster has one (``cluster.yaml``),
    else the nodes up now. With ``accelerator_type`` the workers must fit on node types that carry it. Ray
    Data's decoding needs ``data_cpus`` besides the workers' CPUs, or the stream would wait forever.
    """
    from rayjobs.cluster_config import ACCELERATOR_PREFIX, cluster_ceiling

    need_workers = num_workers[0] if isinstance(num_workers, tuple) else num_workers
    ceiling, source = cluster_ceiling(accelerator_type)
    if accelerator_type and not ceiling:
        have = sorted({k[len(ACCELERATOR_PREFIX) :] for k in cluster_ceiling()[0] if k.startswith(ACCELERATOR_PREFIX)})
        raise InsufficientResourcesError(
            f"--accelerator-type {accelerator_type}: no node of {source} carries accelerator_type:{accelerator_type} "
            f"(accelerator types there: {', '.join(have) or 'none'}); pick one of those or add such a node type"
        )
    need = {"GPU": float(need_workers)} if use_gpu else {}
    need["CPU"] = need_workers * cpus_per_worker + data_cpus
    on = f" on {accelerator_type} nodes" if accelerator_type else ""
    for res, amount in need.items():
        have = float(ceiling.get(res, 0))
        if amount > have:
            extra = (
                f" ({need_workers} workers x {cpus_per_worker:g} CPU + {data_cpus:g} CPU for Ray Data)" if res == "CPU" else ""
            )
            raise InsufficientResourcesError(
                f"--num-workers {need_workers} needs {amount:g} {res}{extra}, but {source} has {have:g} {res}{on}; "
                f"use at most --num-workers {int(max(0, (have - (data_cpus if res == 'CPU' else 0)) // (cpus_per_worker if res == 'CPU' else 1)))}"
                f" or a larger cluster"
            )
    return {k: float(v) for k, v in ceiling.items() if k in ("CPU", "GPU")}


def check_train_labels(manifest: Manifest) -> None:
    """Every train label lies in [0, C) (reads only the label/id columns; names shard and row id)."""
    import pyarrow.parquet as pq

    from rayjobs.stream import RowError

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


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------
class RayReporter(TrainReporter):
    """The Train reporter of :mod:`rayjobs.reporting`, plus the opt-in failure injection of the fault-tolerance
    drill (``TWOHEAD_FAIL_AT_EPOCH``)."""

    def __init__(self, out_dir: Path, rank: int, fault: dict[str, Any] | None = None):
        super().__init__()
        self.rank = rank
        self.fault = fault or {}

    def report(self, metrics: dict, make_state: Callable[[], dict] | None) -> None:
        self._maybe_fail(int(metrics["epoch"]))
        super().report(metrics, make_state)

    def _maybe_fail(self, epoch: int) -> None:
        at, marker = self.fault.get("at_epoch"), self.fault.get("marker")
        if self.rank != 0 or not at or epoch != int(at) or not marker or storage.exists(marker):
            return
        storage.write_bytes(marker, f"killed rank 0 at the end of epoch {epoch}\n".encode())
        if self.fault.get("mode") == "raise":
            raise RuntimeError(f"injected failure at epoch {epoch} (TWOHEAD_FAIL_AT_EPOCH)")
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-run, as on a preempted node


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """What each Ray Train worker runs: build the inputs, call the one training loop, upload rank 0's results."""
    import ray
    import ray.train
    import ray.train.torch

    from rayjobs.stream import (
        CPU_AUGMENT_MIN_SIZE,
        RayBatchSource,
        ltdata_from_manifest,
    )
    from twohead.config import TrainConfig
    from twohead.loop import fit

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig.from_dict(config["cfg"])
    manifest = Manifest.from_json(config["manifest"], url=config["data_url"])
    out_dir = Path(tempfile.mkdtemp(prefix=f"twohead-{cfg.run_name()}-"))
    data = ltdata_from_manifest(
        manifest,
        train=config["in_memory"],
        with_eval=rank == 0,
        cache_dir=out_dir.parent / f"{out_dir.name}-eval",
        skip_invalid=config["skip_invalid"],
    )
    source = None  # in memory: the loop's own device-resident batches, sharded by rank
    if not config["in_memory"]:
        source = RayBatchSource(
            ray.train.get_dataset_shard("train"),
            batch_size=cfg.optim.batch_size // world,
            num_samples=manifest.splits["train"].num_rows // world,
            augmented=manifest.image_size >= CPU_AUGMENT_MIN_SIZE,
            prefetch_batches=config["prefetch_batches"],
            seed=cfg.optim.seed,
            gpu_decode_size=manifest.image_size if config.get("gpu_decode") else None,
            device=ray.train.torch.get_device() if config.get("gpu_decode") else None,
        )
    reporter = RayReporter(out_dir, rank, config.get("fault"))
    metrics = fit(cfg, out_dir=out_dir, data=data, train_source=source, reporter=reporter)
    nodes = _gather(ray.get_runtime_context().get_node_id())
    if rank == 0:
        if config.get("counter") is not None:
            summary = ray.get(config["counter"].summary.remote())
            (out_dir / "data_report.json").write_text(json.dumps(summary, indent=1) + "\n")
            metrics["skipped_rows"] = summary["skipped"]
        storage.upload_dir(out_dir, config["results_url"])
    return {"metrics": metrics, "restored_epoch": reporter.restored_epoch, "rank": rank, "world": world, "nodes": nodes}


def _gather(obj: Any) -> list[Any]:
    """``obj`` of every rank (rank order); the workers' node ids show where the group ran."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------
def _apply_manifest(cfg: Any, manifest: Manifest) -> Any:
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


def run(
    cfg: Any,
    *,
    data_url: str,
    storage_url: str,
    name: str,
    num_workers: int | tuple[int, int] = 1,
    use_gpu: bool = False,
    accelerator_type: str | None = None,
    elastic_resize_interval_s: float = 60.0,
    gpu_decode: bool = False,
    max_failures: int = 0,
    cpus_per_worker: float = 1.0,
    placement_strategy: str = "PACK",
    labels: str | None = None,
    skip_invalid: bool | None = None,
    verify: str = "full",
    stream: str = "auto",
    prefetch_batches: int = 4,
    fail_at_epoch: int | None = None,
    fail_mode: str = "kill",
) -> dict[str, Any]:
    """Check everything, then run the TorchTrainer; returns rank 0's final metrics plus run facts.

    ``stream``: ``on`` streams the train split with Ray Data every epoch; ``off`` has every worker load it
    into memory once (the loop then keeps it on the device and shards it by rank, as in a local run);
    ``auto`` loads small-image splits under ``IN_MEMORY_MAX_BYTES`` decoded (CIFAR, Tiny-ImageNet, the 32 px
    stand-in), where a Ray Data pass per epoch would cost more than the epoch itself, and streams the
    rest (ImageNet). An explicit ``labels`` file needs the stream (it is applied per row).

    Connects to Ray (``ray.init()`` picks up the job's cluster) unless already connected.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayjobs.labels import check_labels_file, ensure_labels
    from rayjobs.stream import (
        CPU_AUGMENT_MIN_SIZE,
        SkipCounter,
        in_memory_bytes,
        train_dataset,
    )
    from twohead.division import DivisionPlan

    if "/" in name or not name or name in (".", ".."):
        raise ValueError(f"--name {name!r} must be a plain folder name")
    if not elastic_resize_interval_s >= 0:
        raise ValueError(f"--elastic-resize-interval {elastic_resize_interval_s!r} must be >= 0 seconds")
    if verify not in ("full", "size"):
        raise ValueError(f"verify={verify!r}; allowed: full (sha256), size")
    if stream not in ("auto", "on", "off"):
        raise ValueError(f"stream={stream!r}; allowed: auto, on, off")
    storage.check_reachable(storage_url)
    manifest = storage.verify_dataset(data_url, checksums=verify == "full")
    cfg = _apply_manifest(cfg, manifest)
    cfg.run.name = name
    skip = cfg.data.skip_corrupt if skip_invalid is None else skip_invalid
    if not skip:
        check_train_labels(manifest)

    small = manifest.image_size < CPU_AUGMENT_MIN_SIZE and in_memory_bytes(manifest) <= IN_MEMORY_MAX_BYTES
    if stream == "off" and manifest.image_size >= CPU_AUGMENT_MIN_SIZE:
        raise ValueError(f"stream=off needs images under {CPU_AUGMENT_MIN_SIZE} px; {manifest.url} has {manifest.image_size} px")
    if stream == "off" and labels:
        raise ValueError("an explicit labels file is applied to streamed rows: use stream=on (or auto)")
    in_memory = stream == "off" or (stream == "auto" and small and not labels)
    if gpu_decode and not use_gpu:
        raise ValueError("--gpu-decode decodes on the training GPUs: add --use-gpu")
    if gpu_decode and in_memory:
        raise ValueError(
            f"--gpu-decode is for streamed images of at least {CPU_AUGMENT_MIN_SIZE} px (ImageNet-LT); "
            f"{manifest.url} ({manifest.image_size} px) is loaded into memory once"
        )

    lookup = None
    labels_url = None
    if cfg.spec.cdh and not in_memory:  # in memory, the loop assigns the same clusters itself (division_for)
        plan = DivisionPlan.from_counts(manifest.class_counts, cfg.method.u, cfg.method.rounding)
        labels_url = labels or ensure_labels(manifest, cfg)
        lookup = check_labels_file(manifest, labels_url, plan)

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    check_capacity(num_workers, use_gpu, cpus_per_worker, data_cpus=0.0 if in_memory else 1.0, accelerator_type=accelerator_type)

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    counter = ray.remote(SkipCounter).options(num_cpus=0).remote() if skip and not in_memory else None
    datasets = None
    if not in_memory:
        datasets = {
            "train": train_dataset(
                manifest,
                lookup=lookup,
                skip_invalid=skip,
                counter=counter,
                seed=cfg.optim.seed,
                decode="gpu" if gpu_decode else "cpu",
            )
        }

    fs, storage_path = storage.resolve(storage_url)
    run_url = storage.join(storage_url, name)
    fault = None
    if fail_at_epoch:
        fault = {
            "at_epoch": int(fail_at_epoch),
            "mode": fail_mode,
            "marker": storage.join(run_url, f"_fault-injected-epoch{int(fail_at_epoch)}"),
        }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "manifest": manifest.to_json(),
            "data_url": manifest.url,
            "results_url": storage.join(run_url, "results"),
            "skip_invalid": skip,
            "in_memory": in_memory,
            "counter": counter,
            "prefetch_batches": prefetch_batches,
            "gpu_decode": gpu_decode,
            "fault": fault,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker},
            placement_strategy=placement_strategy,
            accelerator_type=accelerator_type,
            elastic_resize_monitor_interval_s=elastic_resize_interval_s,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    out = dict(result.return_value or {})
    out.update(
        {
            "in_memory": in_memory,
            "run_url": run_url,
            "results_url": storage.join(run_url, "results"),
            "labels_url": labels_url,
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
        }
    )
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rayjobs.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared dataset URL, e.g. s3://bucket/datasets/cifar10-lt-imb100")
    p.add_argument("--storage", required=True, help="run storage URL (checkpoints, results), e.g. s3://bucket/runs")
    p.add_argument("--name", required=True, help="run name: the same name resumes the run")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--preset", help="named preset (cifar10-lt, imagenet-lt, imagenet-lt-standin, smoke, ...)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)"
    )
    p.add_argument("--num-workers", type=parse_workers, default=1, help="N, or MIN-MAX for elastic training")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument(
        "--accelerator-type",
        help="run the workers only on nodes of this accelerator type (Ray's names: A10G, A100, H100, L4, ...); "
        "cluster.yaml's GPU node types carry it as the resource accelerator_type:<type>",
    )
    p.add_argument(
        "--elastic-resize-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --num-workers MIN-MAX: how often Ray Train looks for room to grow the worker group (default 60)",
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument(
        "--placement-strategy",
        default="PACK",
        choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
        help="how workers are placed on nodes (Ray placement group strategy)",
    )
    p.add_argument("--max-failures", type=int, default=0, help="worker-group restarts from the latest checkpoint")
    p.add_argument("--labels", help="cluster labels file URL (default: <data>/labels/..., computed if missing)")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        default=None,
        help="drop rows with a bad label or an undecodable image (counted in results/data_report.json)",
    )
    p.add_argument("--verify", choices=("full", "size"), default="full", help="check shards by sha256 (full) or size only")
    p.add_argument(
        "--stream",
        choices=("auto", "on", "off"),
        default="auto",
        help="stream the train split with Ray Data each epoch (on), load it into memory once (off), "
        "or decide by size (auto: small images in memory)",
    )
    p.add_argument("--prefetch-batches", type=int, default=4)
    p.add_argument(
        "--gpu-decode",
        action="store_true",
        help="streamed JPEGs (ImageNet-LT) are decoded, cropped and flipped on the training GPU "
        "(torchvision.io.decode_jpeg, nvJPEG) instead of by Ray Data's CPU workers; needs --use-gpu",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from twohead.config import ConfigError, load_config
    from twohead.data import DataError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, preset=args.preset, overrides=args.overrides)
        out = run(
            cfg,
            data_url=args.data,
            storage_url=args.storage,
            name=args.name,
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            accelerator_type=args.accelerator_type,
            elastic_resize_interval_s=args.elastic_resize_interval,
            gpu_decode=args.gpu_decode,
            max_failures=args.max_failures,
            cpus_per_worker=args.cpus_per_worker,
            placement_strategy=args.placement_strategy,
            labels=args.labels,
            skip_invalid=args.skip_invalid,
            verify=args.verify,
            stream=args.stream,
            prefetch_batches=args.prefetch_batches,
            fail_at_epoch=int(os.environ["TWOHEAD_FAIL_AT_EPOCH"]) if os.environ.get("TWOHEAD_FAIL_AT_EPOCH") else None,
            fail_mode=os.environ.get("TWOHEAD_FAIL_MODE", "kill"),
        )
    except (ConfigError, DataError, DatasetError, storage.StorageError, InsufficientResourcesError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = out.get("metrics") or {}
    keys = ("top1", "many", "medium", "few", "epochs", "train_img_per_s")
    print(
        json.dumps(
            {k: m.get(k) for k in keys}
            | {"results": out["results_url"], "restored_epoch": out.get("restored_epoch"), "in_memory": out.get("in_memory")}
            # The final worker group: its size (elastic runs grow and shrink) and the nodes it ran on.
            | {"workers": out.get("world"), "nodes": out.get("nodes")}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
