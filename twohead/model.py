"""The classifier: any registry backbone + (optional projection) + FBH + CDH (Fig. 2).

Baselines use the same module with the FBH off and one cluster per class, so every method shares one forward
path and one training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .division import DivisionPlan
from .heads import ClassDivisionHead, FeatureBalancingHead, FeatureProjection, HeadOutput, channels_per_class
from .readings import class_log_probs

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["TwoHeadModel", "create_model"]


class TwoHeadModel(nn.Module):
    """backbone -> (projection) -> {FBH on the feature map, GAP -> K-way CDH classifier}.

    ``project_features`` is set for every method of the two-head family (FBH only, CDH only, both), so the
    Table 4 ablation's rows share the projection and the classifier's input; baselines keep the plain backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        plan: DivisionPlan,
        *,
        fbh: bool = True,
        fbh_kernel: int = 3,
        feature_proj: str = "auto",
        project_features: bool | None = None,
        inference: str = "max",
        normed_classifier: bool = False,
        logit_scale: float = 1.0,
    ):
        super().__init__()
        C, D = plan.num_classes, int(backbone.out_channels)
        self.backbone = backbone
        self.plan = plan
        self.num_classes = C
        self.inference = inference
        # A cosine classifier's logits live in [-1, 1]; LDAM trains them as s * cos (its loss scales them), so every
        # reading (probabilities, calibration, post-hoc adjustment, exports) reads s * cos as well.
        self.logit_scale = float(logit_scale)
        self.proj: nn.Module = nn.Identity()
        width = D
        self.fbh: FeatureBalancingHead | None = None
        if fbh or project_features:  # the FBH needs m*C channels; the two-head family shares them
            m, project = channels_per_class(D, C, feature_proj)
            if project:
                self.proj = FeatureProjection(D, m * C)
                width = m * C
        if fbh:
            self.fbh = FeatureBalancingHead(C, width // C, fbh_kernel)
        self.cdh = ClassDivisionHead(width, plan.num_clusters, normed=normed_classifier)
        self.register_buffer("cluster_to_class", torch.as_tensor(plan.cluster_to_class, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        return self.outputs(x)[0]

    def outputs(self, x: torch.Tensor) -> tuple[HeadOutput, torch.Tensor]:
        """The heads' logits and the pooled features [B, D'] the classifier reads (for tau-normalisation and as a
        clustering embedding), from one pass through the backbone."""
        feats = self.proj(self.backbone(x))
        pooled = feats.mean(dim=(2, 3))
        return HeadOutput(self.cdh(pooled), self.fbh(feats) if self.fbh is not None else None), pooled

    def log_probs(self, out: HeadOutput, reading: str | None = None) -> torch.Tensor:
        """[B, C] class log-probabilities of a forward output under ``reading`` (default: ``model.inference``)."""
        logits = out.logits if self.logit_scale == 1.0 else out.logits * self.logit_scale
        return class_log_probs(reading or self.inference, logits, self.cluster_to_class, self.num_classes, out.fbh)

    def probs(self, out: HeadOutput, reading: str | None = None) -> torch.Tensor:
        """[B, C] class probabilities of a forward output under ``reading`` (default: ``model.inference``)."""
        return self.log_probs(out, reading).exp()

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.probs(self(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, D'] that both heads read (used as a clustering embedding)."""
        return self.outputs(x)[1]

    def classifier_weight(self) -> torch.Tensor:
        return self.cdh.weight_rows()


def create_model(
    cfg: TrainConfig, class_counts: Sequence[int], image_size: int | None = None, plan: DivisionPlan | None = None
) -> TwoHeadModel:
    """Build the model a config describes; the division plan (Eq. 3) comes from the training class counts unless
    ``plan`` gives it (the division a labels file or a checkpoint recorded).

    ``image_size`` is the training resolution (``LTData.image_size`` when the data is at hand: it knows the size
    of Parquet / folder datasets); without it, ``data.image_size`` or the dataset's nominal size is used."""
    from .backbones import create_backbone

    spec = cfg.spec
    counts = [int(c) for c in class_counts]
    if plan is None:
        plan = (
            DivisionPlan.from_counts(counts, cfg.method.u, cfg.method.rounding)
            if spec.cdh
            else DivisionPlan.identity(len(counts))
        )
    image_size = image_size or cfg.data.image_size or {"tiny-imagenet-lt": 64, "imagenet-lt": 224}.get(cfg.data.dataset, 32)
    backbone = create_backbone(cfg.model.backbone, image_size=image_size)
    return TwoHeadModel(
        backbone,
        plan,
        fbh=spec.fbh,
        fbh_kernel=cfg.model.fbh_kernel,
        feature_proj=cfg.model.feature_proj,
        project_features=spec.fbh or spec.cdh,
        inference=cfg.model.inference,
        normed_classifier=spec.normed_classifier,
        logit_scale=cfg.method.ldam_s if spec.normed_classifier else 1.0,
    )
