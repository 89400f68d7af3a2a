"""The training step: one SGD step of L = L2 + lambda L1 equals the same step written out by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from twohead.augment import normalize
from twohead.config import load_config
from twohead.division import DivisionPlan, soft_label_matrix
from twohead.loop import build_training
from twohead.step import Step

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _setup(method: str):
    cfg = load_config(
        overrides={
            "method.name": method,
            "method.u": 3,
            "model.backbone": "resnet8",
            "optim.device": "cpu",
            "optim.warmup_epochs": 0,
            "model.channels_last": False,
        }
    )
    counts = [30, 10, 4]
    plan = DivisionPlan.from_counts(counts, 3) if cfg.spec.cdh else DivisionPlan.identity(3)
    model, criterion, opt = build_training(cfg, counts, plan, torch.device("cpu"), 16)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    k = torch.tensor([0, 2, 3, 4, 5, 5]) if cfg.spec.cdh else y.clone()  # clusters: class 0 -> 0..2, 1 -> 3..4, 2 -> 5
    return cfg, plan, model, criterion, opt, x, y, k


@pytest.mark.parametrize("method", ["twohead", "ce", "fbh_only", "cdh_only"])
def test_an_eager_step_is_the_hand_written_sgd_step(method):
    cfg, plan, model, criterion, opt, x, y, k = _setup(method)
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=opt.param_groups[0]["lr"], momentum=0.9, weight_decay=2e-4)
    step = Step(model, criterion, opt, cfg, MEAN, STD, torch.device("cpu"), None, graphs=False)
    loss = step(x, y, k, augment=False)

    out = ref_model(normalize(x, MEAN, STD, channels_last=False))
    if cfg.spec.cdh:  # Eq. 4: soft targets q = alpha on the own cluster, (1 - alpha) / (u_c - 1) on its siblings
        q = soft_label_matrix(plan, cfg.method.alpha)[k]
        want = -(q * out.logits.log_softmax(1)).sum(1).mean()
    else:
        want = F.cross_entropy(out.logits, y)
    if cfg.spec.fbh:  # Eq. 2, weighted by lambda
        want = want + cfg.method.lam * F.cross_entropy(out.fbh, y)
    ref_opt.zero_grad()
    want.backward()
    ref_opt.step()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a CUDA device")
def test_a_captured_step_replays_the_eager_steps():
    cfg, _plan, model, criterion, opt, x, y, k = _setup("twohead")
    dev = torch.device("cuda")
    model.to(dev)
    criterion.to(dev)
    twin, twin_opt = copy.deepcopy(model), None
    twin_opt = torch.optim.SGD(twin.parameters(), lr=opt.param_groups[0]["lr"], momentum=0.9, weight_decay=2e-4)
    x, y, k = x.to(dev), y.to(dev), k.to(dev)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"batch_size": len(y)})})
    graphed = Step(model, criterion, opt, cfg, MEAN, STD, dev, None, graphs=True)
    eager = Step(twin, copy.deepcopy(criterion), twin_opt, cfg, MEAN, STD, dev, None, graphs=False)
    for _ in range(3):
        a, b = graphed(x, y, k, augment=False), eager(x, y, k, augment=False)
        assert graphed.graph is not None and a.item() == pytest.approx(b.item(), rel=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
