"""twohead.data.decode_crop: RandomResizedCrop decoded at the smallest JPEG scale, and the batched decode_jpeg path
(run here on the CPU: the same code as with device="cuda", which needs a GPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from twohead.data import decode_crop as dc
from twohead.data.sources import decode_bytes


def photo(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A smooth colour image with mild noise (JPEG at ~1 bit/pixel, like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = rng.uniform(60, 190, 3) + 50 * np.sin(2 * np.pi * (xx / width * 3 + yy / height * 2))[..., None]
    img = np.clip(img + rng.integers(-4, 5, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def whole(width: int, height: int) -> dict:
    """RandomResizedCrop parameters whose only possible box is the whole image."""
    return {"scale": (1.0, 1.0), "ratio": (width / height, width / height), "flip": False}


@pytest.mark.parametrize(
    ("box", "k"), [((223, 4000), 1), ((447, 1000), 1), ((448, 448), 2), ((900, 1000), 4), ((1792, 1800), 8), ((5000, 5000), 8)]
)
def test_reduction_keeps_the_box_at_least_size_pixels(box, k):
    assert dc.reduction(*box, 224) == k


def test_large_crop_is_decoded_at_reduced_scale(monkeypatch):
    data = photo(2048, 1536)
    calls = []
    original = JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    out = dc.decode_random_resized_crop(data, 224, **whole(2048, 1536))
    # The whole 2048x1536 image as the box: 1/4 scale keeps its short side at 384 >= 224, 1/8 would not.
    assert calls == [("RGB", (512, 384))]
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    full = F.resize(decode_bytes(data), [224, 224], antialias=True)
    # DCT-domain downscaling vs an antialiased resize of the full decode: the same picture, within a few levels.
    assert (out.float() - full.float()).abs().mean() < 3.0


def test_small_crop_is_exactly_torchvisions_random_resized_crop():
    data = photo(500, 375, seed=1)
    img = decode_bytes(data)
    for seed in range(5):
        torch.manual_seed(seed)
        out = dc.decode_random_resized_crop(data, 224, flip=False)
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
        assert h < 448 or w < 448  # a 500x375 image never allows a reduced decode
        assert torch.equal(out, F.resized_crop(img, top, left, h, w, [224, 224], antialias=True))


def test_flip_is_a_coin_toss():
    data = photo(300, 300, seed=2)
    flips = 0
    for seed in range(40):
        torch.manual_seed(seed)
        a = dc.decode_random_resized_crop(data, 64, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        b = dc.decode_random_resized_crop(data, 64, **whole(300, 300))
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
        flips += int(not torch.equal(a, b))
    assert 10 <= flips <= 30  # 40 tosses of a fair coin: outside [10, 30] with probability < 2e-3


def test_other_formats_and_undecodable_bytes():
    png = photo(320, 240, fmt="PNG")
    out = dc.decode_random_resized_crop(png, 96, **whole(320, 240))
    assert torch.equal(out, F.resize(decode_bytes(png), [96, 96], antialias=True))
    with pytest.raises(ValueError, match=r"torchvision: .*Unsupported marker"):
        dc.decode_random_resized_crop(b"\xff\xd8\xff" + b"junk" * 10, 224)
    with pytest.raises(ValueError, match="empty image bytes"):
        dc.decode_random_resized_crop(b"", 224)


def test_batched_decode_matches_the_per_image_path_in_shape_and_values():
    sizes = [(640, 480), (500, 375), (1024, 768)]
    blobs = [photo(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    for (w, h), blob in zip(sizes, blobs):
        one = dc.decode_random_resized_crop(blob, 224, **whole(w, h))
        batch = dc.decode_random_resized_crop_batch([blob], 224, device="cpu", **whole(w, h))
        assert batch.shape == (1, 3, 224, 224) and batch.dtype == torch.uint8 and batch.device.type == "cpu"
        # Same bytes, same box: decode_jpeg (libjpeg-turbo here, nvJPEG on a GPU) vs the per-image path.
        assert (batch[0].float() - one.float()).abs().mean() < 3.0
        assert abs(batch[0].float().mean().item() - one.float().mean().item()) < 1.0
    mixed = dc.decode_random_resized_crop_batch([blobs[0], photo(200, 150, fmt="PNG"), blobs[1]], 128, device="cpu")
    assert mixed.shape == (3, 3, 128, 128)
    with pytest.raises(ValueError, match=r"image 1 of the batch is not a decodable JPEG"):
        dc.decode_random_resized_crop_batch([blobs[0], b"\xff\xd8\xff" + b"junk" * 10], 128, device="cpu")
