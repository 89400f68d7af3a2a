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
- The per-worker function is thin: :func:`rayjobs.data.plane.worker_inputs` (the data plane ``rayjobs.search
  --data`` trials use too) + :class:`RayReporter` -> ``twohead.loop.fit``.
- ``--stream auto`` (default) streams large-image datasets (ImageNet-LT) with Ray Data every epoch, and loads
  small-image ones (CIFAR, Tiny-ImageNet, the 32 px stand-in: at most a few hundred MB decoded) once per node
  into the object store, from where every worker maps them and keeps them in device memory: their epochs are
  shorter than a Ray Data pass's start-up, and the loop's device-resident path is then exactly a local run's.
  Either way the cluster ids come from the labels file of the config, computed once on the cluster.
- ``--gpu-decode``: streamed JPEGs are decoded, cropped and flipped on the training GPUs (nvJPEG) instead of by
  Ray Data's CPU workers (:mod:`rayjobs.data.stream`).
- Rank 0's result folder (``config.yaml``, ``history.jsonl``, ``metrics.json``, plots) is uploaded to
  ``<storage>/<name>/results/`` after every epoch, ``metrics.json`` last.
- ``--mlflow [URI]`` / ``--tensorboard`` (the ``twohead[tracking]`` extra): rank 0 logs the resolved config,
  every epoch, the final test metrics of every reading and variant and the plots to MLflow (experiment
  ``--mlflow-experiment``, one MLflow run per ``--name``, continued on resume), and TensorBoard event files into
  ``results/tensorboard/`` (:mod:`twohead.tracking`). The URI is resolved on the driver; a file or SQLite store
  must be on a path every node shares, so clusters use a tracking server.
- Every checkpoint folder holds ``state.pt`` and its model card (``model_card.json`` / ``.md``).
- ``--address`` (or ``RAY_ADDRESS``) is checked to answer within seconds before anything is read or written
  (:mod:`rayjobs.cluster.connect`).

Everything that can be checked before workers start is: the storage is reachable, the dataset matches its
manifest (sha256 with ``--verify full``), labels lie in [0, C), the cluster labels cover every train id, and
the cluster can ever hold ``--num-workers`` workers.

Fault injection (tests, drills): ``TWOHEAD_FAIL_AT_EPOCH=k`` kills rank 0 once, at the end of epoch k before
its report, and records that in ``<storage>/<name>/_fault-injected-epoch<k>`` so the retry passes;
``TWOHEAD_FAIL_MODE=raise`` raises instead of SIGKILL; ``TWOHEAD_FAIL_MODE=pause`` kills nothing: it writes that
file after epoch k's results upload and holds Ray Train's checkpoint write 5 s, for an outage drill to meet it.

(Over 400 lines on purpose: the checks before submitting, the per-worker function and the command line are one
entry point whose options map one to one onto :func:`run`'s arguments.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from rayjobs.cluster import signals
from rayjobs.cluster.connect import RayAddressError
from rayjobs.data import storage
from rayjobs.data.manifest import MANIFEST
from rayjobs.data.plane import IN_MEMORY_MAX_BYTES, check_train_labels  # noqa: F401 (re-exported)
from rayjobs.data.storage import DatasetError
from rayjobs.data.stream import PREFETCH_BATCHES, skip_summary
from rayjobs.train.reporting import STATE_FILE, TrainReporter  # noqa: F401 (STATE_FILE re-exported for tests)
from twohead import atomic
from twohead.cli import tracking_args, tracking_settings

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

    The ceiling is :func:`rayjobs.cluster.config.cluster_ceiling`: the autoscaler's maximum when the cluster has one (``cluster.yaml``),
    else the nodes up now. With ``accelerator_type`` the workers must fit on node types that carry it. Ray
    Data's decoding needs ``data_cpus`` besides the workers' CPUs, or the stream would wait forever.
    """
    from rayjobs.cluster.config import ACCELERATOR_PREFIX, cluster_ceiling

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


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------
class RayReporter(TrainReporter):
    """The Train reporter of :mod:`rayjobs.train.reporting` for rank ``rank``, with the opt-in failure injection of the
    fault-tolerance drill (``TWOHEAD_FAIL_AT_EPOCH``) and rank 0's per-epoch upload of its results folder."""

    def __init__(self, out_dir: Path, rank: int, fault: dict[str, Any] | None = None, upload_url: str | None = None):
        super().__init__(out_dir if upload_url else None, upload_url=upload_url, fault=fault)
        self.rank = rank


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """What each Ray Train worker runs: its inputs from the data plane, the one training loop, rank 0's results.

    Also the worker of a multi-GPU ``rayjobs.search --data`` trial (same config keys)."""
    import ray
    import ray.train
    import ray.train.torch

    from rayjobs.data.plane import worker_inputs
    from twohead.config import TrainConfig
    from twohead.loop import fit
    from twohead.tracking import open_tracking

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig.from_dict(config["cfg"])
    plan = config["plan"]
    out_dir = Path(tempfile.mkdtemp(prefix=f"twohead-{cfg.run_name()}-"))
    data, source, timing = worker_inputs(
        plan,
        config["service"],
        cfg,
        labels_url=config["labels_url"],
        world=world,
        shard=None if plan.in_memory else ray.train.get_dataset_shard("train"),
        prefetch_batches=config["prefetch_batches"],
    )
    reporter = RayReporter(out_dir, rank, config.get("fault"), upload_url=config["results_url"])
    reporter.extra.update(config.get("extra") or {})
    reporter.extra["data_start_s"] = timing["data_start_s"]
    with open_tracking(config.get("tracking") if rank == 0 else None) as tracking:
        metrics = fit(cfg, out_dir=out_dir, data=data, train_source=source, reporter=reporter, tracking=tracking)
    nodes = _gather(ray.get_runtime_context().get_node_id())
    if rank == 0:
        if plan.skip_invalid:  # every dropped row is recorded, streamed (the counter) or loaded (this worker)
            rows = list(timing["dropped"])
            if config.get("counter") is not None:
                rows += [(r["shard"], r["id"], r["reason"]) for r in ray.get(config["counter"].dropped.remote())]
            summary = skip_summary(rows)
            atomic.write_json(out_dir / "data_report.json", summary)
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
    prefetch_batches: int = PREFETCH_BATCHES,
    fail_at_epoch: int | None = None,
    fail_mode: str = "kill",
    address: str | None = None,
    tracking: Any = None,
) -> dict[str, Any]:
    """Check everything, then run the TorchTrainer; returns rank 0's final metrics plus run facts.

    ``stream``: ``on`` streams the train split with Ray Data every epoch; ``off`` loads it into memory once per
    node (the loop then keeps it on the device and shards it by rank, as in a local run); ``auto`` loads
    small-image splits under ``IN_MEMORY_MAX_BYTES`` decoded (CIFAR, Tiny-ImageNet, the 32 px stand-in), where a
    Ray Data pass per epoch would cost more than the epoch itself, and streams the rest (ImageNet). ``labels``
    replaces the config's labels file (both modes).

    ``address`` (default ``RAY_ADDRESS``, else a local Ray) is checked before anything else; an already connected
    driver is used as is. ``tracking``: a :class:`twohead.tracking.TrackingSettings` rank 0 logs to.
    """
    import dataclasses

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayjobs.cluster.connect import connect, resolve
    from rayjobs.data.labels import check_labels_file
    from rayjobs.data.plane import apply_manifest, plan_dataset, request_labels, start_service
    from rayjobs.data.stream import SkipCounter, train_dataset
    from twohead.division import DivisionPlan

    if "/" in name or not name or name in (".", ".."):
        raise ValueError(f"--name {name!r} must be a plain folder name")
    if not elastic_resize_interval_s >= 0:
        raise ValueError(f"--elastic-resize-interval {elastic_resize_interval_s!r} must be >= 0 seconds")
    target = None if ray.is_initialized() else resolve(address)
    storage.check_reachable(storage_url, "--storage")
    plan = plan_dataset(data_url, verify=verify, stream=stream, skip_invalid=True)
    manifest = plan.manifest_obj
    cfg = apply_manifest(cfg, manifest)
    cfg.run.name = name
    skip = cfg.data.skip_corrupt if skip_invalid is None else skip_invalid
    if not skip:
        check_train_labels(manifest)
    plan = dataclasses.replace(plan, skip_invalid=bool(skip), gpu_decode=bool(gpu_decode))
    in_memory = plan.in_memory
    if labels and cfg.spec.cdh:
        check_labels_file(manifest, labels, DivisionPlan.from_counts(manifest.class_counts, cfg.method.u, cfg.method.rounding))

    if gpu_decode and not use_gpu:
        raise ValueError("--gpu-decode decodes on the training GPUs: add --use-gpu")
    if gpu_decode and in_memory:
        raise ValueError(
            f"--gpu-decode is for streamed images (ImageNet-LT); "
            f"{manifest.url} ({manifest.image_size} px) is loaded into memory once"
        )
    if target is not None:
        connect(target)
    check_capacity(num_workers, use_gpu, cpus_per_worker, data_cpus=0.0 if in_memory else 1.0, accelerator_type=accelerator_type)
    service = start_service(plan)
    labels_url = labels if labels and cfg.spec.cdh else request_labels(service, cfg)  # computed once, on the cluster
    lookup = None
    if labels_url is not None and not in_memory:
        from rayjobs.data.labels import load_lookup

        lookup = load_lookup(labels_url)[0]

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

    fs, storage_path = storage.ray_storage(storage_url)
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
            "plan": plan,
            "service": service,
            "labels_url": labels_url,
            "results_url": storage.join(run_url, "results"),
            "counter": counter,
            "prefetch_batches": prefetch_batches,
            "fault": fault,
            "tracking": tracking,
            # For the model card of every checkpoint: which prepared dataset, byte for byte.
            "extra": {"data_uri": plan.url, "manifest_sha256": storage.sha256(storage.join(plan.url, MANIFEST))[0]},
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
    p.add_argument(
        "--prefetch-batches",
        type=int,
        default=PREFETCH_BATCHES,
        help="streamed batches each worker fetches ahead (each one more delays an epoch's first batch by one batch)",
    )
    p.add_argument(
        "--gpu-decode",
        action="store_true",
        help="streamed JPEGs (ImageNet-LT) are decoded, cropped and flipped on the training GPU "
        "(torchvision.io.decode_jpeg, nvJPEG) instead of by Ray Data's CPU workers; needs --use-gpu",
    )
    p.add_argument("--address", help="Ray cluster to join (HOST:PORT, auto); default RAY_ADDRESS, else a local Ray")
    tracking_args(p, "into <storage>/<name>/results/tensorboard (tensorboard --logdir on it)")
    return p


def failure_cause(err: BaseException) -> str:
    """One line for why a Train run failed: the lowest rank's error in a WorkerGroupError, or the controller's.

    A worker's own exception reaches the driver as its traceback text (its last line is ``module.Error: message``);
    Ray's errors as a message whose first line says what happened; a worker process that died as a failed health
    check that holds Ray's reason."""
    failures = getattr(err, "worker_failures", None) or {}
    cause: BaseException = failures[min(failures)] if failures else getattr(err, "controller_failure", None) or err
    inner = getattr(cause, "health_check_failure", None)  # a worker process that died: Ray's reason is inside
    lines = [ln.strip() for ln in str(inner if inner is not None else cause).splitlines() if ln.strip()]
    if not lines:
        text = type(cause).__name__
    elif lines[0].startswith("Traceback"):
        text = lines[-1]
    elif inner is not None:
        text = f"a worker stopped answering ({type(cause).__name__}): {type(inner).__name__}: {lines[0]}"
    else:
        text = f"{type(cause).__name__}: {lines[0]}"
    rank = f"rank {min(failures)}: " if failures else ""
    return f"{rank}{text[:400]}{'...' if len(text) > 400 else ''}"


def main(argv: list[str] | None = None) -> int:
    from ray.train import TrainingFailedError

    from twohead.config import ConfigError, load_config
    from twohead.data import DataError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    got: list[int] = []  # SIGINT / SIGTERM that arrived during the run (rayjobs.cluster.signals)
    try:
        cfg = load_config(args.config, preset=args.preset, overrides=args.overrides)
        args.tracking = tracking_settings(args, run_key=storage.join(args.storage, args.name), run_name=args.name)
        with signals.seen() as got:
            out = _run_from_args(cfg, args)
    except (
        ConfigError,
        DataError,
        DatasetError,
        storage.StorageError,
        InsufficientResourcesError,
        RayAddressError,
        ValueError,
    ) as e:
        if got:
            return _interrupted(args, got)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailedError as e:
        if got:
            return _interrupted(args, got)
        # Not bad input: the run started and stopped (a worker or the object store went away for longer than
        # --max-failures restarts / TWOHEAD_S3_RETRIES cover). Its registered checkpoints are whole (Ray Train
        # registers one only once it is uploaded), so the same command resumes from the last of them.
        import ray

        ray.shutdown()  # Ray prints the workers' own tracebacks as they arrive: this line comes after them, last
        retries = "" if args.max_failures else "; --max-failures N lets Ray Train restart the workers by itself"
        print(
            f"error: run {args.name!r} stopped: {failure_cause(e)}; its checkpoints are kept in "
            f"{storage.join(args.storage, args.name)}: rerun the same command to resume from the last one{retries}",
            file=sys.stderr,
        )
        return 1
    except (KeyboardInterrupt, SystemExit) as e:
        # Ctrl-C reaches the local Ray's processes too: the driver then ends with what Ray raises (SystemExit(1)
        # from a lost raylet), or KeyboardInterrupt (SIGTERM, or SIGINT outside Ray Train's fit)
        if isinstance(e, SystemExit) and not got:
            raise
        return _interrupted(args, got or [signal.SIGINT])
    except Exception:
        if got:  # e.g. RayActorError from Ray Train's abort after the signal took the controller down
            return _interrupted(args, got)
        raise
    if got:  # Ray Train's own SIGINT handler aborted the run and fit returned
        return _interrupted(args, got)
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


def _interrupted(args: argparse.Namespace, got: list[int]) -> int:
    """One line for a run stopped by Ctrl-C / SIGTERM (Ray torn down first, so it comes last); 128 + signal."""
    import ray

    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - Ray may already be gone with the signal; the line below is what matters
        pass
    signum = got[0]
    print(
        f"error: {signal.Signals(signum).name}: run {args.name!r} stopped; its checkpoints are kept in "
        f"{storage.join(args.storage, args.name)}: rerun the same command to resume from the last one",
        file=sys.stderr,
    )
    return 128 + int(signum)


def _run_from_args(cfg: Any, args: argparse.Namespace) -> dict:
    return run(
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
        address=args.address,
        tracking=args.tracking,
    )


if __name__ == "__main__":
    sys.exit(main())
