"""The training step: augment, forward both heads, L = L2 + lambda L1 (or a baseline loss), backward, update.

Eager, or captured once as a CUDA graph and replayed: at batch 128 a ResNet-32 step is dominated by kernel-launch
overhead, and a replayed graph launches the whole step (gather, augmentation, forward, both losses, backward, SGD)
at once. Shapes are static and the class-weight buffer changes in place (:mod:`twohead.losses.class_balanced`), so
one capture serves every step; the learning rate is a Python float baked into the captured update, so the graph is
re-captured when it changes (at most once per epoch, a few ms).
"""

from __future__ import annotations

import logging

import torch

from .augment import normalize, random_crop_flip, to_nchw
from .config import TrainConfig
from .heads import HeadOutput
from .losses import mixup_batch, mixup_loss

log = logging.getLogger("twohead")

__all__ = ["Step"]


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
            saved_opt = {
                "state": {
                    i: {k2: v.clone() if torch.is_tensor(v) else v for k2, v in s.items()} for i, s in saved_opt["state"].items()
                },
                "param_groups": saved_opt["param_groups"],
            }
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
