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
import platform
import sys
import time

import numpy as np
import torch

from twohead import atomic
from twohead.config import load_config
from twohead.division import DivisionPlan, assign_clusters
from twohead.loop import build_training
from twohead.runtime import amp_dtype, resolve_device, use_graphs
from twohead.sources import DeviceSource
from twohead.step import Step

CIFAR10_LT_100 = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]  # LDAM-DRW's counts, 12,406 images
IMAGE_SIZE = {"resnet18": 64, "resnext50_32x4d": 64}  # Tiny / ImageNet-LT backbones at Tiny's 64 px; the others at 32
CIFAR_BACKBONES = ("resnet8", "resnet20", "resnet32", "resnet110")  # the ones a 200-epoch CIFAR-10-LT time applies to


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


def _configs(backbones: list[str], methods: list[str], args: argparse.Namespace) -> None:
    """Validate every (backbone, method) the benchmark will build, before timing any: one line on the first bad one."""
    for b in backbones:
        for m in methods:
            load_config(
                overrides={
                    "model.backbone": b,
                    "method.name": m,
                    "optim.batch_size": args.batch,
                    "optim.device": args.device,
                    "optim.compile": args.compile,
                    "optim.amp": args.amp,
                }
            )


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    from twohead.config import ConfigError

    p = argparse.ArgumentParser(
        prog="python -m rayjobs.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbones", default="resnet32", help="comma-separated registry names (default resnet32)")
    p.add_argument("--methods", default="ce,twohead", help="comma-separated method.name values (default ce,twohead)")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 200 on GPU, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps (default 30 on GPU, 2 on CPU)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="auto", help="auto | cuda-graphs | off")
    p.add_argument("--amp", default="auto", help="auto | bf16 | off")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    backbones = [b for b in args.backbones.split(",") if b]
    methods = [m for m in args.methods.split(",") if m]
    try:
        for flag, v in (("--steps", args.steps), ("--warmup", args.warmup)):
            if v < 0:
                raise ConfigError(f"{flag} {v} must be >= 0 (0 = the device's default)")
        if not backbones or not methods:
            raise ConfigError("--backbones and --methods must each name at least one value")
        _configs(backbones, methods, args)
    except ConfigError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    steps = args.steps or (200 if on_gpu else 10)
    warmup = args.warmup or (30 if on_gpu else 2)
    n_train = sum(CIFAR10_LT_100)
    rows = []
    for backbone in backbones:
        # One untimed pass per backbone: its first steps pay for allocator growth, thread pools and (on GPU) the CUDA
        # context and cuDNN's autotuning, which would otherwise count against whichever method runs first.
        bench_one(backbone, methods[0], warmup, warmup, args.batch, args.device, args.compile, CIFAR10_LT_100, args.amp)
        base = None
        for method in methods:
            r = bench_one(backbone, method, steps, warmup, args.batch, args.device, args.compile, CIFAR10_LT_100, args.amp)
            base = base or r
            r["vs_first"] = base["ms_per_step"] and r["ms_per_step"] / base["ms_per_step"]
            r["proj_200ep_s"] = 200 * n_train / r["img_per_s"] if backbone in CIFAR_BACKBONES else None
            rows.append(r)
    dev = rows[0]["device"]
    card = (
        torch.cuda.get_device_name()
        if on_gpu
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"# twohead step benchmark: {card}, torch {torch.__version__}, batch {args.batch}, "
        f"{steps} timed steps after {warmup} warm-up"
    )
    table = [
        [
            r["backbone"],
            r["method"],
            f"{r['img_per_s']:.0f}",
            f"{r['ms_per_step']:.2f}",
            f"{r['vs_first']:.3f}",
            f"{r['proj_200ep_s']:.0f}" if r["proj_200ep_s"] else "-",
            r["graphs"],
            r["amp"],
        ]
        for r in rows
    ]
    print(
        tabulate(
            table,
            headers=["backbone", "method", "img/s", "ms/step", "x first method", "CIFAR-10-LT 200 ep (s)", "graph", "amp"],
            tablefmt="github",
            disable_numparse=True,
        )
    )
    if args.json:
        atomic.write_json(args.json, {"card": card, "torch": torch.__version__, "device": dev, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
