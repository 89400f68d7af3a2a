"""Training-step benchmark: img/s of the CE and the two-head step per backbone on the current device.

    python -m rayjobs.bench                          # resnet32, ce + twohead, this device
    python -m rayjobs.bench --backbones resnet32,resnet110,resnet18 --steps 100 --json bench.json

It times the very step :func:`twohead.loop.fit` runs (``twohead.step.Step`` on device-resident uint8 batches:
gather, crop/flip, normalise, forward, loss, backward, SGD), CUDA-graph captured where the loop would capture
it. GPU timings use CUDA events after a warm-up; CPU timings use perf_counter. For CIFAR-10-LT (imbalance 100,
12,406 images) it projects the 200-epoch training time (training steps only; evaluation excluded).
Needs torch only (no Ray), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from twohead.config import load_config
from twohead.division import DivisionPlan, assign_clusters
from twohead.loop import build_training
from twohead.runtime import amp_dtype, resolve_device, use_graphs
from twohead.sources import DeviceSource
from twohead.step import Step

CIFAR10_LT_100 = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]  # LDAM-DRW's counts, 12,406 images
IMAGE_SIZE = {"resnet32": 32, "resnet110": 32, "vgg16": 32, "mobilenet_v2": 32, "resnet18": 64, "resnext50_32x4d": 64}


def bench_one(
    backbone: str,
    method: str,
    steps: int,
    warmup: int,
    batch: int,
    device: str,
    compile_mode: str,
    counts: list[int],
    amp: str = "auto",
) -> dict:
    size = IMAGE_SIZE.get(backbone, 32)
    cfg = load_config(
        overrides={
            "model.backbone": backbone,
            "method.name": method,
            "optim.batch_size": batch,
            "optim.device": device,
            "optim.compile": compile_mode,
            "optim.amp": amp,
            "optim.warmup_epochs": 0,
            "data.image_size": size,
        }
    )
    dev = resolve_device(cfg)
    labels = np.repeat(np.arange(len(counts)), counts)
    plan = DivisionPlan.from_counts(counts, cfg.method.u) if cfg.spec.cdh else DivisionPlan.identity(len(counts))
    clusters = assign_clusters(labels, plan, "random") if cfg.spec.cdh else labels
    images = np.random.default_rng(0).integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    model, criterion, opt = build_training(cfg, counts, plan, dev)
    graphs = use_graphs(cfg, dev, 1)
    step = Step(model, criterion, opt, cfg, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), dev, amp_dtype(cfg, dev), graphs)
    source = DeviceSource(images, labels, clusters, dev, batch, 0, drop_last=True)

    def batches():
        epoch = 0
        while True:
            yield from source.batches(epoch)
            epoch += 1

    it = batches()
    for _ in range(warmup):
        step(*next(it), augment=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step(*next(it), augment=True)
        end.record()
        torch.cuda.synchronize()
        secs = start.elapsed_time(end) / 1000
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step(*next(it), augment=True)
        float(loss)
        secs = time.perf_counter() - t0
    img_s = steps * batch / secs
    return {
        "backbone": backbone,
        "method": method,
        "img_per_s": img_s,
        "ms_per_step": 1000 * secs / steps,
        "graphs": bool(step.graphs),
        "amp": str(amp_dtype(cfg, dev)),
        "device": str(dev),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="resnet32")
    p.add_argument("--methods", default="ce,twohead")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 200 on GPU, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps (default 30 on GPU, 2 on CPU)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="auto", help="auto | cuda-graphs | off")
    p.add_argument("--amp", default="auto", help="auto | bf16 | off")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    steps = args.steps or (200 if on_gpu else 10)
    warmup = args.warmup or (30 if on_gpu else 2)
    n_train = sum(CIFAR10_LT_100)
    rows = []
    for backbone in args.backbones.split(","):
        base = None
        for method in args.methods.split(","):
            r = bench_one(backbone, method, steps, warmup, args.batch, args.device, args.compile, CIFAR10_LT_100, args.amp)
            base = base or r
            r["vs_first"] = base["ms_per_step"] and r["ms_per_step"] / base["ms_per_step"]
            r["proj_200ep_s"] = 200 * n_train / r["img_per_s"] if backbone in ("resnet32", "resnet110") else None
            rows.append(r)
    dev = rows[0]["device"]
    card = (
        torch.cuda.get_device_name()
        if on_gpu
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"# twohead step benchmark: {card}, torch {torch.__version__}, batch {args.batch}, {steps} timed steps after {warmup} warm-up"
    )
    print("| backbone | method | img/s | ms/step | x first method | CIFAR-10-LT 200 ep (s) | graph | amp |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        proj = f"{r['proj_200ep_s']:.0f}" if r["proj_200ep_s"] else "-"
        print(
            f"| {r['backbone']} | {r['method']} | {r['img_per_s']:.0f} | {r['ms_per_step']:.2f} | {r['vs_first']:.3f} | {proj} | {r['graphs']} | {r['amp']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "torch": torch.__version__, "device": dev, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
