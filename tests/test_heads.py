"""Feature-balancing head isolation (Eq. 1), the projection choice, the K-to-C map and the assembled model."""
from __future__ import annotations

import pytest
import torch

from twohead.config import apply_overrides, TrainConfig
from twohead.division import DivisionPlan
from twohead.heads import FeatureBalancingHead, channels_per_class, clusters_to_classes
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
            torch.nn.functional.conv2d(feats[:, c * m : (c + 1) * m], head.conv.weight[c : c + 1], padding=k // 2).mean(dim=(1, 2, 3))
            for c in range(C)
        ],
        dim=1,
    )
    assert torch.allclose(head(feats), want, atol=1e-6)


@pytest.mark.parametrize(
    "D,C,mode,want",
    [(64, 10, "auto", (7, True)), (64, 100, "auto", (1, True)), (64, 16, "auto", (4, False)),
     (2048, 1000, "auto", (3, True)), (64, 8, "none", (8, False)), (64, 10, "2", (2, True))],
)
def test_channels_per_class(D, C, mode, want):
    assert channels_per_class(D, C, mode) == want


def test_feature_proj_none_rejects_non_multiple():
    with pytest.raises(ValueError, match="D % C == 0"):
        channels_per_class(64, 10, "none")


def test_k_to_c_sum_max_fuse():
    plan = DivisionPlan((2, 1))
    cmap = torch.nn.functional.one_hot(torch.as_tensor(plan.cluster_to_class), 2).float()
    logits = torch.tensor([[2.0, 0.0, 1.0]])
    p = logits.softmax(1)[0]
    s = clusters_to_classes(logits, cmap, 2, "sum")
    assert torch.allclose(s[0], torch.stack([p[0] + p[1], p[2]]))
    mx = clusters_to_classes(logits, cmap, 2, "max")
    assert torch.allclose(mx[0], torch.tensor([2.0, 1.0]).softmax(0))
    fbh = torch.tensor([[0.0, 3.0]])
    f = clusters_to_classes(logits, cmap, 2, "fuse", fbh)
    assert torch.allclose(f, 0.5 * (s + fbh.softmax(1)))
    assert torch.allclose(s.sum(1), torch.ones(1))


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
    cfg = apply_overrides(TrainConfig(), {"method.name": "ce", "model.backbone": "resnet18", "data.dataset": "folder",
                                         "data.path": "/x"})
    assert create_model(cfg, [5, 3], image_size=96).backbone.conv1.stride == (2, 2)  # ImageNet stem kept
    assert create_model(cfg, [5, 3]).backbone.conv1.stride == (1, 1)  # nominal 32 px: small-input stem
