"""A run's folder: claiming it, checkpointing into it, and writing its final metrics.

A folder ``OUT/NAME/`` holds ``config.yaml`` (the resolved config), ``history.jsonl`` (one line per epoch),
``checkpoint.pt`` (what a rerun resumes from, and what :func:`twohead.load` reads) with its model card
(``model_card.json`` / ``.md``, :mod:`twohead.model_card`) and, once finished,
``metrics.json`` and the plots. A folder holding another run's results is never overwritten; two configs are the
same run when :func:`twohead.config.result_identity` agrees (output paths, data location and device aside).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import atomic
from .config import TrainConfig, result_identity
from .folders import OutputFolderError, check_writable

log = logging.getLogger("twohead")

__all__ = [
    "RunExistsError",
    "Reporter",
    "LocalReporter",
    "claim_run_dir",
    "write_metrics",
    "load_checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "write_failure",
    "finished_metrics",
]


class RunExistsError(RuntimeError):
    """The output folder holds another run's results; refusing to overwrite them."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a twohead checkpoint."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, read-only folder, ...): the machine, not the input."""


class Reporter(Protocol):
    def restore(self) -> dict | None:
        """The state dict to resume from (what ``make_state`` returned), or None for a fresh run."""
        ...

    def report(self, metrics: dict, make_state: Callable[[], dict] | None) -> None:
        """Called once per epoch on every rank; ``make_state`` is given on checkpoint epochs."""
        ...


def load_checkpoint(path: str | Path) -> dict:
    """A twohead checkpoint as a dict; :class:`CheckpointError` naming the file when it cannot be one."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}")
    try:
        # weights_only: a checkpoint holds tensors, dicts, lists and numbers; never unpickle code from a file a user
        # was handed.
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, or not a torch file: one clear line
        first = (str(e).splitlines() or [""])[0][:120]
        raise CheckpointError(f"{p} is not a readable checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not {"model", "config", "class_counts"} <= set(state):
        raise CheckpointError(f"{p} is not a twohead checkpoint (no model / config / class_counts)")
    return state


class LocalReporter:
    """Checkpoints to ``out_dir/checkpoint.pt`` (atomic replace, the one before kept as ``checkpoint.prev.pt``) and
    resumes from the newest readable one: a checkpoint damaged on disk is moved aside (``checkpoint.damaged.pt``),
    never deleted, and never leaves the run stuck."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / "checkpoint.pt"
        self.prev = self.path.with_name("checkpoint.prev.pt")

    def peek(self) -> dict | None:
        """The newest readable checkpoint, moving nothing (what :meth:`restore` would resume from)."""
        for p in (self.path, self.prev):
            try:
                return load_checkpoint(p)
            except CheckpointError:
                continue
        return None

    def restore(self) -> dict | None:
        for p in (self.path, self.prev):
            if not p.is_file():
                continue
            try:
                return load_checkpoint(p)
            except CheckpointError as e:
                aside = p.with_name(p.name.replace(".pt", f".damaged-{time.strftime('%Y%m%d-%H%M%S')}.pt"))
                p.replace(aside)
                log.warning("%s; moved to %s, trying the one before", e, aside.name)
        return None

    def report(self, metrics: dict, make_state: Callable[[], dict] | None) -> None:
        if make_state is None:
            return
        # Serialised in memory first: torch.save's C++ writer reports a full disk as an opaque RuntimeError, a plain
        # file write says "no space left" (errno) and names the file.
        buf = io.BytesIO()
        state = make_state()
        torch.save(state, buf)
        try:
            with atomic.atomic_path(self.path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(buf.getbuffer())
                    f.flush()
                    os.fsync(f.fileno())
                if self.path.is_file():  # keep the last good checkpoint until the new one is in place
                    self.path.replace(self.prev)
        except OSError as e:
            raise CheckpointWriteError(
                f"could not write the checkpoint {self.path}: {write_failure(e, self.path.parent)}; the previous "
                "checkpoint (if any) is intact: free space and rerun the same command to resume from it"
            ) from None
        self.write_card(state)

    def write_card(self, state: dict) -> None:
        """The model card of the checkpoint just written, beside it (a failed card never fails the run)."""
        from .model_card import write_card

        try:
            write_card(self.path.parent, state, load_path=str(self.path.parent.resolve()))
        except OSError as e:
            log.warning("could not write the model card in %s: %s", self.path.parent, write_failure(e, self.path.parent))


def write_failure(e: BaseException, folder: Path) -> str:
    """A short reason for a failed write: no space / file too large / read-only / permission, else the first line."""
    import errno
    import shutil

    code = getattr(e, "errno", None)
    text = " ".join(str(e).split())
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        return "no space left on the device"
    if code == errno.EFBIG or "File too large" in text:
        return "file too large for the file system or the process's file-size limit"
    if code == errno.EROFS:
        return "read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 << 20:
        return f"only {free >> 20} MiB free on the device"
    return f"{type(e).__name__}: {text[:160]}"


def finished_metrics(out: Path, cfg: TrainConfig) -> dict | None:
    """``metrics.json`` of a finished run of this config in ``out`` (all epochs trained), else None."""
    import yaml

    try:
        metrics = json.loads((out / "metrics.json").read_text())
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    same = result_identity(saved) == result_identity(cfg.to_dict())
    return metrics if same and int(metrics.get("epochs", -1)) == cfg.optim.epochs else None


def _holds_results(out: Path) -> bool:
    return any((out / n).is_file() for n in ("checkpoint.pt", "checkpoint.prev.pt", "metrics.json"))


def claim_run_dir(out: Path, cfg: TrainConfig, resuming: bool) -> None:
    """Create the run folder, or refuse when it holds another run's results (nothing written is ever lost).

    A folder left by a run that failed before its first checkpoint holds no results: its config and history are
    kept beside the new ones (``*.<time>.yaml`` / ``.jsonl``) and the new run starts there.
    """
    cfg_file = out / "config.yaml"
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise RunExistsError(f"{out} cannot be a run folder: {blocker} is a file; choose another run.name or out folder")
    try:
        check_writable(out, "run folder")
    except OutputFolderError as e:
        raise RunExistsError(str(e)) from None
    if out.exists() and any(out.iterdir()) and not resuming:
        if not cfg_file.is_file():
            raise RunExistsError(f"{out} is not empty and holds no twohead run; choose another run.name or out folder")
        import yaml

        same = result_identity(yaml.safe_load(cfg_file.read_text()) or {}) == result_identity(cfg.to_dict())
        if _holds_results(out):
            if not same:
                raise RunExistsError(f"{out} holds results of a different config; choose another run.name or out folder")
            if (out / "metrics.json").is_file() and not cfg.run.resume:
                raise RunExistsError(f"{out} holds a finished run and run.resume=false; remove it or choose another run.name")
        stamp = int(time.time())
        for name, kept in (("history.jsonl", f"history.{stamp}.jsonl"), ("config.yaml", f"config.{stamp}.yaml")):
            if (out / name).is_file() and (name == "history.jsonl" or not same):
                (out / name).replace(out / kept)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(cfg_file, cfg.to_yaml())


def write_metrics(out: Path, cfg: TrainConfig, result: dict[str, Any], history: list[dict], class_counts) -> dict:
    """``metrics.json`` (atomically) and, when ``run.plots``, the per-run PNGs (a failed plot never loses metrics)."""
    atomic.write_json(out / "metrics.json", result)
    if cfg.run.plots:
        try:
            from .plots import plot_history, plot_run

            plot_run(result, np.asarray(class_counts), out)
            plot_history(history, out)
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run's metrics
            log.warning("plots failed: %s", e)
    return result


def append_history(out: Path, metrics: dict) -> None:
    with open(out / "history.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")


def rewrite_history(out: Path, history: list[dict]) -> None:
    atomic.write_text(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
