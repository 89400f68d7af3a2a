"""Training criteria: one small module per loss family, picked by :func:`build_criterion`.

Every criterion is an ``nn.Module`` with ``forward(out: HeadOutput, y, k) -> scalar`` (``y``: class
labels, ``k``: global cluster ids, ignored by the baselines) and ``set_epoch(epoch)``, which updates
the class-weight buffer in place (see :mod:`twohead.losses.class_balanced`). Mixup is not a criterion
but a batch transform plus a loss combinator (:mod:`twohead.losses.mixup`), applied by the training
loop when ``MethodSpec.mixup`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from twohead.losses.ce import CELoss
from twohead.losses.class_balanced import (
    Criterion,
    ReweightSchedule,
    check_class_counts,
    effective_number_weights,
    reweight_schedule,
)
from twohead.losses.focal import FocalLoss
from twohead.losses.ldam import LDAMLoss, ldam_margins
from twohead.losses.mixup import mixup_batch, mixup_loss, sample_beta
from twohead.losses.two_head import TwoHeadLoss

if TYPE_CHECKING:
    from twohead.config import TrainConfig

__all__ = [
    "Criterion",
    "CELoss",
    "FocalLoss",
    "LDAMLoss",
    "TwoHeadLoss",
    "ReweightSchedule",
    "build_criterion",
    "check_class_counts",
    "effective_number_weights",
    "ldam_margins",
    "mixup_batch",
    "mixup_loss",
    "reweight_schedule",
    "sample_beta",
]


def build_criterion(
    cfg: TrainConfig,
    class_counts: Sequence[int] | np.ndarray | torch.Tensor,
    soft_labels: torch.Tensor | None = None,
) -> Criterion:
    """The criterion of ``cfg.method.name`` (see :data:`twohead.config.METHODS`), at epoch 0.

    ``class_counts``: training samples per class ``[C]`` (all >= 1). ``soft_labels``: the ``[K, K]``
    matrix of ``twohead.division.soft_label_matrix``, required by methods with the class-division head
    and ignored by the others. Call ``set_epoch(e)`` before each 0-based training epoch ``e``.
    """
    from twohead.config import METHODS

    name = cfg.method.name
    if name not in METHODS:
        raise ValueError(f"method.name={name!r} is unknown; allowed: {', '.join(METHODS)}")
    spec = METHODS[name]
    counts = check_class_counts(class_counts)
    num_classes = counts.numel()
    schedule = reweight_schedule(cfg, counts)
    m = cfg.method

    if spec.cdh or spec.fbh:
        if spec.loss != "ce":
            raise ValueError(f"method {name!r}: the two-head loss is defined with CE, not loss={spec.loss!r}")
        if spec.cdh and soft_labels is None:
            raise ValueError(
                f"method {name!r} has the class-division head and needs soft_labels "
                f"([K, K], twohead.division.soft_label_matrix); got None"
            )
        return TwoHeadLoss(
            num_classes,
            soft_labels if spec.cdh else None,
            lam=m.lam if spec.fbh else 0.0,
            fbh=spec.fbh,
            schedule=schedule,
        )
    if spec.loss == "ce":
        return CELoss(num_classes, schedule)
    if spec.loss == "focal":
        return FocalLoss(num_classes, gamma=m.focal_gamma, schedule=schedule)
    if spec.loss == "ldam":
        return LDAMLoss(counts, max_m=m.ldam_max_m, s=m.ldam_s, schedule=schedule)
    raise ValueError(f"method {name!r}: unknown loss {spec.loss!r}; allowed: ce, focal, ldam")
