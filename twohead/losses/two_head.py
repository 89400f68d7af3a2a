"""The paper's training objective ``L = L2 + lambda * L1`` (Sec. 2.2) and its ablations.

* ``L2`` (Eq. 4): cross-entropy with soft targets over the K cluster logits of the class-division
  head (CDH). A sample of cluster ``k`` has target row ``q = soft_labels[k]``: ``alpha`` on ``k`` and
  ``(1 - alpha) / (u_c - 1)`` on the other clusters of its class (``twohead.division.soft_label_matrix``).
* ``L1`` (Eq. 2): cross-entropy of the feature-balancing head's (FBH) C class logits ``z_i`` (Eq. 1)
  with the class label.

``twohead`` uses both terms, ``cdh_only`` only L2, ``fbh_only`` plain CE on the C-way classifier plus
``lambda * L1``. Class weights ``w[y]`` (``twohead_full``: deferred effective-number re-weighting)
apply to both terms: the result is the weighted mean of ``l2_i + lambda * l1_i``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from twohead.losses.class_balanced import Criterion, ReweightSchedule, _check_width

if TYPE_CHECKING:
    from twohead.heads import HeadOutput

__all__ = ["TwoHeadLoss"]


class TwoHeadLoss(Criterion):
    """``L = L2 + lambda * L1``; ``forward(out, y, k)`` with class labels ``y`` and global cluster ids ``k``.

    Args:
        num_classes: C.
        soft_labels: ``[K, K]`` soft-label matrix (rows are the targets q of Eq. 4), or ``None`` for a
            method without the class-division head, whose main classifier is then trained with hard-label
            CE on C logits.
        lam: lambda; the FBH term is computed only when ``fbh`` and ``lam > 0``.
        fbh: whether the model has the feature-balancing head (``out.fbh`` is then required).
        schedule: class re-weighting schedule (``None``: all ones).
    """

    soft_labels: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        soft_labels: torch.Tensor | None,
        lam: float = 1.5,
        fbh: bool = True,
        schedule: ReweightSchedule | None = None,
    ) -> None:
        super().__init__(num_classes, schedule)
        if lam < 0:
            raise ValueError(f"lambda={lam} must be >= 0")
        self.lam = float(lam)
        self.use_fbh = bool(fbh) and self.lam > 0
        self.cdh = soft_labels is not None
        self.num_clusters = num_classes
        if soft_labels is not None:
            q = torch.as_tensor(soft_labels, dtype=torch.float32).detach()
            if q.ndim != 2 or q.shape[0] != q.shape[1]:
                raise ValueError(f"soft_labels must be a square [K, K] matrix, got shape {tuple(q.shape)}")
            if q.shape[0] < num_classes:
                raise ValueError(f"soft_labels has K={q.shape[0]} clusters, fewer than num_classes={num_classes}")
            row_sums = q.sum(1)
            bad = torch.nonzero((q < 0).any(1) | ((row_sums - 1).abs() > 1e-4)).flatten()
            if bad.numel():
                r = int(bad[0])
                raise ValueError(
                    f"soft_labels row {r} is not a distribution (sum {float(row_sums[r]):.6g}, "
                    f"min {float(q[r].min()):.6g}); every row must be >= 0 and sum to 1"
                )
            self.num_clusters = int(q.shape[0])
            # Non-persistent: derived from the division plan, rebuilt with the criterion.
            self.register_buffer("soft_labels", q.clone(), persistent=False)

    def per_sample(self, out: HeadOutput, y: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
        logits = out.logits.float()
        if self.cdh:
            if k is None:
                raise ValueError("the class-division head's loss (Eq. 4) needs the cluster ids k, got None")
            _check_width("out.logits", logits, self.num_clusters, "one logit per cluster, K")
            # Soft-target CE: -sum_k q_ik log p_ik (Eq. 4); a row gather keeps the shapes static.
            loss = F.cross_entropy(logits, self.soft_labels[k], reduction="none")
        else:
            _check_width("out.logits", logits, self.num_classes, "one logit per class")
            loss = F.cross_entropy(logits, y, reduction="none")
        if self.use_fbh:
            if out.fbh is None:
                raise ValueError(f"lambda={self.lam} > 0 needs the feature-balancing head's logits, but out.fbh is None")
            _check_width("out.fbh", out.fbh, self.num_classes, "one logit per class, Eq. 1")
            loss = loss + self.lam * F.cross_entropy(out.fbh.float(), y, reduction="none")  # Eq. 2
        return loss

    def extra_repr(self) -> str:
        return f"cdh={self.cdh}, K={self.num_clusters}, fbh={self.use_fbh}, lam={self.lam}, " + super().extra_repr()
