"""Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") on the C class logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from twohead.losses.class_balanced import Criterion, ReweightSchedule, _check_width

if TYPE_CHECKING:
    from twohead.heads import HeadOutput

__all__ = ["FocalLoss"]


class FocalLoss(Criterion):
    """``l_i = -(1 - p_t)^gamma log p_t`` with ``p_t`` the softmax probability of the true class.

    ``gamma = 0`` is plain cross-entropy. Class weights (CB-focal) multiply ``l_i`` in the weighted
    mean, i.e. ``sum w[y] l / sum w[y]``; ``k`` is ignored.
    """

    def __init__(self, num_classes: int, gamma: float = 1.0, schedule: ReweightSchedule | None = None) -> None:
        super().__init__(num_classes, schedule)
        if gamma < 0:
            raise ValueError(f"focal gamma={gamma} must be >= 0")
        self.gamma = float(gamma)

    def per_sample(self, out: HeadOutput, y: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        _check_width("out.logits", out.logits, self.num_classes, "one logit per class")
        log_pt = F.log_softmax(out.logits.float(), dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        # 1 - p_t via expm1: exact for confident samples where exp(log_pt) rounds to 1. The clamp keeps
        # the gradient of (1 - p_t)^gamma finite for gamma < 1 when 1 - p_t underflows to 0.
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(1e-12)
        return -one_minus_pt.pow(self.gamma) * log_pt

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, " + super().extra_repr()
