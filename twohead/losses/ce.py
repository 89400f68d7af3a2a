"""Cross-entropy on the main classifier's C logits (the CE / CB / mixup baselines)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from twohead.losses.class_balanced import Criterion, ReweightSchedule, _check_width

if TYPE_CHECKING:
    from twohead.heads import HeadOutput

__all__ = ["CELoss"]


class CELoss(Criterion):
    """``l_i = -log softmax(out.logits)_i[y_i]``, class-weighted mean; ``k`` is ignored.

    Needs the main classifier to predict the C original classes (no class-division head, K == C).
    """

    def __init__(self, num_classes: int, schedule: ReweightSchedule | None = None) -> None:
        super().__init__(num_classes, schedule)

    def per_sample(self, out: HeadOutput, y: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        _check_width("out.logits", out.logits, self.num_classes, "one logit per class")
        # float32 whatever the autocast dtype: the log-sum-exp of bf16 logits loses the small losses.
        return F.cross_entropy(out.logits.float(), y, reduction="none")
