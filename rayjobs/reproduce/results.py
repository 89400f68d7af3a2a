"""Finished runs on disk: the small per-run JSON meant to be committed, and deciding whether a run already finished.

A run is finished when ``<out>/<dataset>/<run>.json`` exists with the same config, or
``<work>/<dataset>/<run>/metrics.json`` does (its JSON is then derived and saved). A result file of the same run
name with another config (the recipe changed since) is never overwritten: :class:`StaleResultError`.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twohead import atomic
from twohead.config import TrainConfig, result_identity
from twohead.model_card import git_commit  # re-exported: the commit a reproduction records (one implementation)

from .plan import RunSpec

__all__ = ["git_commit", "slim_result", "slim_path", "run_dir", "StaleResultError", "finished_result", "lr_by_epoch"]


def _card(metrics: Mapping[str, Any]) -> str:
    if metrics.get("gpu"):
        return str(metrics["gpu"])
    threads = metrics.get("cpu_threads")
    return f"CPU ({platform.machine()}{f', {threads} threads' if threads else ''})"


def slim_result(metrics: Mapping[str, Any], cfg: TrainConfig, extra: Mapping[str, Any] | None = None) -> dict:
    """The committed per-run JSON: what a table or Fig. 3 needs plus provenance; no checkpoints, no confusion."""
    cfg_d = cfg.to_dict()
    cfg_d.pop("run", None)
    cfg_d["data"].pop("root", None)
    keys = (
        "run",
        "dataset",
        "method",
        "imbalance",
        "seed",
        "cluster_seed",
        "epochs",
        "top1",
        "many",
        "medium",
        "few",
        "worst_class",
        "ece",
        "by_inference",
        "by_inference_groups",
        "posthoc",
        "test_best_over_epochs",
        "per_class_recall",
        "class_counts",
        "weight_norms",
        "cluster_weight_norms",
        "num_clusters",
        "val",
        "wall_s",
        "train_img_per_s",
        "device",
        "torch",
    )
    out = {k: metrics.get(k) for k in keys}
    out["card"] = _card(metrics)
    out.update(dict(extra or {}))
    out["config"] = cfg_d
    return out


def slim_path(out: Path, spec: RunSpec) -> Path:
    return Path(out) / spec.dataset / f"{spec.name}.json"


def run_dir(work: Path, spec: RunSpec) -> Path:
    return Path(work).resolve() / spec.dataset / spec.name


class StaleResultError(RuntimeError):
    """A result file of this run name holds a different config (the recipe changed since): never overwritten."""


def finished_result(spec: RunSpec, out: Path, work: Path, extra: Mapping[str, Any] | None = None) -> dict | None:
    """The run's slim JSON if it finished (from ``out``, or derived from ``work``'s metrics.json and saved to
    ``out``), else None. Raises :class:`StaleResultError` when ``out`` holds this name with another config."""
    cfg = spec.config(work)
    want = result_identity(cfg.to_dict())
    sp = slim_path(out, spec)
    if sp.is_file():
        d = json.loads(sp.read_text())
        if result_identity(d.get("config", {})) != want:
            raise StaleResultError(f"{sp} holds run {spec.name} with a different config; move it away to rerun")
        if d.get("lr_by_epoch") is None:  # written before the record existed: add it while the history is there
            lr = lr_by_epoch(run_dir(work, spec) / "history.jsonl")
            if lr is not None:
                d["lr_by_epoch"] = lr
                atomic.write_json(sp, d)
        return d
    rd = run_dir(work, spec)
    mfile = rd / "metrics.json"
    if not mfile.is_file():
        return None
    import yaml

    cfile = rd / "config.yaml"
    if not cfile.is_file() or result_identity(yaml.safe_load(cfile.read_text())) != want:
        raise StaleResultError(f"{rd} holds run {spec.name} with a different config; move it away to rerun")
    metrics = json.loads(mfile.read_text())
    if int(metrics.get("epochs", -1)) != cfg.optim.epochs:
        return None
    meta = dict(extra or {})
    side = rd.parent / "plans" / f"{spec.name}.launch.json"
    if side.is_file():  # what was true when the run was launched (commit, packing) beats what is true now
        meta.update(json.loads(side.read_text()))
    d = slim_result(metrics, cfg, meta)
    d["lr_by_epoch"] = lr_by_epoch(rd / "history.jsonl")
    atomic.write_json(sp, d)
    return d


def lr_by_epoch(history: Path) -> list[float] | None:
    """The learning rate each epoch applied, from a run's ``history.jsonl`` (one line per epoch; a resumed run may
    repeat an epoch: the last line of each wins), or None without a history."""
    if not history.is_file():
        return None
    lr: dict[int, float] = {}
    for line in history.read_text().splitlines():
        if line.strip():
            h = json.loads(line)
            if "epoch" in h and "lr" in h:
                lr[int(h["epoch"])] = float(h["lr"])
    return [lr[e] for e in sorted(lr)] or None
