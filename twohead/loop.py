"""The one training loop. Single-process runs, Ray Train workers and Ray Tune trials all call :func:`fit`.

Per epoch: set the learning rate (:mod:`twohead.schedule`) and the class weights, run the step
(:class:`twohead.step.Step`, eager or one replayed CUDA graph) over the batches of a :mod:`twohead.sources`
source, evaluate validation (every reading from one pass, :mod:`twohead.evaluation`), append to ``history.jsonl``
and hand a checkpoint to the :class:`~twohead.runs.Reporter`. After the last epoch the test split is evaluated
once and ``metrics.json`` is written (:mod:`twohead.runs`).

Ray-free: distributed data parallelism is torch DDP when a process group is already initialised (Ray Train sets
one up); per-epoch reporting and checkpoint storage go through a :class:`~twohead.runs.Reporter`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .clusters import division_for, division_plan
from .config import TrainConfig, result_identity
from .division import DivisionPlan, soft_label_matrix
from .evaluation import GROUP_KEYS, evaluate
from .model_card import code_version, split_fingerprint
from .runs import (
    LocalReporter,
    Reporter,
    RunExistsError,
    append_history,
    claim_run_dir,
    finished_metrics,
    rewrite_history,
    write_metrics,
)
from .runtime import amp_dtype, env_info, rank_world, resolve_device, seed_epoch, use_graphs
from .schedule import first_decay_epoch, lr_at
from .sources import BatchSource, DeviceSource, LoaderSource
from .step import Step
from .tracking import Tracking

log = logging.getLogger("twohead")

__all__ = ["fit", "build_training", "lr_at", "RunExistsError", "LocalReporter", "Reporter", "BatchSource"]


def build_training(cfg: TrainConfig, counts, plan: DivisionPlan, device: torch.device, image_size: int | None = None):
    """Model (channels_last), criterion (L = L2 + lambda L1 or a baseline loss) and SGD, as fit() and the
    benchmark build them. Seeds the model init with optim.seed."""
    from .losses import build_criterion
    from .model import create_model

    torch.manual_seed(cfg.optim.seed)
    model = create_model(cfg, counts, image_size, plan).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    soft = soft_label_matrix(plan, cfg.method.alpha) if cfg.spec.cdh else None
    criterion = build_criterion(cfg, counts, soft).to(device)
    # Weight decay on every parameter, as LDAM-DRW's CIFAR recipe does.
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr_at(cfg, 0), momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    return model, criterion, optimizer


def _val_entry(report: dict) -> dict:
    """What a history line keeps of a validation report: the headline groups and ECE, every reading and post-hoc
    variant (groups and per-class recall, with the training counts per class)."""
    entry = {f"val_{k}": report[k] for k in GROUP_KEYS}
    entry["val_by_inference"] = report["by_inference"]
    entry["val_by_inference_groups"] = report["by_inference_groups"]
    entry["val_posthoc"] = report["posthoc"]
    entry["val_posthoc_groups"] = report["posthoc_groups"]
    entry["val_ece"] = report["ece"]
    # Lists: Ray reporters leave them out of results; searches read them from history.jsonl (rayjobs.search.objectives).
    entry["val_per_class"] = {"counts": report["class_counts"], "recall": report["per_class_by_variant"]}
    return entry


def fit(
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    data=None,
    train_source: BatchSource | None = None,
    reporter: Reporter | None = None,
    tracking: Tracking | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model as ``cfg`` describes; returns the final metrics (also ``metrics.json``).

    Everything that can be wrong with the input (config, data, division, model) is checked before ``out_dir`` is
    touched. An ``out_dir`` holding a different run's results is never overwritten. ``tracking``
    (:func:`twohead.tracking.open_tracking`) logs params, every epoch and the final metrics to MLflow / TensorBoard
    from the main rank.
    """
    cfg.validate()
    rank, world = rank_world()
    is_main = rank == 0
    device = resolve_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(out_dir) if out_dir is not None else Path(cfg.run.out) / cfg.run_name()

    # ---- data, division, model: all validation happens here, before anything is written ----------------
    if data is None:
        from .data import build_data

        data = build_data(cfg.data)
    counts = np.asarray(data.class_counts, dtype=np.int64)
    if train_source is None:
        plan, clusters = division_for(cfg, data, device)
    else:  # the source brings each row's cluster id (computed beside the shards) and, with it, their division
        plan, clusters = getattr(train_source, "division", None) or division_plan(cfg, counts), None
    image_size = cfg.data.image_size or int(data.image_size)
    model, criterion, optimizer = build_training(cfg, counts, plan, device, image_size)
    reporter = reporter if reporter is not None else LocalReporter(out)
    state = reporter.restore() if cfg.run.resume else None
    if state is not None and result_identity(state["config"]) != result_identity(cfg.to_dict()):
        raise RunExistsError(f"{out} holds a checkpoint of a different config; choose another run.name or out folder")
    if is_main and state is None and cfg.run.resume:
        done = finished_metrics(out, cfg)  # finished earlier, checkpoints since removed: never retrain over it
        if done is not None:
            log.info("%s: already finished (metrics.json, no checkpoint); returning its metrics", out)
            return done
    if is_main:
        claim_run_dir(out, cfg, resuming=state is not None)
        if state is not None:
            # Epochs trained after the checkpoint were lost with the process: history restarts from the
            # checkpoint's, so the epochs about to be retrained are not listed twice.
            rewrite_history(out, state.get("history", []))
        if state is not None and int(state["epoch"]) >= cfg.optim.epochs and (out / "metrics.json").is_file():
            log.info("%s: already finished (%d epochs); returning its metrics", out, state["epoch"])
            return json.loads((out / "metrics.json").read_text())
    tracking = tracking if is_main else None
    if tracking is not None:
        tracking.start(cfg, out)

    start_epoch, history, wall_before = 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state.get("history", []))
        wall_before = float(state.get("wall_s", 0.0))
        log.info("resuming %s from epoch %d", out, start_epoch)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    graphs = use_graphs(cfg, device, world)
    if train_source is None:
        if data.train.images is not None and cfg.data.device_resident != "off":
            train_source = DeviceSource(
                data.train.images, data.train.labels, clusters, device, cfg.optim.batch_size, cfg.optim.seed, drop_last=graphs
            )
        else:
            train_source = LoaderSource(data.train, clusters, cfg, image_size)
    step = Step(net, criterion, optimizer, cfg, data.mean, data.std, device, amp_dtype(cfg, device), graphs)

    fingerprint = split_fingerprint(getattr(data.train, "labels", None), getattr(data.train, "ids", None))
    # Plain JSON types: torch.__version__ is a str subclass that torch.load(weights_only=True) refuses to unpickle.
    environment = json.loads(json.dumps({**env_info(device), **code_version()}, default=str))

    def make_state(epoch: int) -> Callable[[], dict]:
        return lambda: {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
            "config": cfg.to_dict(),
            # What inference needs without the dataset (twohead.load): names, counts, normalisation, resolution.
            "class_counts": counts.tolist(),
            "class_names": [str(n) for n in data.class_names],
            "mean": [float(v) for v in data.mean],
            "std": [float(v) for v in data.std],
            "image_size": image_size,
            "clusters_per_class": list(plan.u_per_class),
            "wall_s": wall_before + time.perf_counter() - t_run,  # training time across restarts
            # For the model card (twohead.model_card): which split, and where and with what it was trained.
            "train_fingerprint": fingerprint,
            "environment": environment,
        }

    # Multi-process runs score val/test sharded across ranks (all of them hold the splits); a rank without them
    # (a caller that gave only rank 0 the eval data) keeps rank-0-only evaluation.
    val_sharded, sharded = _every_rank([data.val is not None, len(data.test) > 0], device) if world > 1 else (False, False)
    has_val = data.val is not None and (is_main or val_sharded)
    progress = cfg.run.progress and is_main and not os.environ.get("TQDM_DISABLE")
    curve_from = first_decay_epoch(cfg) if cfg.run.test_curve else cfg.optim.epochs
    t_run = time.perf_counter()
    model.train()
    metrics: dict[str, Any] = {}
    result: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.optim.epochs):
        seed_epoch(cfg.optim.seed, epoch)
        lr = lr_at(cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        criterion.set_epoch(epoch)
        total = torch.zeros((), device=device)
        seen = steps = 0
        t0 = time.perf_counter()
        bar = _bar(train_source.num_samples, epoch, cfg, progress)
        for x, y, k in train_source.batches(epoch):
            x, y, k = (t.to(device, non_blocking=True) for t in (x, y, k))
            total += step(x, y, k, augment=not train_source.augmented)
            seen += x.shape[0]
            steps += 1
            bar.update(x.shape[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        train_loss = float(total) / max(1, steps)
        bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.4g}")
        bar.close()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch + 1}; lower optim.lr?")
        done = epoch + 1
        metrics = {"epoch": done, "lr": lr, "train_loss": train_loss, "train_img_per_s": seen * world / dt, "epoch_s": dt}
        last = done == cfg.optim.epochs
        if has_val and (done % cfg.run.eval_every == 0 or last):
            val = evaluate(model, data.val, data, cfg, device, distributed=val_sharded)
            if is_main:
                metrics.update(_val_entry(val))
        final = None
        if last and (is_main or sharded):
            final = evaluate(model, data.test, data, cfg, device, distributed=sharded)
            metrics.update({f"test_{k}": final[k] for k in GROUP_KEYS})
        elif epoch >= curve_from and (is_main or sharded):
            # The baselines' protocol (best test epoch), tracked for the reproduction tables only; nothing reads it
            # to choose anything. Timed so its cost is visible next to the training time.
            t1 = time.perf_counter()
            metrics["test_top1"] = evaluate(model, data.test, data, cfg, device, posthoc=False, distributed=sharded)["top1"]
            metrics["test_curve_s"] = time.perf_counter() - t1
        history.append(metrics)
        if is_main:
            append_history(out, metrics)
            if tracking is not None:
                tracking.log_epoch(metrics)
            if progress:
                val = f" val_top1={metrics['val_top1']:.2f}" if "val_top1" in metrics else ""
                print(
                    f"epoch {done}/{cfg.optim.epochs} loss={train_loss:.4f} lr={lr:.4g} {metrics['train_img_per_s']:.0f} img/s{val}",
                    flush=True,
                )
        ckpt = last or done % cfg.run.checkpoint_every == 0
        if last and is_main:
            result = _finish(out, cfg, model, data, plan, final, history, device, wall_before + time.perf_counter() - t_run)
        reporter.report(metrics, make_state(done) if ckpt and is_main else None)
        if last and tracking is not None:  # after the report: the model card of the last checkpoint is logged too
            tracking.log_result(result, out)
    if not is_main:
        return metrics
    if start_epoch >= cfg.optim.epochs:  # nothing left to train (finished run without metrics.json)
        final = evaluate(model, data.test, data, cfg, device)
        result = _finish(out, cfg, model, data, plan, final, history, device, wall_before)
        if tracking is not None:
            tracking.log_result(result, out)
    return result


def _every_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Per flag: does it hold on every rank of the process group (one tiny all-reduce)."""
    import torch.distributed as dist

    t = torch.tensor([int(f) for f in flags], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [bool(v) for v in t.tolist()]


def _bar(total: int, epoch: int, cfg: TrainConfig, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="img", leave=False, disable=not enabled)


def _best_over_epochs(history: list[dict], final_top1: float, epochs: int) -> dict | None:
    """The best test top-1 over the tracked epochs (final epoch included) and its epoch, or None when untracked."""
    curve = [(h["test_top1"], h["epoch"]) for h in history if "test_top1" in h and h["epoch"] < epochs]
    if not curve:
        return None
    top1, epoch = max(curve + [(final_top1, epochs)], key=lambda t: (t[0], -t[1]))
    return {
        "top1": top1,
        "epoch": epoch,
        "from_epoch": min(e for _, e in curve),
        "protocol": "best test top-1 over epochs (LDAM-DRW / BBN code); the headline is the final epoch",
        "seconds": float(sum(h.get("test_curve_s", 0.0) for h in history)),
    }


def _finish(
    out: Path, cfg: TrainConfig, model, data, plan: DivisionPlan, final: dict, history: list, device, wall: float
) -> dict:
    from .metrics import cluster_weight_norms, weight_norms

    last_val = next((h for h in reversed(history) if "val_top1" in h), None)
    result = dict(final)
    result.update(
        {
            "run": cfg.run_name(),
            "method": cfg.method.name,
            "dataset": cfg.data.dataset,
            "imbalance": cfg.data.imbalance,
            "epochs": cfg.optim.epochs,
            "seed": cfg.optim.seed,
            "cluster_seed": cfg.cluster_seed if cfg.spec.cdh else None,
            "val": (
                {k: last_val.get(f"val_{k}") for k in (*GROUP_KEYS, "by_inference", "posthoc")} if last_val is not None else None
            ),
            "test_best_over_epochs": _best_over_epochs(history, final["top1"], cfg.optim.epochs),
            "class_counts": [int(c) for c in data.class_counts],
            "clusters_per_class": list(plan.u_per_class),
            "num_clusters": plan.num_clusters,
            "weight_norms": weight_norms(model),
            "cluster_weight_norms": cluster_weight_norms(model),
            "train_img_per_s": float(np.median([h["train_img_per_s"] for h in history[1:]] or [history[-1]["train_img_per_s"]])),
            "wall_s": wall,
            **env_info(device),
        }
    )
    return write_metrics(out, cfg, result, history, data.class_counts)
