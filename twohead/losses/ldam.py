"""LDAM: label-distribution-aware margin loss (Cao et al. 2019, "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss"), used with the cosine classifier (``MethodSpec.normed_classifier``)
and, for LDAM-DRW, with deferred effective-number re-weighting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from twohead.losses.class_balanced import Criterion, ReweightSchedule, _check_width, check_class_counts

if TYPE_CHECKING:
    from twohead.heads import HeadOutput

__all__ = ["LDAMLoss", "ldam_margins"]


def ldam_margins(class_counts: Sequence[int] | np.ndarray | torch.Tensor, max_m: float = 0.5) -> torch.Tensor:
    """Per-class margins ``m_c = C' n_c^(-1/4)`` with ``C'`` chosen so the largest (rarest class) is ``max_m``."""
    if max_m <= 0:
        raise ValueError(f"LDAM max_m={max_m} must be > 0")
    m = check_class_counts(class_counts).pow(-0.25)
    return (m * (max_m / m.max())).to(torch.float32)


class LDAMLoss(Criterion):
    """``l_i = CE(s * (z_i - m_{y_i} e_{y_i}), y_i)``: the true-class logit minus its class margin, all
    logits scaled by ``s`` (the cosine classifier's logits live in [-1, 1]), class-weighted mean."""

    margins: torch.Tensor

    def __init__(
        self,
        class_counts: Sequence[int] | np.ndarray | torch.Tensor,
        max_m: float = 0.5,
        s: float = 30.0,
        schedule: ReweightSchedule | None = None,
    ) -> None:
        margins = ldam_margins(class_counts, max_m)
        super().__init__(margins.numel(), schedule)
        if s <= 0:
            raise ValueError(f"LDAM scale s={s} must be > 0")
        self.s = float(s)
        self.max_m = float(max_m)
        self.register_buffer("margins", margins, persistent=False)

    def per_sample(self, out: HeadOutput, y: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        _check_width("out.logits", out.logits, self.num_classes, "one logit per class")
        logits = out.logits.float()
        # Subtract m_y only at the true class (a scatter of [B, 1] margins; static shapes).
        shifted = logits.scatter_add(1, y.unsqueeze(1), -self.margins[y].unsqueeze(1))
        return F.cross_entropy(self.s * shifted, y, reduction="none")

    def extra_repr(self) -> str:
        return f"max_m={self.max_m:g}, s={self.s}, " + super().extra_repr()
