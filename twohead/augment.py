"""On-device augmentation and normalisation of uint8 batches.

The CIFAR recipe (LDAM-DRW, paper Sec. 3.1 "random crop and flipping") is pad-4 random crop + horizontal flip.
Doing it on the device on whole batches keeps small datasets GPU-resident end to end and leaves nothing on the
host in the training step, so the step can be captured as one CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["random_crop_flip", "normalize", "to_nchw"]


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """Accept [B, H, W, 3] (as decoded) or [B, 3, H, W]."""
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.permute(0, 3, 1, 2)
    return x


def random_crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop after zero padding by ``pad`` (torchvision RandomCrop(size, padding=pad)) and a
    random horizontal flip, for a whole [B, C, H, W] batch at once. Uses the device's default generator."""
    B, C, H, W = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (B,), device=dev)
    left = torch.randint(0, 2 * pad + 1, (B,), device=dev)
    flip = torch.rand(B, device=dev) < 0.5
    rows = top[:, None] + torch.arange(H, device=dev)[None, :]  # [B, H]
    cols = left[:, None] + torch.arange(W, device=dev)[None, :]  # [B, W]
    # Flip by reversing the column index of flipped samples.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, channels_last: bool = True
) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 normalised, channels_last when asked (NHWC is faster for convolutions)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    out = (x.float().div_(255.0) - mean_t) / std_t
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()
