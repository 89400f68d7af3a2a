"""The one training loop. Single-process runs, Ray Train workers and Ray Tune trials all call :func:`fit`.

What makes it fast on a GPU (the issue's target: a 200-epoch CIFAR-10-LT two-head run in <= 30 s on an H100):
small datasets live on the device as uint8; crop/flip/normalise run there on whole batches
(:mod:`twohead.augment`); NHWC memory format and bf16 autocast; and the whole step (gather, augment, forward,
both losses, backward, SGD) is captured once as a CUDA graph and replayed, which removes the per-kernel launch
overhead that dominates a ResNet-32 step at batch 128. The learning rate is a plain float that changes at most
once per epoch, so the graph is re-captured when it changes (a few ms), never per step.

Ray-free: distributed data parallelism is torch DDP when a process group is already initialised (Ray Train
sets one up); per-epoch reporting and checkpoint storage go through a :class:`Reporter`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from .augment import normalize, random_crop_flip, to_nchw
from .config import ConfigError, TrainConfig
from .division import DivisionPlan, assign_clusters, pixel_embedding, soft_label_matrix
from .heads import HeadOutput
from .losses import mixup_batch, mixup_loss

log = logging.getLogger("twohead")

__all__ = ["fit", "evaluate", "Reporter", "BatchSource", "LocalReporter", "RunExistsError", "lr_at", "resolve_device"]


class RunExistsError(RuntimeError):
    """The output folder holds another run's results; refusing to overwrite them."""


@runtime_checkable
class BatchSource(Protocol):
    """Training batches from elsewhere (Ray Data streaming): this worker's shard of one epoch."""

    augmented: bool  # True when crop/flip was already applied (large images augmented on CPU workers)
    num_samples: int  # samples per epoch on this worker

    def batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yields (images uint8 [B,H,W,3] or [B,3,H,W] (or float, already normalised), labels [B], cluster ids [B])."""
        ...


class Reporter(Protocol):
    def restore(self) -> dict | None:
        """The state dict to resume from (what ``make_state`` returned), or None for a fresh run."""
        ...

    def report(self, metrics: dict, make_state: Callable[[], dict] | None) -> None:
        """Called once per epoch on every rank; ``make_state`` is given on checkpoint epochs."""
        ...


class LocalReporter:
    """Checkpoints to ``out_dir/checkpoint.pt`` (atomic replace), resumes from it."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / "checkpoint.pt"

    def restore(self) -> dict | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def report(self, metrics: dict, make_state: Callable[[], dict] | None) -> None:
        if make_state is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        torch.save(make_state(), tmp)
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def resolve_device(cfg: TrainConfig) -> torch.device:
    want = cfg.optim.device
    if dist.is_available() and dist.is_initialized() and torch.cuda.is_available() and want in ("auto", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(want)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"optim.device={want!r} but no CUDA device is available; use optim.device=cpu or auto")
    return dev


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: linear warm-up (LDAM-DRW: lr * (e+1) / warmup), then step decay at the
    milestones (CIFAR, Tiny) or cosine (ImageNet-LT, Loshchilov & Hutter)."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return o.lr * (epoch + 1) / o.warmup_epochs
    if o.schedule == "cosine":
        t = (epoch - o.warmup_epochs) / max(1, o.epochs - o.warmup_epochs)
        return 0.5 * o.lr * (1.0 + math.cos(math.pi * t))
    return o.lr * o.lr_gamma ** sum(epoch >= m for m in o.milestones)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.optim.amp == "off" or (cfg.optim.amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def _use_graphs(cfg: TrainConfig, device: torch.device, world: int) -> bool:
    mode = cfg.optim.compile
    if mode == "auto":
        mode = "cuda-graphs" if device.type == "cuda" else "off"
    if mode == "cuda-graphs" and (device.type != "cuda" or world > 1):
        if mode == cfg.optim.compile:
            log.warning("optim.compile=cuda-graphs needs one CUDA device without DDP; running eager")
        return False
    return mode == "cuda-graphs"


def seed_epoch(seed: int, epoch: int) -> None:
    """Every epoch's randomness (shuffle, crop, flip, mixup) depends only on (seed, epoch): resuming from a
    checkpoint replays exactly what an uninterrupted run would have done."""
    torch.manual_seed(seed * 100_003 + epoch)


# ---------------------------------------------------------------------------------------------
# Training data on the device
# ---------------------------------------------------------------------------------------------
class DeviceSource:
    """The training split as device-resident uint8 NCHW tensors; each epoch a seeded permutation is sharded by
    rank (like DistributedSampler) and cut into batches (drop_last when the step is a captured graph)."""

    augmented = False

    def __init__(self, images: np.ndarray, labels: np.ndarray, clusters: np.ndarray, device: torch.device,
                 batch_size: int, seed: int, drop_last: bool):
        rank, world = _rank_world()
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.clusters = torch.from_numpy(clusters.astype(np.int64)).to(device)
        self.rank, self.world, self.seed, self.drop_last = rank, world, seed, drop_last
        self.batch_size = max(1, batch_size // world)
        self.per_rank = len(labels) // world
        self.num_samples = self.per_rank

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        perm = torch.randperm(len(self.labels), generator=g)[self.rank :: self.world][: self.per_rank]
        perm = perm.to(self.images.device)
        B = self.batch_size
        end = (len(perm) // B) * B if self.drop_last else len(perm)
        for i in range(0, end, B):
            idx = perm[i : i + B]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                break
            yield self.images[idx], self.labels[idx], self.clusters[idx]


class LoaderSource:
    """File-backed splits (ImageNet-LT): a DataLoader decodes and augments (RandomResizedCrop + flip) on CPU
    workers; the loop normalises on the device. Cluster ids are looked up by the sample's position."""

    augmented = True

    def __init__(self, split, clusters: np.ndarray, cfg: TrainConfig, image_size: int):
        from .data import FileDataset, collate_skip_corrupt

        rank, world = _rank_world()
        ds = FileDataset(split, train=True, image_size=image_size, skip_corrupt=cfg.data.skip_corrupt)
        self.clusters = torch.from_numpy(clusters.astype(np.int64))
        self.sampler = (torch.utils.data.DistributedSampler(ds, world, rank, shuffle=True, seed=cfg.optim.seed, drop_last=True)
                        if world > 1 else None)
        self.loader = torch.utils.data.DataLoader(
            ds, batch_size=max(1, cfg.optim.batch_size // world), shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(), drop_last=True,
            persistent_workers=cfg.data.num_workers > 0,
            collate_fn=collate_skip_corrupt if cfg.data.skip_corrupt else None,
        )
        self.num_samples = len(ds) // world

    def batches(self, epoch: int):
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        for batch in self.loader:
            if batch is None:  # every image of the batch was undecodable and skipped
                continue
            x, y, pos = batch
            yield x, y, self.clusters[pos]


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------
class Step:
    """One SGD step on a (uint8 images, labels, cluster ids) batch: augment, forward both heads, L = L2 + lambda L1,
    backward, update. Eager, or captured as one CUDA graph (static shapes, re-captured when the lr changes)."""

    def __init__(self, model, criterion, optimizer, cfg: TrainConfig, mean, std, device, amp_dtype, graphs: bool):
        self.model, self.criterion, self.opt = model, criterion, optimizer
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        self.mixup = cfg.spec.mixup
        self.graphs = graphs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr: float | None = None
        self.static: tuple[torch.Tensor, ...] | None = None
        self.static_loss: torch.Tensor | None = None

    def loss(self, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, augment: bool) -> torch.Tensor:
        x = to_nchw(x)
        if x.dtype == torch.uint8:
            if augment:
                x = random_crop_flip(x)
            x = normalize(x, self.mean, self.std, self.cfg.model.channels_last)
        if self.mixup:
            x, a, b, lam = mixup_batch(x, y, k, self.cfg.method.mixup_alpha)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.model(x)
        out = HeadOutput(out.logits.float(), None if out.fbh is None else out.fbh.float())
        if self.mixup:
            return mixup_loss(self.criterion, out, a, b, lam)
        return self.criterion(out, y, k)

    def eager(self, x, y, k, augment: bool) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(x, y, k, augment)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def __call__(self, x, y, k, augment: bool) -> torch.Tensor:
        if not self.graphs or x.shape[0] != self.cfg.optim.batch_size:
            return self.eager(x, y, k, augment)
        lr = self.opt.param_groups[0]["lr"]
        if self.graph is None or lr != self.graph_lr:
            try:
                self._capture(x, y, k, augment)
            except Exception as e:  # noqa: BLE001 - any capture failure: keep training, eagerly
                log.warning("CUDA graph capture failed (%s); continuing eagerly", e)
                self.graphs, self.graph = False, None
                return self.eager(x, y, k, augment)
        sx, sy, sk = self.static
        sx.copy_(x, non_blocking=True)
        sy.copy_(y, non_blocking=True)
        sk.copy_(k, non_blocking=True)
        self.graph.replay()
        return self.static_loss.clone()

    def _capture(self, x, y, k, augment: bool) -> None:
        first = self.graph is None
        if first:
            self.static = (x.clone(), y.clone(), k.clone())
            # Warm up on a side stream (cuDNN autotuning, optimizer state allocation), then undo the warm-up's
            # updates so the captured run is the same as an eager one.
            saved_model = {n: t.detach().clone() for n, t in self.model.state_dict().items()}
            saved_opt = self.opt.state_dict()
            saved_opt = {"state": {i: {k2: v.clone() if torch.is_tensor(v) else v for k2, v in s.items()} for i, s in saved_opt["state"].items()}, "param_groups": saved_opt["param_groups"]}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.eager(*self.static, augment)
            torch.cuda.current_stream().wait_stream(side)
            with torch.no_grad():
                for n, t in self.model.state_dict().items():
                    t.copy_(saved_model[n])
                for i, p in enumerate(p for g in self.opt.param_groups for p in g["params"]):
                    st = self.opt.state.get(p, {})
                    buf = st.get("momentum_buffer")
                    if buf is not None:
                        old = saved_opt["state"].get(i, {}).get("momentum_buffer")
                        buf.copy_(old) if old is not None else buf.zero_()
        pool = self.graph.pool() if self.graph is not None else None
        graph = torch.cuda.CUDAGraph()
        # Grads set to None so the captured backward *allocates* them from the graph's pool (each replay writes
        # fresh gradients instead of accumulating), as in PyTorch's whole-network capture recipe.
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, pool=pool):
            self.static_loss = self.loss(*self.static, augment)
            self.static_loss.backward()
            self.opt.step()
        self.graph, self.graph_lr = graph, self.opt.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, split, data, cfg: TrainConfig, device: torch.device, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities [N, C] (K-to-C mapped by model.inference) and labels [N] of a split."""
    was_training = model.training
    model.eval()
    amp = _amp_dtype(cfg, device)
    probs = []
    for x in _eval_batches(split, data, cfg, batch_size):
        x = to_nchw(x.to(device, non_blocking=True))
        if x.dtype == torch.uint8:
            x = normalize(x, data.mean, data.std, cfg.model.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        probs.append(model.probs(out).float().cpu())
    model.train(was_training)
    return torch.cat(probs).numpy(), np.asarray(split.labels, dtype=np.int64)


def _eval_batches(split, data, cfg: TrainConfig, batch_size: int) -> Iterator[torch.Tensor]:
    if split.images is not None:
        imgs = split.images
        for i in range(0, len(imgs), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(imgs[i : i + batch_size]))
        return
    from .data import FileDataset

    ds = FileDataset(split, train=False, image_size=_image_size(cfg, data))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    for batch in loader:
        yield batch[0]


def evaluate(model, split, data, cfg: TrainConfig, device: torch.device) -> dict:
    from .metrics import classification_report

    probs, labels = predict(model, split, data, cfg, device)
    return classification_report(probs, labels, data.class_counts)


# ---------------------------------------------------------------------------------------------
# Set-up shared by fit() and the CLI
# ---------------------------------------------------------------------------------------------
def _image_size(cfg: TrainConfig, data) -> int:
    return cfg.data.image_size or int(data.image_size)


def division_for(cfg: TrainConfig, data, device: torch.device | None = None) -> tuple[DivisionPlan, np.ndarray]:
    """Eq. 3 plan and the per-sample cluster ids of the training split (identity when the method has no CDH)."""
    counts = data.class_counts
    labels = np.asarray(data.train.labels, dtype=np.int64)
    if not cfg.spec.cdh:
        return DivisionPlan.identity(len(counts)), labels.copy()
    plan = DivisionPlan.from_counts(counts, cfg.method.u, cfg.method.rounding)
    embedding = None
    if cfg.method.clustering != "random":
        embedding = _embedding(cfg, data, device or torch.device("cpu"))
    return plan, assign_clusters(labels, plan, cfg.method.clustering, cfg.method.cluster_seed, embedding)


def _embedding(cfg: TrainConfig, data, device: torch.device) -> np.ndarray:
    kind = cfg.method.embedding
    if kind.startswith("checkpoint:"):
        return checkpoint_features(kind.split(":", 1)[1], data, device)
    images = data.train.images
    if images is None:
        from .data import load_images

        images = load_images(data.train, np.arange(len(data.train)), size=32)
    if kind == "pixels":
        return np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0
    return pixel_embedding(images, seed=cfg.method.cluster_seed)


def checkpoint_features(path: str, data, device: torch.device) -> np.ndarray:
    """Pooled backbone features of the training images from a trained twohead checkpoint (an embedding for
    k-means / hierarchical division that reflects what a network finds similar)."""
    from .model import create_model

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"method.embedding=checkpoint:{path}: file does not exist")
    state = torch.load(p, map_location="cpu", weights_only=False)
    src = TrainConfig.from_dict(state["config"])
    model = create_model(src, state["class_counts"], _image_size(src, data)).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    feats = []
    with torch.no_grad():
        for x in _eval_batches(data.train, data, src, 512):
            x = to_nchw(x.to(device))
            if x.dtype == torch.uint8:
                x = normalize(x, data.mean, data.std, False)
            feats.append(model.features(x).float().cpu())
    return torch.cat(feats).numpy()


def _env_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "host": platform.node()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _comparable(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d.pop("run", None)
    d.get("data", {}).pop("num_workers", None)
    d.get("data", {}).pop("root", None)
    d.get("optim", {}).pop("device", None)
    return d


def build_training(cfg: TrainConfig, counts, plan: DivisionPlan, device: torch.device, image_size: int | None = None):
    """Model (channels_last), criterion (L = L2 + lambda L1 or a baseline loss) and SGD, as fit() and the
    benchmark build them. Seeds the model init with optim.seed."""
    from .losses import build_criterion
    from .model import create_model

    torch.manual_seed(cfg.optim.seed)
    model = create_model(cfg, counts, image_size).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    soft = soft_label_matrix(plan, cfg.method.alpha) if cfg.spec.cdh else None
    criterion = build_criterion(cfg, counts, soft).to(device)
    # Weight decay on every parameter, as LDAM-DRW's CIFAR recipe does.
    optimizer = torch.optim.SGD(model.parameters(), lr=lr_at(cfg, 0), momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    return model, criterion, optimizer


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------
def fit(
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    data=None,
    train_source: BatchSource | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model as ``cfg`` describes; returns the final metrics (also ``metrics.json``).

    Everything that can be wrong with the input (config, data, division) is checked before ``out_dir`` is
    touched. An ``out_dir`` holding a different run's results is never overwritten.
    """
    cfg.validate()
    rank, world = _rank_world()
    is_main = rank == 0
    device = resolve_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(out_dir) if out_dir is not None else Path(cfg.run.out) / cfg.run_name()

    # ---- data, division, model: all validation happens here, before anything is written ----------------
    if data is None:
        from .data import build_data

        data = build_data(cfg.data)
    counts = np.asarray(data.class_counts, dtype=np.int64)
    if train_source is None:
        plan, clusters = division_for(cfg, data, device)
    else:  # the stream brings each row's cluster id (computed beside the shards); only the plan is needed
        plan = DivisionPlan.from_counts(counts, cfg.method.u, cfg.method.rounding) if cfg.spec.cdh else DivisionPlan.identity(len(counts))
        clusters = None
    reporter = reporter if reporter is not None else LocalReporter(out)
    state = reporter.restore() if cfg.run.resume else None
    if state is not None and _comparable(state["config"]) != _comparable(cfg.to_dict()):
        raise RunExistsError(f"{out} holds a checkpoint of a different config; choose another run.name or out folder")
    if is_main:
        _claim_out_dir(out, cfg, resuming=state is not None)
        if state is not None:
            # Epochs trained after the checkpoint were lost with the process: history restarts from the
            # checkpoint's, so the epochs about to be retrained are not listed twice.
            _atomic_write(out / "history.jsonl", "".join(json.dumps(h) + "\n" for h in state.get("history", [])))
        if state is not None and int(state["epoch"]) >= cfg.optim.epochs and (out / "metrics.json").is_file():
            log.info("%s: already finished (%d epochs); returning its metrics", out, state["epoch"])
            return json.loads((out / "metrics.json").read_text())

    model, criterion, optimizer = build_training(cfg, counts, plan, device, _image_size(cfg, data))
    start_epoch, history, wall_before = 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state.get("history", []))
        wall_before = float(state.get("wall_s", 0.0))
        log.info("resuming %s from epoch %d", out, start_epoch)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    graphs = _use_graphs(cfg, device, world)
    if train_source is None:
        if data.train.images is not None and cfg.data.device_resident != "off":
            train_source = DeviceSource(data.train.images, data.train.labels, clusters, device,
                                        cfg.optim.batch_size, cfg.optim.seed, drop_last=graphs)
        else:
            train_source = LoaderSource(data.train, clusters, cfg, _image_size(cfg, data))
    step = Step(net, criterion, optimizer, cfg, data.mean, data.std, device, _amp_dtype(cfg, device), graphs)

    def make_state(epoch: int) -> Callable[[], dict]:
        return lambda: {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history,
            "config": cfg.to_dict(),
            "class_counts": counts.tolist(),
            "wall_s": wall_before + time.perf_counter() - t_run,  # training time across restarts
        }

    progress = cfg.run.progress and is_main and not os.environ.get("TQDM_DISABLE")
    t_run = time.perf_counter()
    model.train()
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.optim.epochs):
        seed_epoch(cfg.optim.seed, epoch)
        lr = lr_at(cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        criterion.set_epoch(epoch)
        total = torch.zeros((), device=device)
        seen = steps = 0
        t0 = time.perf_counter()
        bar = _bar(train_source.num_samples, epoch, cfg, progress)
        for x, y, k in train_source.batches(epoch):
            x, y, k = (t.to(device, non_blocking=True) for t in (x, y, k))
            total += step(x, y, k, augment=not train_source.augmented)
            seen += x.shape[0]
            steps += 1
            bar.update(x.shape[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        train_loss = float(total) / max(1, steps)
        bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.4g}")
        bar.close()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch + 1}; lower optim.lr?")
        done = epoch + 1
        metrics = {"epoch": done, "lr": lr, "train_loss": train_loss, "train_img_per_s": seen * world / dt, "epoch_s": dt}
        last = done == cfg.optim.epochs
        if is_main and data.val is not None and (done % cfg.run.eval_every == 0 or last):
            v = evaluate(model, data.val, data, cfg, device)
            metrics.update({f"val_{k2}": v[k2] for k2 in ("top1", "many", "medium", "few")})
        final = None
        if is_main and last:
            final = evaluate(model, data.test, data, cfg, device)
            metrics.update({f"test_{k2}": final[k2] for k2 in ("top1", "many", "medium", "few")})
        history.append(metrics)
        if is_main:
            with open(out / "history.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if progress:
                val = f" val_top1={metrics['val_top1']:.2f}" if "val_top1" in metrics else ""
                print(f"epoch {done}/{cfg.optim.epochs} loss={train_loss:.4f} lr={lr:.4g} {metrics['train_img_per_s']:.0f} img/s{val}", flush=True)
        ckpt = last or done % cfg.run.checkpoint_every == 0
        if last and is_main:
            result = _finish(out, cfg, model, data, plan, final, history, device, wall_before + time.perf_counter() - t_run)
        reporter.report(metrics, make_state(done) if ckpt and is_main else None)
    if not is_main:
        return metrics
    if start_epoch >= cfg.optim.epochs:  # nothing left to train (finished run without metrics.json)
        final = evaluate(model, data.test, data, cfg, device)
        result = _finish(out, cfg, model, data, plan, final, history, device, 0.0)
    return result


def _bar(total: int, epoch: int, cfg: TrainConfig, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="img", leave=False, disable=not enabled)


def _claim_out_dir(out: Path, cfg: TrainConfig, resuming: bool) -> None:
    """Create the run folder, or refuse when it holds another run's files (nothing written is ever lost)."""
    cfg_file = out / "config.yaml"
    if out.exists() and any(out.iterdir()) and not resuming:
        if cfg_file.is_file():
            import yaml

            old = yaml.safe_load(cfg_file.read_text())
            if _comparable(old) != _comparable(cfg.to_dict()):
                raise RunExistsError(f"{out} holds results of a different config; choose another run.name or out folder")
            if (out / "metrics.json").is_file() and not cfg.run.resume:
                raise RunExistsError(f"{out} holds a finished run and run.resume=false; remove it or choose another run.name")
        else:
            raise RunExistsError(f"{out} is not empty and holds no twohead run; choose another run.name or out folder")
        # Same config, no usable checkpoint: restart, but keep the earlier history beside the new one.
        hist = out / "history.jsonl"
        if hist.is_file():
            os.replace(hist, out / f"history.{int(time.time())}.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(cfg_file, cfg.to_yaml())


def _finish(out: Path, cfg: TrainConfig, model, data, plan: DivisionPlan, final: dict, history: list, device, wall: float) -> dict:
    from .metrics import weight_norms

    result = dict(final)
    result.update(
        {
            "run": cfg.run_name(),
            "method": cfg.method.name,
            "dataset": cfg.data.dataset,
            "imbalance": cfg.data.imbalance,
            "epochs": cfg.optim.epochs,
            "seed": cfg.optim.seed,
            "val": {k: history[-1].get(f"val_{k}") for k in ("top1", "many", "medium", "few")} if data.val is not None else None,
            "class_counts": [int(c) for c in data.class_counts],
            "clusters_per_class": list(plan.u_per_class),
            "num_clusters": plan.num_clusters,
            "weight_norms": weight_norms(model),
            "train_img_per_s": float(np.median([h["train_img_per_s"] for h in history[1:]] or [history[-1]["train_img_per_s"]])),
            "wall_s": wall,
            **_env_info(device),
        }
    )
    _atomic_write(out / "metrics.json", json.dumps(result, indent=1))
    if cfg.run.plots:
        try:
            from .plots import plot_history, plot_run

            plot_run(result, data.class_counts, out)
            plot_history(history, out)
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run's metrics
            log.warning("plots failed: %s", e)
    return result
