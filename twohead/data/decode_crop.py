"""Decode + RandomResizedCrop of training images at the cheapest resolution that gives the same crop.

The ImageNet recipe crops a random box of 8-100% of the image area (aspect 3/4-4/3) and resizes it to S x S
(torchvision's ``RandomResizedCrop``; paper Sec. 3.1 follows the standard ImageNet-LT augmentation). The box is
drawn from the image's header size alone, before anything is decoded; then

- :func:`decode_random_resized_crop` (CPU, one image): when the box is at least 2x, 4x or 8x larger than S on both
  sides, the JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (PIL ``Image.draft``), which skips
  most of the inverse DCT and colour conversion of pixels the resize would average away; otherwise it is decoded
  at full size with torchvision's decoder (libjpeg-turbo; faster than PIL's at full size). Both end in the same
  antialiased resize of the box, so the crop distribution is exactly RandomResizedCrop's.
- :func:`decode_random_resized_crop_batch` (one batch, any device): ``torchvision.io.decode_jpeg`` on a list of
  JPEGs (nvJPEG batched decode with ``device="cuda"``), then the same crop and resize on that device.

Both return uint8 ``[3, S, S]`` / ``[B, 3, S, S]`` and flip horizontally with probability 1/2. Used by the Ray Data
stream (``rayjobs.data.stream``) and the local DataLoader (:class:`twohead.data.loader.FileDataset`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch

from twohead.data.sources import decode_bytes

__all__ = [
    "RRC_RATIO",
    "RRC_SCALE",
    "decode_random_resized_crop",
    "decode_random_resized_crop_batch",
    "is_jpeg",
    "reduction",
]

# torchvision's RandomResizedCrop defaults, the ImageNet training augmentation.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return bytes(data[:3]) == _JPEG_MAGIC


def reduction(box_h: float, box_w: float, size: int) -> int:
    """The largest JPEG DCT scale-down (1, 2, 4 or 8) that keeps the crop box at least ``size`` pixels on both
    sides, so the final resize still only shrinks."""
    for k in (8, 4, 2):
        if box_h / k >= size and box_w / k >= size:
            return k
    return 1


def _crop_box(img, scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) drawn like RandomResizedCrop; ``img`` is a tensor or a PIL image (whose size
    is known from its header, before decoding)."""
    from torchvision.transforms import RandomResizedCrop

    return RandomResizedCrop.get_params(img, list(scale), list(ratio))


def _finish(img: torch.Tensor, box: tuple[float, float, float, float], size: int, flip: bool) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    top, left, h, w = box
    out = F.resized_crop(img, int(top), int(left), max(1, round(h)), max(1, round(w)), [size, size], antialias=True)
    if flip and torch.rand(1).item() < 0.5:
        out = out.flip(-1)
    return out


def decode_random_resized_crop(
    data: bytes,
    size: int,
    *,
    flip: bool = True,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """uint8 ``[3, size, size]``: a RandomResizedCrop (+ horizontal flip) of encoded image ``data``, decoded at the
    smallest JPEG scale that still covers the box with ``size`` pixels. Raises ValueError when undecodable."""
    if is_jpeg(data):
        from PIL import Image

        try:
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            top, left, h, w = _crop_box(im, scale, ratio)
            k = reduction(h, w, size)
            if k > 1:
                im.draft("RGB", (math.ceil(width / k), math.ceil(height / k)))
                sx, sy = im.size[0] / width, im.size[1] / height
                img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                return _finish(img, (top * sy, left * sx, h * sy, w * sx), size, flip)
        except Exception:  # noqa: BLE001 - a JPEG PIL cannot read: the generic decoder below decides (and names the error)
            top = None
        img = decode_bytes(data)
        if top is not None and tuple(img.shape[-2:]) == (height, width):
            return _finish(img, (top, left, h, w), size, flip)
    else:
        img = decode_bytes(data)
    return _finish(img, _crop_box(img, scale, ratio), size, flip)


def decode_random_resized_crop_batch(
    blobs: Sequence[bytes],
    size: int,
    *,
    device: str | torch.device = "cuda",
    flip: bool = True,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """uint8 ``[B, 3, size, size]`` on ``device``: the JPEGs of ``blobs`` decoded together by
    ``torchvision.io.decode_jpeg(device=...)`` (nvJPEG on a GPU), each then RandomResizedCrop-ed and flipped there.

    Images that are not JPEG are decoded on the CPU and moved. Raises ValueError naming the batch position of an
    undecodable image.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    jpeg = [i for i, b in enumerate(blobs) if is_jpeg(b)]
    images: list[torch.Tensor | None] = [None] * len(blobs)
    if jpeg:
        encoded = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg]
        try:
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = []
            for i, e in zip(jpeg, encoded):  # one by one, to name the bad one
                try:
                    decoded.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as err:
                    raise ValueError(f"image {i} of the batch is not a decodable JPEG: {err}") from None
        for i, img in zip(jpeg, decoded):
            images[i] = img
    for i, b in enumerate(blobs):
        if images[i] is None:
            try:
                images[i] = decode_bytes(bytes(b)).to(device)
            except ValueError as err:
                raise ValueError(f"image {i} of the batch: {err}") from None
    out = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8, device=device)
    for i, img in enumerate(images):
        out[i] = _finish(img, _crop_box(img, scale, ratio), size, flip)
    return out
