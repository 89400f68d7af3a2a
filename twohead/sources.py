"""Where training batches come from: device-resident uint8 tensors (small images) or a DataLoader (files).

Both yield ``(images, labels, cluster ids)``; Ray Data streaming (``rayjobs.data.stream``) is a third implementation of
the same :class:`BatchSource` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .config import TrainConfig
from .division import DivisionPlan
from .runtime import rank_world

__all__ = ["BatchSource", "DeviceSource", "LoaderSource"]


@runtime_checkable
class BatchSource(Protocol):
    """Training batches from elsewhere (Ray Data streaming): this worker's shard of one epoch."""

    augmented: bool  # True when crop/flip was already applied (large images augmented on CPU workers)
    num_samples: int  # samples per epoch on this worker
    # The division the cluster ids follow, when they come from elsewhere (a labels file): the loop's class-division
    # head must have its K outputs. None: Eq. 3 on the training counts.
    division: DivisionPlan | None

    def batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yields (images uint8 [B,H,W,3] or [B,3,H,W] (or float, already normalised), labels [B], cluster ids [B])."""
        ...


class DeviceSource:
    division = None  # cluster ids computed by division_for on these very counts
    """The training split as device-resident uint8 NCHW tensors; each epoch a seeded permutation is sharded by
    rank (like DistributedSampler) and cut into batches (drop_last when the step is a captured graph)."""

    augmented = False

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        clusters: np.ndarray,
        device: torch.device,
        batch_size: int,
        seed: int,
        drop_last: bool,
    ):
        rank, world = rank_world()
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.clusters = torch.from_numpy(clusters.astype(np.int64)).to(device)
        self.rank, self.world, self.seed, self.drop_last = rank, world, seed, drop_last
        self.batch_size = max(1, batch_size // world)
        self.per_rank = len(labels) // world
        self.num_samples = self.per_rank

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        perm = torch.randperm(len(self.labels), generator=g)[self.rank :: self.world][: self.per_rank]
        perm = perm.to(self.images.device)
        B = self.batch_size
        end = (len(perm) // B) * B if self.drop_last else len(perm)
        for i in range(0, end, B):
            idx = perm[i : i + B]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                break
            yield self.images[idx], self.labels[idx], self.clusters[idx]


class LoaderSource:
    division = None
    """File-backed splits (ImageNet-LT): a DataLoader decodes and augments (RandomResizedCrop + flip) on CPU
    workers; the loop normalises on the device. Cluster ids are looked up by the sample's position."""

    augmented = True

    def __init__(self, split, clusters: np.ndarray, cfg: TrainConfig, image_size: int):
        from .data import FileDataset, collate_skip_corrupt

        rank, world = rank_world()
        ds = FileDataset(split, train=True, image_size=image_size, skip_corrupt=cfg.data.skip_corrupt)
        self.clusters = torch.from_numpy(clusters.astype(np.int64))
        self.sampler = (
            torch.utils.data.DistributedSampler(ds, world, rank, shuffle=True, seed=cfg.optim.seed, drop_last=True)
            if world > 1
            else None
        )
        self.loader = torch.utils.data.DataLoader(
            ds,
            batch_size=max(1, cfg.optim.batch_size // world),
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
            persistent_workers=cfg.data.num_workers > 0,
            collate_fn=collate_skip_corrupt if cfg.data.skip_corrupt else None,
        )
        self.num_samples = len(ds) // world

    def batches(self, epoch: int):
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        for batch in self.loader:
            if batch is None:  # every image of the batch was undecodable and skipped
                continue
            x, y, pos = batch
            yield x, y, self.clusters[pos]
