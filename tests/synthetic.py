"""Small data the tests build themselves: three learnable classes, long-tailed, and a tiny run config."""

from __future__ import annotations

import numpy as np

from twohead.config import load_config
from twohead.data import LTData, Split

COUNTS = [48, 16, 6]


def synthetic(counts=COUNTS, per_eval=6, size=32, seed=0) -> LTData:
    """Three learnable classes (class-coloured images + noise), long-tailed train, balanced val/test."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], dtype=np.float32)

    def make(n_per):
        labels = np.repeat(np.arange(len(n_per)), n_per)
        imgs = colours[labels][:, None, None, :] + rng.normal(0, 40, (len(labels), size, size, 3))
        return Split(labels=labels, ids=np.arange(len(labels)), images=np.clip(imgs, 0, 255).astype(np.uint8))

    return LTData(
        name="synthetic",
        class_names=["r", "g", "b"],
        num_classes=3,
        image_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        train=make(counts),
        val=make([per_eval] * 3),
        test=make([per_eval] * 3),
    )


def tiny_cfg(tmp_path, **over):
    base = {
        "method.u": 3,
        "optim.epochs": 2,
        "optim.batch_size": 16,
        "optim.warmup_epochs": 0,
        "optim.milestones": [1],
        "run.out": str(tmp_path),
        "run.progress": False,
        "run.plots": False,
        "run.checkpoint_every": 1,
        "method.drw_epoch": 1,
    }
    base.update(over)
    return load_config(overrides=base)
