"""Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") as a wrapper around any criterion.

    x, a, b, lam = mixup_batch(x, y, k, alpha)
    loss = mixup_loss(criterion, model(x), a, b, lam)

Everything stays on ``x``'s device: ``lam`` is a 0-dim tensor drawn there (no ``.item()``), and the
permutation is ``torch.randperm`` on the device, so the step can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from twohead.heads import HeadOutput

__all__ = ["mixup_batch", "mixup_loss", "sample_beta"]

Targets = tuple[torch.Tensor, "torch.Tensor | None"]


def sample_beta(alpha: float, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of Beta(alpha, alpha) as a float32 0-dim tensor on ``device`` (no host sync).

    Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b); ``torch._standard_gamma`` is the op
    ``torch.distributions.Gamma`` samples with, called directly because it takes a ``generator``.
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha={alpha} must be > 0")
    g = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float32, device=device), generator=generator)
    return g[0] / g.sum()


def mixup_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    k: torch.Tensor | None,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Targets, Targets, torch.Tensor]:
    """Mix each sample with a random partner of the same batch.

    Returns ``(lam * x + (1 - lam) * x[perm], (y, k), (y[perm], k[perm]), lam)`` with
    ``lam ~ Beta(alpha, alpha)`` a 0-dim float32 tensor on ``x``'s device. ``k`` (cluster ids) may be
    ``None`` for methods without the class-division head. ``generator`` must live on ``x``'s device.
    """
    if not x.is_floating_point():
        raise ValueError(f"mixup needs floating-point (normalised) images, got dtype {x.dtype}")
    if y.shape[0] != x.shape[0] or (k is not None and k.shape[0] != x.shape[0]):
        raise ValueError(f"mixup batch sizes differ: x {x.shape[0]}, y {y.shape[0]}, k {None if k is None else k.shape[0]}")
    lam = sample_beta(alpha, x.device, generator)
    perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
    lam_x = lam.to(x.dtype)
    x_mixed = lam_x * x + (1 - lam_x) * x[perm]
    return x_mixed, (y, k), (y[perm], None if k is None else k[perm]), lam


def mixup_loss(
    criterion: Callable[..., torch.Tensor],
    out: HeadOutput,
    a: Targets,
    b: Targets,
    lam: torch.Tensor | float,
) -> torch.Tensor:
    """``lam * criterion(out, *a) + (1 - lam) * criterion(out, *b)``: each term keeps its own class weights."""
    return lam * criterion(out, *a) + (1 - lam) * criterion(out, *b)
