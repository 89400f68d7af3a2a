"""The learning-rate schedule: the value of every epoch and where that value comes from.

Paper Sec. 3.1: "the initial learning rate was 0.1 and decayed by 0.01 at the 120th and 160th epoch" (CIFAR,
Tiny-ImageNet); "0.2 and decayed by a cosine schedule" (ImageNet-LT). The sentence is BBN's recipe, and BBN's code
(``configs/cifar10.yaml``: ``LR_FACTOR: 0.01`` with ``WarmupMultiStepLR``) multiplies the rate by 0.01 at *each*
milestone: 0.1 -> 1e-3 -> 1e-5. LDAM-DRW's CIFAR code does the same (``lr * 0.01`` after epoch 160, ``lr * 0.0001``
after 180). Both warm up linearly over the first 5 epochs, which the paper does not mention.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["lr_at", "explain_lr", "first_decay_epoch"]


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: linear warm-up (LDAM-DRW / BBN: ``lr * (e + 1) / warmup``), then
    ``lr * lr_gamma ** (milestones passed)`` (step) or a cosine from ``lr`` to 0 (Loshchilov & Hutter)."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return o.lr * (epoch + 1) / o.warmup_epochs
    if o.schedule == "cosine":
        t = (epoch - o.warmup_epochs) / max(1, o.epochs - o.warmup_epochs)
        return 0.5 * o.lr * (1.0 + math.cos(math.pi * t))
    return o.lr * o.lr_gamma ** sum(epoch >= m for m in o.milestones)


def explain_lr(cfg: TrainConfig, epoch: int) -> str:
    """One line saying how :func:`lr_at` arrives at ``epoch``'s value and which source each factor follows."""
    o = cfg.optim
    paper_lr = (o.schedule == "step" and o.lr == 0.1) or (o.schedule == "cosine" and o.lr == 0.2)
    base = f"optim.lr={o.lr:g} " + ("(paper Sec. 3.1)" if paper_lr else "(set here; the paper: 0.1 CIFAR/Tiny, 0.2 ImageNet-LT)")
    if epoch < o.warmup_epochs:
        why = (
            "warm-up not in the paper; LDAM-DRW and BBN warm up linearly for 5 epochs"
            if o.warmup_epochs == 5
            else "optim.warmup_epochs set here"
        )
        return f"linear warm-up {epoch + 1}/{o.warmup_epochs} of optim.lr={o.lr:g}: {why}"
    if o.schedule == "cosine":
        return f"cosine from {base} to 0 over epochs {o.warmup_epochs}..{o.epochs - 1} (paper Sec. 3.1, ImageNet-LT)"
    passed = [m for m in o.milestones if epoch >= m]
    if not passed:
        return base + (f", until milestone {o.milestones[0]}" if o.milestones else "")
    why = (
        "paper Sec. 3.1 'decayed by 0.01 at the 120th and 160th epoch'; BBN's LR_FACTOR 0.01 applies it at each milestone"
        if o.lr_gamma == 0.01
        else "set here; the paper's recipe is 0.01 per milestone"
    )
    return f"{base} x optim.lr_gamma={o.lr_gamma:g} per milestone passed ({', '.join(map(str, passed))}): {why}"


def first_decay_epoch(cfg: TrainConfig) -> int:
    """The first epoch after the learning rate leaves its peak: the first milestone (step schedule), or two thirds
    into a cosine schedule. Test accuracy is tracked from here on when ``run.test_curve`` is set."""
    o = cfg.optim
    if o.schedule == "step" and o.milestones:
        return min(int(o.milestones[0]), o.epochs - 1)
    return max(o.warmup_epochs, (2 * o.epochs) // 3)
