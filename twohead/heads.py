"""The two heads of the paper (Fig. 2) and the K-to-C inference map.

* :class:`FeatureBalancingHead` (Sec. 2.1, Eq. 1): the D-channel feature map is split into C equal groups;
  group c is convolved with its own kernel K_c (all C convolutions are ONE group convolution with
  ``groups=C``), then global average pooling gives the C logits z_i trained with L1 = CE (Eq. 2).
* :class:`ClassDivisionHead` (Sec. 2.2): global average pooling and a K-way classifier over the K clusters.
* :class:`FeatureProjection`: the paper assumes D is a multiple of C ("without loss of generality"); ResNet-32
  has D = 64 with C = 10 or 100. When it is not, a 1x1 conv + BN + ReLU maps D to m*C channels,
  m = max(1, ceil(D / C)), at the end of the feature extractor, so BOTH heads read the balanced features.
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
    "clusters_to_classes",
]


class HeadOutput(NamedTuple):
    logits: torch.Tensor  # [B, K] main classifier (K = C when there is no class-division head)
    fbh: torch.Tensor | None  # [B, C] feature-balancing-head logits z_i (Eq. 1), or None


def channels_per_class(in_channels: int, num_classes: int, feature_proj: str = "auto") -> tuple[int, bool]:
    """(m, needs_projection): the FBH group width m = D'/C and whether a 1x1 projection is inserted."""
    if feature_proj == "none":
        if in_channels % num_classes:
            raise ValueError(
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
    """GAP + a K-way classifier over the clusters (Sec. 2.2); K = C gives the ordinary classifier."""

    def __init__(self, in_channels: int, num_outputs: int, normed: bool = False):
        super().__init__()
        self.fc = NormedLinear(in_channels, num_outputs) if normed else nn.Linear(in_channels, num_outputs)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def weight_rows(self) -> torch.Tensor:
        """[K, D] classifier weights, one row per output (for the per-class weight norms of Fig. 3)."""
        return self.fc.rows() if isinstance(self.fc, NormedLinear) else self.fc.weight


def clusters_to_classes(
    logits: torch.Tensor,
    class_map: torch.Tensor,
    num_classes: int,
    mode: str = "sum",
    fbh: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class probabilities [B, C] from the K cluster logits (the test-time K-to-C map, Sec. 2.2).

    ``class_map`` is a [K, C] one-hot float matrix (cluster k belongs to class c).
    * ``sum``: softmax over the K clusters, then the probabilities of each class's clusters are summed.
    * ``max``: each class scores its best cluster logit; softmax over the C scores.
    * ``fuse``: the ``sum`` probabilities averaged with the FBH softmax (the auxiliary head as an ensemble).
    """
    logits = logits.float()
    if mode == "max":
        idx = class_map.argmax(dim=1).expand(logits.shape[0], -1)
        scores = logits.new_full((logits.shape[0], num_classes), float("-inf"))
        scores = scores.scatter_reduce(1, idx, logits, reduce="amax", include_self=True)
        return scores.softmax(dim=1)
    probs = logits.softmax(dim=1) @ class_map
    if mode == "fuse" and fbh is not None:
        probs = 0.5 * (probs + fbh.float().softmax(dim=1))
    return probs
