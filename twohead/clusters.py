"""The cluster id of every training sample for a config: Eq. 3's plan plus the chosen division method.

Random splitting is the paper's default (Sec. 3.1); k-means and hierarchical clustering (Fig. 4 right) need an
embedding: PCA of pixels, raw pixels, or the pooled features of a trained checkpoint (``method.embedding``).
The seed is ``TrainConfig.cluster_seed`` (``method.cluster_seed``, else ``optim.seed``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, TrainConfig
from .division import DivisionPlan, assign_clusters, pixel_embedding

__all__ = ["division_plan", "division_for", "checkpoint_features"]


def division_plan(cfg: TrainConfig, class_counts) -> DivisionPlan:
    """Eq. 3 for methods with the class-division head; one cluster per class for the others."""
    counts = np.asarray(class_counts, dtype=np.int64)
    if not cfg.spec.cdh:
        return DivisionPlan.identity(len(counts))
    return DivisionPlan.from_counts(counts, cfg.method.u, cfg.method.rounding)


def division_for(cfg: TrainConfig, data, device: torch.device | None = None) -> tuple[DivisionPlan, np.ndarray]:
    """Eq. 3 plan and the per-sample cluster ids of the training split (identity when the method has no CDH)."""
    labels = np.asarray(data.train.labels, dtype=np.int64)
    plan = division_plan(cfg, data.class_counts)
    if not cfg.spec.cdh:
        return plan, labels.copy()
    embedding = None
    if cfg.method.clustering != "random":
        embedding = _embedding(cfg, data, device or torch.device("cpu"))
    return plan, assign_clusters(labels, plan, cfg.method.clustering, cfg.cluster_seed, embedding)


def _embedding(cfg: TrainConfig, data, device: torch.device) -> np.ndarray:
    kind = cfg.method.embedding
    if kind.startswith("checkpoint:"):
        return checkpoint_features(kind.split(":", 1)[1], data, device)
    images = data.train.images
    if images is None:
        from .data import load_images

        images = load_images(data.train, np.arange(len(data.train)), size=32)
    if kind == "pixels":
        return np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0
    return pixel_embedding(images, seed=cfg.cluster_seed)


def checkpoint_features(path: str, data, device: torch.device) -> np.ndarray:
    """Pooled backbone features of the training images from a trained twohead checkpoint (an embedding for
    k-means / hierarchical division that reflects what a network finds similar), read through
    :func:`twohead.load`: the checkpoint's own resolution, normalisation and test-time resize."""
    from .inference import load
    from .runs import CheckpointError

    if not Path(path).is_file():
        raise ConfigError(f"method.embedding=checkpoint:{path}: file does not exist")
    try:
        clf = load(path, device=device)
    except CheckpointError as e:
        raise ConfigError(f"method.embedding=checkpoint:{path}: {e}") from None
    train = data.train
    return clf.features(train.images if train.images is not None else train.files, batch_size=512)
