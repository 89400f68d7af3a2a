"""The two heads of the paper (Fig. 2); the test-time K-to-C readings are in :mod:`twohead.readings`.

* :class:`FeatureBalancingHead` (Sec. 2.1, Eq. 1): the D-channel feature map is split into C equal groups;
  group c is convolved with its own kernel K_c (all C convolutions are ONE group convolution with
  ``groups=C``), then global average pooling gives the C logits z_i trained with L1 = CE (Eq. 2).
* :class:`ClassDivisionHead` (Sec. 2.2): a K-way classifier over the K clusters, on globally average-pooled features.
* :class:`FeatureProjection`: the paper assumes D is a multiple of C ("without loss of generality"); ResNet-32
  has D = 64 with C = 10 or 100. When it is not, a 1x1 conv + BN + ReLU maps D to m*C channels,
  m = max(1, ceil(D / C)), at the end of the feature extractor, so BOTH heads read the balanced features. Every
  method of the two-head family (FBH only, CDH only, both: Table 4) gets the same projection, so the ablation's
  rows share one architecture and differ only in the losses that train it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HeadOutput",
    "FeatureProjection",
    "FeatureBalancingHead",
    "ClassDivisionHead",
    "NormedLinear",
    "channels_per_class",
]


class HeadOutput(NamedTuple):
    logits: torch.Tensor  # [B, K] main classifier (K = C when there is no class-division head)
    fbh: torch.Tensor | None  # [B, C] feature-balancing-head logits z_i (Eq. 1), or None


def channels_per_class(in_channels: int, num_classes: int, feature_proj: str = "auto") -> tuple[int, bool]:
    """(m, needs_projection): the FBH group width m = D'/C and whether a 1x1 projection is inserted."""
    if feature_proj == "none":
        if in_channels % num_classes:
            from .config import ConfigError

            raise ConfigError(
                f"model.feature_proj=none needs D % C == 0, got D={in_channels}, C={num_classes}; "
                "use feature_proj=auto or an integer m"
            )
        return in_channels // num_classes, False
    if feature_proj == "auto":
        if in_channels % num_classes == 0:
            return in_channels // num_classes, False
        return max(1, math.ceil(in_channels / num_classes)), True
    m = int(feature_proj)
    return m, m * num_classes != in_channels


class FeatureProjection(nn.Sequential):
    """1x1 conv + BN + ReLU from D to m*C channels (only when D is not a multiple of C)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FeatureBalancingHead(nn.Module):
    """Eq. 1: z_c = GAP(F_c * K_c) for every class c, as one group convolution (groups = C).

    Channel group c = channels [c*m, (c+1)*m) feeds only logit c, so the gradient of z_c reaches only those
    channels (tested). No bias: Eq. 1 has none.
    """

    def __init__(self, num_classes: int, channels_per_class: int, kernel_size: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(
            num_classes * channels_per_class,
            num_classes,
            kernel_size,
            padding=kernel_size // 2,
            groups=num_classes,
            bias=False,
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv(feats).mean(dim=(2, 3))


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW (``NormedLinear``): logits are cosines in [-1, 1]; LDAM scales them by s."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)

    def rows(self) -> torch.Tensor:
        return self.weight.t()


class ClassDivisionHead(nn.Module):
    """A K-way classifier over the clusters (Sec. 2.2), applied to globally average-pooled features [B, D];
    K = C gives the ordinary classifier."""

    def __init__(self, in_channels: int, num_outputs: int, normed: bool = False):
        super().__init__()
        self.fc = NormedLinear(in_channels, num_outputs) if normed else nn.Linear(in_channels, num_outputs)
        self.normed = normed

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)

    def weight_rows(self) -> torch.Tensor:
        """[K, D] classifier weights, one row per output (for the per-class weight norms of Fig. 3)."""
        return self.fc.rows() if isinstance(self.fc, NormedLinear) else self.fc.weight
