"""Where and how a run computes: device, distributed rank, autocast dtype, CUDA-graph choice, per-epoch seeding."""

from __future__ import annotations

import logging
import platform

import torch
import torch.distributed as dist

from .config import ConfigError, TrainConfig

log = logging.getLogger("twohead")

__all__ = ["resolve_device", "rank_world", "amp_dtype", "use_graphs", "seed_epoch", "env_info"]


def resolve_device(cfg: TrainConfig) -> torch.device:
    want = cfg.optim.device
    if dist.is_available() and dist.is_initialized() and torch.cuda.is_available() and want in ("auto", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(want)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"optim.device={want!r} but no CUDA device is available; use optim.device=cpu or auto")
    return dev


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.optim.amp == "off" or (cfg.optim.amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def use_graphs(cfg: TrainConfig, device: torch.device, world: int) -> bool:
    mode = cfg.optim.compile
    if mode == "auto":
        mode = "cuda-graphs" if device.type == "cuda" else "off"
    if mode == "cuda-graphs" and (device.type != "cuda" or world > 1):
        if mode == cfg.optim.compile:
            log.warning("optim.compile=cuda-graphs needs one CUDA device without DDP; running eager")
        return False
    return mode == "cuda-graphs"


def seed_epoch(seed: int, epoch: int) -> None:
    """Every epoch's randomness (shuffle, crop, flip, mixup) depends only on (seed, epoch): resuming from a
    checkpoint replays exactly what an uninterrupted run would have done."""
    torch.manual_seed(seed * 100_003 + epoch)


def env_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "host": platform.node()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info
