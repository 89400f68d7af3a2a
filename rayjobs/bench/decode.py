"""Decode + RandomResizedCrop throughput per CPU core, and how many decode cores one GPU needs at ResNeXt-50 speed.

    python -m rayjobs.bench_decode [--images 64] [--gpu-img-per-s 2030]

(``python -m rayjobs.bench_ray`` prints the same table next to its Ray Data figures.) One process, one torch
thread, best of 5 passes over generated JPEGs at ImageNet's bitrate, cropped to 224 px:

- *full decode*: torchvision's decoder on the whole image, then ``RandomResizedCrop(224)`` + flip on the tensor;
- *reduced decode* (what the Ray Data stream and the local DataLoader run):
  :func:`twohead.data.decode_crop.decode_random_resized_crop`, which decodes at 1/2-1/8 scale when the crop box
  allows it;
- *decode_jpeg batch on CPU*: the ``--gpu-decode`` code (:func:`~twohead.data.decode_crop.decode_random_resized_crop_batch`)
  on the CPU, for reference only: on a GPU the decode runs on nvJPEG and takes no CPU core.

Decode cores per GPU = the GPU's training img/s / the reduced decode's img/s per core on ImageNet-size JPEGs.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["IMAGENET_JPEG_BYTES", "RESNEXT50_IMG_PER_S", "cores_per_gpu", "main", "measure", "photos", "table"]

# Outside reference, not measured here: ResNeXt-50 (32x4d) training on one A100 with mixed precision at ~2,030 img/s
# = NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5 README, "Training performance: NVIDIA DGX A100 (8x A100
# 80GB)", 1 GPU, mixed precision: 2,470 img/s; times timm's measured training-throughput ratio of resnext50_32x4d
# to resnet50 on one RTX 3090 (AMP, NHWC; pytorch-image-models results/benchmark-train-amp-nhwc-pt112-cu113-
# rtx3090.csv): 1,001 / 1,218 img/s.
RESNEXT50_IMG_PER_S = 2470 * 1001 / 1218
# Outside reference: ILSVRC-2012 train, 147,897,477,120 bytes of tar for 1,281,167 JPEGs = ~115 KB per image; its
# most common size is 500x375. The generated JPEGs are made at that size with about that many bytes.
IMAGENET_JPEG_BYTES = 147_897_477_120 / 1_281_167
CROP = 224


def photos(n: int, width: int, height: int, quality: int = 94, seed: int = 0) -> list[bytes]:
    """``n`` generated JPEGs (the stand-in's class textures with pixel noise; at 500x375 and quality 94 about
    ImageNet's ~115 KB per image)."""
    from PIL import Image

    from twohead.data.standin import render_class

    out = []
    side = max(width, height)
    for i in range(n):
        img = render_class(i % 100, 1, side, seed, i)[0][:height, :width]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def _rate(fn: Callable[[Sequence[bytes]], Any], blobs: Sequence[bytes], passes: int = 5) -> float:
    fn(blobs[: max(1, len(blobs) // 8)])  # warm-up: imports, allocator
    best = 0.0
    for _ in range(passes):
        t0 = time.perf_counter()
        fn(blobs)
        best = max(best, len(blobs) / (time.perf_counter() - t0))
    return best


def measure(images: int = 64, sizes: Sequence[tuple[int, int]] = ((500, 375), (1600, 1200))) -> list[dict[str, Any]]:
    """img/s on one core of each decode path, per image size."""
    import torch
    from torchvision.transforms import v2 as T

    from twohead.data.decode_crop import decode_random_resized_crop, decode_random_resized_crop_batch
    from twohead.data.sources import decode_bytes

    torch.set_num_threads(1)
    crop = T.Compose([T.RandomResizedCrop(CROP, antialias=True), T.RandomHorizontalFlip()])
    paths = {
        "full decode + RandomResizedCrop": lambda bs: [crop(decode_bytes(b)) for b in bs],
        "reduced decode (decode_random_resized_crop)": lambda bs: [decode_random_resized_crop(b, CROP) for b in bs],
        "decode_jpeg batch on CPU (the --gpu-decode code)": lambda bs: decode_random_resized_crop_batch(bs, CROP, device="cpu"),
    }
    rows = []
    for w, h in sizes:
        blobs = photos(images, w, h)
        row: dict[str, Any] = {"size": f"{w}x{h}", "kb": float(np.mean([len(b) for b in blobs])) / 1000}
        for name, fn in paths.items():
            row[name] = _rate(fn, blobs)
        rows.append(row)
    return rows


def cores_per_gpu(img_per_s_per_core: float, gpu_img_per_s: float = RESNEXT50_IMG_PER_S) -> float:
    return gpu_img_per_s / img_per_s_per_core


def table(rows: list[dict[str, Any]], gpu_img_per_s: float = RESNEXT50_IMG_PER_S) -> str:
    """Markdown table of :func:`measure`'s rows, with the decode cores one GPU needs for each path."""
    from tabulate import tabulate

    names = [k for k in rows[0] if k not in ("size", "kb")]
    body = []
    for r in rows:
        for name in names:
            body.append(
                [f"{r['size']} JPEG ({r['kb']:.0f} KB)", name, f"{r[name]:.0f}", f"{cores_per_gpu(r[name], gpu_img_per_s):.1f}"]
            )
    head = ["images", "decode + RandomResizedCrop(224) + flip", "img/s per core", f"cores per GPU at {gpu_img_per_s:,.0f} img/s"]
    return tabulate(body, headers=head, tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rayjobs.bench_decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64, help="generated JPEGs per image size")
    p.add_argument(
        "--gpu-img-per-s",
        type=float,
        default=RESNEXT50_IMG_PER_S,
        help="training img/s of one GPU (default: ResNeXt-50 on an A100 with AMP, an outside reference; see the source)",
    )
    args = p.parse_args(argv)
    if args.images < 1 or not args.gpu_img_per_s > 0:
        print("error: --images must be >= 1 and --gpu-img-per-s > 0", file=sys.stderr)
        return 2
    rows = measure(args.images)
    cpu = os.cpu_count() or 1
    print(f"\nDecode + crop, one process, one torch thread ({cpu} cores on this machine), best of 5 passes\n")
    print(table(rows, args.gpu_img_per_s))
    best = rows[0]["reduced decode (decode_random_resized_crop)"]
    need = cores_per_gpu(best, args.gpu_img_per_s)
    print(
        f"\nOne GPU training at {args.gpu_img_per_s:,.0f} img/s needs {need:.1f} decode cores ({math.ceil(need)}) on "
        f"{rows[0]['size']} JPEGs at {best:.0f} img/s per core."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
