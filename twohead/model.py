"""The classifier: any registry backbone + (optional projection) + FBH + CDH (Fig. 2).

Baselines use the same module with the FBH off and one cluster per class, so every method shares one forward
path and one training step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from .division import DivisionPlan
from .heads import (
    ClassDivisionHead,
    FeatureBalancingHead,
    FeatureProjection,
    HeadOutput,
    channels_per_class,
    clusters_to_classes,
)

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["TwoHeadModel", "create_model"]


class TwoHeadModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        plan: DivisionPlan,
        *,
        fbh: bool = True,
        fbh_kernel: int = 3,
        feature_proj: str = "auto",
        inference: str = "sum",
        normed_classifier: bool = False,
    ):
        super().__init__()
        C, D = plan.num_classes, int(backbone.out_channels)
        self.backbone = backbone
        self.plan = plan
        self.num_classes = C
        self.inference = inference
        self.proj: nn.Module = nn.Identity()
        width = D
        self.fbh: FeatureBalancingHead | None = None
        if fbh:
            m, project = channels_per_class(D, C, feature_proj)
            if project:
                self.proj = FeatureProjection(D, m * C)
                width = m * C
            self.fbh = FeatureBalancingHead(C, m, fbh_kernel)
        self.cdh = ClassDivisionHead(width, plan.num_clusters, normed=normed_classifier)
        cluster_to_class = torch.as_tensor(plan.cluster_to_class, dtype=torch.long)
        self.register_buffer("cluster_to_class", cluster_to_class, persistent=False)
        self.register_buffer(
            "class_map", torch.nn.functional.one_hot(cluster_to_class, C).float(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> HeadOutput:
        feats = self.proj(self.backbone(x))
        return HeadOutput(self.cdh(feats), self.fbh(feats) if self.fbh is not None else None)

    def probs(self, out: HeadOutput) -> torch.Tensor:
        """[B, C] class probabilities from a forward output (model.inference: sum | max | fuse)."""
        return clusters_to_classes(out.logits, self.class_map, self.num_classes, self.inference, out.fbh)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.probs(self(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, D'] that both heads read (used as a clustering embedding)."""
        return self.proj(self.backbone(x)).mean(dim=(2, 3))

    def classifier_weight(self) -> torch.Tensor:
        return self.cdh.weight_rows()


def create_model(cfg: "TrainConfig", class_counts: Sequence[int], image_size: int | None = None) -> TwoHeadModel:
    """Build the model a config describes; the division plan (Eq. 3) comes from the training class counts.

    ``image_size`` is the training resolution (``LTData.image_size`` when the data is at hand: it knows the size
    of Parquet / folder datasets); without it, ``data.image_size`` or the dataset's nominal size is used."""
    from .backbones import create_backbone

    spec = cfg.spec
    counts = [int(c) for c in class_counts]
    plan = DivisionPlan.from_counts(counts, cfg.method.u, cfg.method.rounding) if spec.cdh else DivisionPlan.identity(len(counts))
    image_size = image_size or cfg.data.image_size or {"tiny-imagenet-lt": 64, "imagenet-lt": 224}.get(cfg.data.dataset, 32)
    backbone = create_backbone(cfg.model.backbone, image_size=image_size)
    return TwoHeadModel(
        backbone,
        plan,
        fbh=spec.fbh,
        fbh_kernel=cfg.model.fbh_kernel,
        feature_proj=cfg.model.feature_proj,
        inference=cfg.model.inference,
        normed_classifier=spec.normed_classifier,
    )
