"""On-device augmentation: pad-4 random crop + horizontal flip (LDAM-DRW's CIFAR recipe) and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twohead.augment import normalize, random_crop_flip, to_nchw


def _find_crop(out: torch.Tensor, src: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) window of the zero-padded ``src`` that equals ``out`` (brute force)."""
    padded = F.pad(src, (pad, pad, pad, pad))
    H, W = src.shape[-2:]
    hits = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            win = padded[:, top : top + H, left : left + W]
            for flipped in (False, True):
                if torch.equal(win.flip(-1) if flipped else win, out):
                    hits.append((top, left, flipped))
    return hits


def test_every_output_is_a_window_of_the_padded_image_possibly_flipped():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros: a window is identified uniquely
    y = random_crop_flip(x, pad=4)
    assert y.shape == x.shape and y.dtype == torch.uint8
    found = [_find_crop(y[i], x[i], 4) for i in range(len(x))]
    assert all(len(h) == 1 for h in found), [h for h in found if len(h) != 1][:3]
    tops = {h[0][0] for h in found}
    flips = [h[0][2] for h in found]
    assert len(tops) > 4 and 0 < sum(flips) < len(flips)  # offsets and flips vary across the batch


def test_offsets_and_flips_are_uniform_over_many_draws():
    torch.manual_seed(1)
    x = torch.zeros(20000, 1, 1, 1, dtype=torch.uint8)
    x[:, 0, 0, 0] = 255  # one bright pixel: its position after the crop gives the offset
    y = random_crop_flip(x, pad=1)
    visible = y.reshape(len(y), -1).amax(1) > 0
    # a 1x1 image padded by 1 then cropped to 1x1: the pixel survives for offset (1, 1) only, 1/9 of the draws
    assert abs(visible.float().mean().item() - 1 / 9) < 0.01


def test_normalize_matches_the_formula_and_layout():
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    out = normalize(x, mean, std, channels_last=True)
    want = (x.numpy().astype(np.float64) / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert normalize(x, mean, std, channels_last=False).is_contiguous()


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 3, 8, 8)])
def test_to_nchw_accepts_both_layouts(shape):
    x = torch.zeros(shape)
    assert to_nchw(x).shape == (2, 3, 8, 8)
