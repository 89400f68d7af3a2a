"""Feature-balancing head isolation (Eq. 1), the projection choice, the K-to-C map and the assembled model."""

from __future__ import annotations

import pytest
import torch

from twohead.config import ConfigError, TrainConfig, apply_overrides
from twohead.division import DivisionPlan
from twohead.heads import FeatureBalancingHead, channels_per_class
from twohead.model import TwoHeadModel, create_model


def test_fbh_gradient_reaches_only_its_group():
    C, m = 5, 3
    head = FeatureBalancingHead(C, m, kernel_size=3)
    feats = torch.randn(2, C * m, 6, 6, requires_grad=True)
    z = head(feats)
    assert z.shape == (2, C)
    for c in range(C):
        (g,) = torch.autograd.grad(z[:, c].sum(), feats, retain_graph=True)
        per_channel = g.abs().sum(dim=(0, 2, 3))
        inside = per_channel[c * m : (c + 1) * m]
        outside = torch.cat([per_channel[: c * m], per_channel[(c + 1) * m :]])
        assert (inside > 0).all() and torch.count_nonzero(outside) == 0


def test_fbh_equals_per_class_convolution_then_gap():
    C, m, k = 3, 2, 3
    head = FeatureBalancingHead(C, m, kernel_size=k)
    feats = torch.randn(4, C * m, 5, 5)
    want = torch.stack(
        [
            torch.nn.functional.conv2d(feats[:, c * m : (c + 1) * m], head.conv.weight[c : c + 1], padding=k // 2).mean(
                dim=(1, 2, 3)
            )
            for c in range(C)
        ],
        dim=1,
    )
    assert torch.allclose(head(feats), want, atol=1e-6)


@pytest.mark.parametrize(
    "D,C,mode,want",
    [
        (64, 10, "auto", (7, True)),
        (64, 100, "auto", (1, True)),
        (64, 16, "auto", (4, False)),
        (2048, 1000, "auto", (3, True)),
        (64, 8, "none", (8, False)),
        (64, 10, "2", (2, True)),
    ],
)
def test_channels_per_class(D, C, mode, want):
    assert channels_per_class(D, C, mode) == want


def test_feature_proj_none_rejects_non_multiple():
    with pytest.raises(ConfigError, match=r"model.feature_proj=none needs D % C == 0, got D=64, C=10; use feature_proj=auto"):
        channels_per_class(64, 10, "none")


class TinyBackbone(torch.nn.Module):
    out_channels = 12

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_model_shapes_and_projection():
    plan = DivisionPlan((3, 2, 1, 1, 1))
    model = TwoHeadModel(TinyBackbone(), plan, fbh=True)  # D=12, C=5 -> m=3, projection to 15 channels
    out = model(torch.randn(2, 3, 8, 8))
    assert out.logits.shape == (2, 8) and out.fbh.shape == (2, 5)
    assert model.classifier_weight().shape == (8, 15)
    assert torch.allclose(model.predict_proba(torch.randn(2, 3, 8, 8)).sum(1), torch.ones(2), atol=1e-5)
    plain = TwoHeadModel(TinyBackbone(), DivisionPlan.identity(4), fbh=False)
    o = plain(torch.randn(2, 3, 8, 8))
    assert o.fbh is None and o.logits.shape == (2, 4)


@pytest.mark.parametrize("method", ["ce", "twohead", "ldam_drw", "fbh_only", "cdh_only"])
def test_create_model_per_method(method):
    counts = [500, 200, 80, 30, 10]
    cfg = apply_overrides(TrainConfig(), {"method.name": method, "method.u": 4})
    model = create_model(cfg, counts)
    out = model(torch.randn(2, 3, 32, 32))
    K = 4 + 3 + 2 + 2 + 1 if cfg.spec.cdh else 5  # Eq. 3 for these counts
    assert out.logits.shape == (2, K)
    assert (out.fbh is not None) == cfg.spec.fbh


def test_create_model_takes_the_data_resolution():
    """A folder / Parquet dataset knows its image size (LTData.image_size); the backbone stem follows it."""
    cfg = apply_overrides(
        TrainConfig(), {"method.name": "ce", "model.backbone": "resnet18", "data.dataset": "folder", "data.path": "/x"}
    )
    assert create_model(cfg, [5, 3], image_size=96).backbone.conv1.stride == (2, 2)  # ImageNet stem kept
    assert create_model(cfg, [5, 3]).backbone.conv1.stride == (1, 1)  # nominal 32 px: small-input stem


def test_ablation_rows_share_one_architecture():
    """Table 4: FBH only, CDH only and both read the same projected features (ResNet-32: D = 64 -> 7 x 10 = 70)."""
    counts = [500, 200, 80, 30, 20, 15, 12, 10, 9, 8]
    models = {
        m: create_model(apply_overrides(TrainConfig(), {"method.name": m}), counts)
        for m in ("fbh_only", "cdh_only", "twohead", "ce")
    }
    for m in ("fbh_only", "cdh_only", "twohead"):
        proj = models[m].proj
        assert isinstance(proj, torch.nn.Sequential) and proj[0].in_channels == 64 and proj[0].out_channels == 70, m
        assert models[m].cdh.fc.in_features == 70, m
    assert models["fbh_only"].fbh is not None and models["cdh_only"].fbh is None
    shared = {k: v.shape for k, v in models["cdh_only"].state_dict().items() if not k.startswith(("cdh.", "fbh."))}
    for m in ("fbh_only", "twohead"):
        assert {k: v.shape for k, v in models[m].state_dict().items() if not k.startswith(("cdh.", "fbh."))} == shared
    assert isinstance(models["ce"].proj, torch.nn.Identity) and models["ce"].cdh.fc.in_features == 64  # plain CE row
