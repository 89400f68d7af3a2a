"""Losses against hand computations on tiny batches (explicit math.exp / math.log, not the torch op under test)."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from twohead.config import TrainConfig, apply_overrides
from twohead.losses import (
    CELoss,
    FocalLoss,
    LDAMLoss,
    TwoHeadLoss,
    build_criterion,
    effective_number_weights,
    ldam_margins,
    mixup_batch,
    mixup_loss,
    sample_beta,
)

try:
    from twohead.heads import HeadOutput
except ImportError:  # the heads module lands separately; same shape as its HeadOutput

    class HeadOutput(NamedTuple):  # type: ignore[no-redef]
        logits: torch.Tensor
        fbh: torch.Tensor | None


# --------------------------------------------------------------------------------------------
# Hand-computation helpers (pure Python floats)
# --------------------------------------------------------------------------------------------
def log_softmax_row(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ce_row(z: list[float], y: int) -> float:
    return -log_softmax_row(z)[y]


def soft_ce_row(z: list[float], q: list[float]) -> float:
    lp = log_softmax_row(z)
    return -sum(qi * li for qi, li in zip(q, lp))


def soft_label_rows(u_per_class: list[int], alpha: float) -> list[list[float]]:
    """Sec. 2.2's soft labels written out: alpha on the own cluster, (1-alpha)/(u_c-1) on the class's others."""
    K = sum(u_per_class)
    rows, start = [], 0
    for u in u_per_class:
        for j in range(u):
            row = [0.0] * K
            for i in range(u):
                row[start + i] = 1.0 if u == 1 else (alpha if i == j else (1 - alpha) / (u - 1))
            rows.append(row)
        start += u
    return rows


def cfg_for(name: str, **method) -> TrainConfig:
    return apply_overrides(TrainConfig(), {"method.name": name, **{f"method.{k}": v for k, v in method.items()}})


LOGITS = [[2.0, 1.0, 0.0], [0.5, 0.5, -1.0], [-0.3, 1.2, 0.7]]
LABELS = [0, 2, 1]


def out_of(logits: list[list[float]], fbh: list[list[float]] | None = None) -> HeadOutput:
    return HeadOutput(
        logits=torch.tensor(logits, requires_grad=True),
        fbh=None if fbh is None else torch.tensor(fbh, requires_grad=True),
    )


# --------------------------------------------------------------------------------------------
# CE, focal, LDAM
# --------------------------------------------------------------------------------------------
def test_ce_matches_hand_computation():
    crit = CELoss(3)
    loss = crit(out_of(LOGITS), torch.tensor(LABELS), None)
    expected = sum(ce_row(z, y) for z, y in zip(LOGITS, LABELS)) / len(LABELS)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()  # differentiable end to end


def test_weighted_mean_equals_cross_entropy_weight_and_hand_formula():
    counts = [50, 5, 1]
    crit = build_criterion(cfg_for("cb", cb_beta=0.9), counts)
    w = crit.class_weight
    assert not torch.allclose(w, torch.ones(3))  # CB re-weights from epoch 0
    out, y = out_of(LOGITS), torch.tensor(LABELS)
    loss = crit(out, y, None)
    torch.testing.assert_close(loss, F.cross_entropy(out.logits, y, weight=w))
    wl = [w[c].item() for c in LABELS]
    expected = sum(wi * ce_row(z, c) for wi, z, c in zip(wl, LOGITS, LABELS)) / sum(wl)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ce_rejects_cluster_logits():
    with pytest.raises(ValueError, match=r"out.logits has shape \(3, 4\); expected \[B, 3\]"):
        CELoss(3)(out_of([[0.0] * 4] * 3), torch.tensor(LABELS), None)


def test_focal_matches_hand_computation():
    gamma = 2.0
    loss = FocalLoss(3, gamma=gamma)(out_of(LOGITS), torch.tensor(LABELS), None)
    per = []
    for z, y in zip(LOGITS, LABELS):
        log_p = log_softmax_row(z)[y]
        per.append(-((1 - math.exp(log_p)) ** gamma) * log_p)
    assert loss.item() == pytest.approx(sum(per) / len(per), rel=1e-6)


def test_focal_gamma_from_config_and_finite_gradient_on_confident_samples():
    crit = build_criterion(cfg_for("focal", focal_gamma=0.5), [10, 5, 1])
    assert isinstance(crit, FocalLoss) and crit.gamma == 0.5
    out = out_of([[60.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # sample 0: p_t == 1 in float32
    loss = crit(out, torch.tensor([0, 2]), None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.logits.grad).all()


def test_ldam_margins_rarest_class_gets_max_m():
    counts = [100, 10, 1]
    m = ldam_margins(counts, max_m=0.4)
    assert m[2].item() == pytest.approx(0.4)
    assert m.argmax().item() == 2
    for c, n in enumerate(counts):  # proportional to n^(-1/4)
        assert m[c].item() == pytest.approx(0.4 * n**-0.25 / 1**-0.25, rel=1e-6)


def test_ldam_matches_hand_computation():
    counts, max_m, s = [16, 4, 1], 0.5, 10.0
    crit = build_criterion(cfg_for("ldam", ldam_max_m=max_m, ldam_s=s), counts)
    assert isinstance(crit, LDAMLoss)
    cos = [[0.9, 0.1, -0.2], [0.3, 0.4, 0.2], [-0.1, 0.5, 0.45]]
    loss = crit(out_of(cos), torch.tensor(LABELS), None)
    margins = [max_m * n**-0.25 / min(counts) ** -0.25 for n in counts]  # 0.125, 0.25, 0.5
    per = []
    for z, y in zip(cos, LABELS):
        shifted = [s * (v - (margins[y] if j == y else 0.0)) for j, v in enumerate(z)]
        per.append(ce_row(shifted, y))
    assert loss.item() == pytest.approx(sum(per) / len(per), rel=1e-6)


# --------------------------------------------------------------------------------------------
# Effective number and (deferred) re-weighting
# --------------------------------------------------------------------------------------------
def test_effective_number_weights_formula():
    counts, beta = [4, 2, 1], 0.5
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [r / sum(raw) * len(counts) for r in raw]
    w = effective_number_weights(counts, beta)
    assert w.dtype == torch.float32 and w.shape == (3,)
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    assert w.sum().item() == pytest.approx(3.0)
    assert effective_number_weights(counts, 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("name", ["ldam_drw", "twohead_full"])
def test_drw_switches_in_place_at_drw_epoch(name):
    counts = [100, 10, 1]
    eye = torch.eye(3)
    crit = build_criterion(cfg_for(name, drw_epoch=3, cb_beta=0.99), counts, soft_labels=eye)
    buf, ptr = crit.class_weight, crit.class_weight.data_ptr()
    for epoch in range(3):
        crit.set_epoch(epoch)
        assert crit.class_weight.tolist() == [1.0, 1.0, 1.0], f"epoch {epoch} is before drw_epoch"
    crit.set_epoch(3)
    expected = effective_number_weights(counts, 0.99)
    torch.testing.assert_close(crit.class_weight, expected)
    assert crit.class_weight is buf and crit.class_weight.data_ptr() == ptr
    assert "class_weight" in dict(crit.named_buffers())
    crit.set_epoch(0)  # resuming / re-running an earlier epoch goes back to ones
    assert crit.class_weight.tolist() == [1.0, 1.0, 1.0] and crit.class_weight is buf


def test_non_deferred_reweighting_starts_at_epoch_zero_and_plain_methods_never():
    counts = [100, 10, 1]
    cb = build_criterion(cfg_for("cb_focal", drw_epoch=5, cb_beta=0.99), counts)
    torch.testing.assert_close(cb.class_weight, effective_number_weights(counts, 0.99))
    for name in ("ce", "focal", "ldam", "mixup", "twohead", "fbh_only", "cdh_only"):
        crit = build_criterion(cfg_for(name, drw_epoch=2), counts, soft_labels=torch.eye(3))
        for epoch in (0, 2, 500):
            crit.set_epoch(epoch)
            assert crit.class_weight.tolist() == [1.0, 1.0, 1.0], (name, epoch)
    with pytest.raises(ValueError, match="epoch=-1"):
        cb.set_epoch(-1)


# --------------------------------------------------------------------------------------------
# The two-head loss L = L2 + lambda * L1 and its ablations
# --------------------------------------------------------------------------------------------
U = [3, 1, 1]  # class 0 split into 3 clusters: K = 5, C = 3
CLUSTER_LOGITS = [[1.0, 0.2, -0.5, 0.3, 0.0], [0.1, 0.9, 0.4, -1.0, 0.2], [-0.2, 0.0, 0.1, 0.3, 1.5]]
FBH_LOGITS = [[0.7, -0.1, 0.2], [1.1, 0.3, -0.4], [0.0, 0.2, 0.9]]
Y2 = [0, 0, 2]  # class labels
K2 = [0, 1, 4]  # global cluster ids (clusters 0..2 belong to class 0, 3 to class 1, 4 to class 2)


def test_l2_soft_label_cross_entropy_matches_eq4():
    q = soft_label_rows(U, alpha=0.5)
    crit = build_criterion(cfg_for("cdh_only", alpha=0.5), [30, 5, 2], soft_labels=torch.tensor(q))
    loss = crit(out_of(CLUSTER_LOGITS), torch.tensor(Y2), torch.tensor(K2))
    expected = sum(soft_ce_row(z, q[k]) for z, k in zip(CLUSTER_LOGITS, K2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # alpha = 0.5 really spreads mass over the class's other clusters (differs from hard CE)
    assert expected != pytest.approx(sum(ce_row(z, k) for z, k in zip(CLUSTER_LOGITS, K2)) / 3, rel=1e-3)


def test_l2_with_alpha_one_is_hard_cross_entropy_on_clusters():
    q = torch.tensor(soft_label_rows(U, alpha=1.0))
    crit = TwoHeadLoss(3, q, lam=0.0, fbh=False)
    out, k = out_of(CLUSTER_LOGITS), torch.tensor(K2)
    torch.testing.assert_close(crit(out, torch.tensor(Y2), k), F.cross_entropy(out.logits, k))


def test_two_head_loss_is_l2_plus_lambda_l1():
    lam = 1.5
    q = soft_label_rows(U, alpha=0.5)
    crit = build_criterion(cfg_for("twohead", lam=lam), [30, 5, 2], soft_labels=torch.tensor(q))
    out = out_of(CLUSTER_LOGITS, FBH_LOGITS)
    loss = crit(out, torch.tensor(Y2), torch.tensor(K2))
    l2 = sum(soft_ce_row(z, q[k]) for z, k in zip(CLUSTER_LOGITS, K2)) / 3
    l1 = sum(ce_row(z, y) for z, y in zip(FBH_LOGITS, Y2)) / 3
    assert loss.item() == pytest.approx(l2 + lam * l1, rel=1e-6)
    loss.backward()
    assert out.fbh.grad is not None and out.fbh.grad.abs().sum() > 0  # L1 trains the FBH


def test_fbh_only_is_plain_ce_plus_lambda_l1():
    lam = 0.7
    crit = build_criterion(cfg_for("fbh_only", lam=lam), [30, 5, 2])
    loss = crit(out_of(LOGITS, FBH_LOGITS), torch.tensor(LABELS), torch.tensor(LABELS))
    ce = sum(ce_row(z, y) for z, y in zip(LOGITS, LABELS)) / 3
    l1 = sum(ce_row(z, y) for z, y in zip(FBH_LOGITS, LABELS)) / 3
    assert loss.item() == pytest.approx(ce + lam * l1, rel=1e-6)


def test_fbh_term_skipped_when_lambda_zero_and_required_otherwise():
    q = torch.tensor(soft_label_rows(U, alpha=0.5))
    no_l1 = build_criterion(cfg_for("twohead", lam=0.0), [30, 5, 2], soft_labels=q)
    out = out_of(CLUSTER_LOGITS, None)  # no FBH logits needed when lambda == 0
    only_l2 = build_criterion(cfg_for("cdh_only"), [30, 5, 2], soft_labels=q)
    y, k = torch.tensor(Y2), torch.tensor(K2)
    torch.testing.assert_close(no_l1(out, y, k), only_l2(out, y, k))
    with_l1 = build_criterion(cfg_for("twohead", lam=1.5), [30, 5, 2], soft_labels=q)
    with pytest.raises(ValueError, match="out.fbh is None"):
        with_l1(out, y, k)
    with pytest.raises(ValueError, match="cluster ids k"):
        with_l1(out_of(CLUSTER_LOGITS, FBH_LOGITS), y, None)


def test_class_weights_apply_to_both_terms():
    lam, beta = 1.5, 0.9
    counts = [30, 5, 2]
    q = soft_label_rows(U, alpha=0.5)
    crit = build_criterion(cfg_for("twohead_full", lam=lam, drw_epoch=1, cb_beta=beta), counts, torch.tensor(q))
    crit.set_epoch(1)
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    w = [r / sum(raw) * 3 for r in raw]
    loss = crit(out_of(CLUSTER_LOGITS, FBH_LOGITS), torch.tensor(Y2), torch.tensor(K2))
    num = sum(w[y] * (soft_ce_row(zc, q[k]) + lam * ce_row(zf, y)) for zc, zf, y, k in zip(CLUSTER_LOGITS, FBH_LOGITS, Y2, K2))
    assert loss.item() == pytest.approx(num / sum(w[y] for y in Y2), rel=1e-5)


def test_soft_labels_validated():
    with pytest.raises(ValueError, match="square"):
        TwoHeadLoss(3, torch.ones(3, 4) / 4)
    bad = torch.eye(4)
    bad[2, 2] = 0.5
    with pytest.raises(ValueError, match="row 2"):
        TwoHeadLoss(3, bad)
    with pytest.raises(ValueError, match="K=2 clusters, fewer than num_classes=3"):
        TwoHeadLoss(3, torch.eye(2))


# --------------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------------
def test_mixup_with_lam_one_is_the_plain_loss():
    q = torch.tensor(soft_label_rows(U, alpha=0.5))
    crit = build_criterion(cfg_for("twohead"), [30, 5, 2], soft_labels=q)
    out = out_of(CLUSTER_LOGITS, FBH_LOGITS)
    a = (torch.tensor(Y2), torch.tensor(K2))
    b = (torch.tensor([2, 1, 0]), torch.tensor([4, 3, 2]))
    plain = crit(out, *a)
    torch.testing.assert_close(mixup_loss(crit, out, a, b, torch.tensor(1.0)), plain)
    lam = 0.3
    mixed = mixup_loss(crit, out, a, b, lam)
    assert mixed.item() == pytest.approx(lam * plain.item() + (1 - lam) * crit(out, *b).item(), rel=1e-6)


def test_mixup_batch_is_a_convex_combination_with_consistent_targets():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 4, 4, generator=g)
    y = torch.arange(8)  # unique labels reveal the permutation
    k = torch.arange(8) + 100
    x_mixed, (ya, ka), (yb, kb), lam = mixup_batch(x, y, k, alpha=1.0, generator=g)
    assert lam.ndim == 0 and lam.dtype == torch.float32 and lam.device == x.device
    assert 0.0 < lam.item() < 1.0
    assert torch.equal(ya, y) and torch.equal(ka, k)
    assert sorted(yb.tolist()) == list(range(8)) and torch.equal(kb, yb + 100)
    torch.testing.assert_close(x_mixed, lam * x + (1 - lam) * x[yb])
    # the same generator state reproduces the batch
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    r1, r2 = mixup_batch(x, y, None, 0.4, generator=g1), mixup_batch(x, y, None, 0.4, generator=g2)
    assert torch.equal(r1[0], r2[0]) and r1[2][1] is None


@pytest.mark.parametrize("alpha", [1.0, 0.2])
def test_mixup_lambda_follows_beta(alpha):
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_beta(alpha, "cpu", g) for _ in range(3000)])
    var = alpha * alpha / ((2 * alpha) ** 2 * (2 * alpha + 1))  # Beta(a, a): mean 1/2
    assert draws.mean().item() == pytest.approx(0.5, abs=0.03)
    assert draws.var().item() == pytest.approx(var, rel=0.1)


def test_mixup_rejects_uint8_images_and_bad_alpha():
    with pytest.raises(ValueError, match="floating-point"):
        mixup_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), None, 1.0)
    with pytest.raises(ValueError, match="alpha=0"):
        sample_beta(0.0, "cpu")


# --------------------------------------------------------------------------------------------
# build_criterion
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ce", CELoss),
        ("cb", CELoss),
        ("mixup", CELoss),
        ("focal", FocalLoss),
        ("cb_focal", FocalLoss),
        ("ldam", LDAMLoss),
        ("ldam_drw", LDAMLoss),
        ("twohead", TwoHeadLoss),
        ("fbh_only", TwoHeadLoss),
        ("cdh_only", TwoHeadLoss),
        ("twohead_full", TwoHeadLoss),
    ],
)
def test_build_criterion_picks_the_method_loss(name, cls):
    crit = build_criterion(cfg_for(name), [30, 5, 2], soft_labels=torch.tensor(soft_label_rows(U, 0.5)))
    assert type(crit) is cls and crit.num_classes == 3


@pytest.mark.parametrize("name", ["twohead", "cdh_only", "twohead_full"])
def test_build_criterion_requires_soft_labels_for_cdh(name):
    with pytest.raises(ValueError, match=rf"method '{name}' has the class-division head and needs soft_labels"):
        build_criterion(cfg_for(name), [30, 5, 2])


def test_build_criterion_validates_class_counts():
    with pytest.raises(ValueError, match=r"class_counts\[1\]=0 is invalid"):
        build_criterion(cfg_for("ce"), [30, 0, 2])
    with pytest.raises(ValueError, match="1-D"):
        build_criterion(cfg_for("ce"), [[30, 5]])
    with pytest.raises(ValueError, match="1-D"):
        build_criterion(cfg_for("ce"), [])
