"""Class re-weighting by the effective number of samples, its (deferred) schedule, and the base criterion.

Every criterion in :mod:`twohead.losses` computes a per-sample loss ``l_i`` and reduces it with a
class-weight buffer ``w`` as the weighted mean ``sum_i w[y_i] l_i / sum_i w[y_i]``. That is exactly
``F.cross_entropy(..., weight=w)`` for hard labels (the convention of LDAM-DRW, Cao et al. 2019) and the
plain mean when ``w`` is all ones, so one code path covers plain, class-balanced (CB, Cui et al. 2019)
and deferred re-weighting (DRW). The buffer is updated *in place* by :meth:`Criterion.set_epoch`
between epochs: the training step keeps static shapes and has no Python branch on the epoch, which
is what lets the loop capture it in a CUDA graph (the graph reads the buffer's memory on each replay).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from twohead.config import TrainConfig
    from twohead.heads import HeadOutput

__all__ = [
    "Criterion",
    "ReweightSchedule",
    "check_class_counts",
    "effective_number_weights",
    "reweight_schedule",
]


def check_class_counts(class_counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Return the per-class training counts as a float64 CPU tensor ``[C]``, or raise ``ValueError``.

    Every class needs at least one training sample: the effective number, the LDAM margin
    ``n_c^(-1/4)`` and Eq. 3's cluster count are undefined for an empty class.
    """
    if isinstance(class_counts, torch.Tensor):
        arr = class_counts.detach().cpu().to(torch.float64).numpy()
    else:
        try:
            arr = np.asarray(class_counts, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"class_counts must be a 1-D sequence of numbers, got {class_counts!r}") from e
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"class_counts must be 1-D with one count per class (C >= 2), got shape {tuple(arr.shape)}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 1))
    if bad.size:
        c = int(bad[0])
        raise ValueError(
            f"class_counts[{c}]={arr[c]:g} is invalid: every class needs >= 1 training sample "
            f"({bad.size} of {arr.shape[0]} classes are not)"
        )
    return torch.from_numpy(arr.copy())


def effective_number_weights(class_counts: Sequence[int] | np.ndarray | torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balanced weights of Cui et al. (2019): ``w_c = (1 - beta) / (1 - beta^n_c)``, normalised to sum C.

    ``(1 - beta^n) / (1 - beta)`` is the effective number of samples of a class with ``n`` samples;
    its inverse is the weight. ``beta = 0`` gives all ones (no re-weighting), ``beta -> 1`` approaches
    inverse-frequency weighting. Computed in float64 (``beta^n`` with beta = 0.9999 and n ~ 5000 loses
    digits in float32) and returned as float32 ``[C]``.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"effective-number beta={beta} must be in [0, 1)")
    n = check_class_counts(class_counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    w = w / w.sum() * n.numel()
    return w.to(torch.float32)


@dataclass(frozen=True)
class ReweightSchedule:
    """Class weights per epoch: ones before ``start_epoch``, effective-number weights from it on.

    Epochs are 0-based: ``weights(e)`` is what training epoch ``e`` uses, so LDAM-DRW's switch "at
    epoch 160" of 200 is ``start_epoch=160``. Plain CB re-weighting is ``start_epoch=0``.
    """

    weights_after: torch.Tensor  # float32 [C], effective-number weights
    start_epoch: int

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch

    def weights(self, epoch: int) -> torch.Tensor:
        return self.weights_after.clone() if self.active(epoch) else torch.ones_like(self.weights_after)


def reweight_schedule(cfg: TrainConfig, class_counts: Sequence[int] | np.ndarray | torch.Tensor) -> ReweightSchedule | None:
    """The method's re-weighting schedule, or ``None`` when the method does not re-weight.

    Methods in :data:`twohead.config.DEFERRED_REWEIGHT` (DRW) start at ``cfg.method.drw_epoch``; other
    methods with ``MethodSpec.reweight`` (CB, CB-focal) re-weight from epoch 0 and ignore drw_epoch.
    """
    from twohead.config import DEFERRED_REWEIGHT, METHODS

    spec = METHODS[cfg.method.name]
    if not spec.reweight:
        return None
    start = int(cfg.method.drw_epoch) if cfg.method.name in DEFERRED_REWEIGHT else 0
    return ReweightSchedule(effective_number_weights(class_counts, cfg.method.cb_beta), start)


class Criterion(nn.Module):
    """Base class: ``forward(out, y, k) -> scalar`` = class-weighted mean of :meth:`per_sample`.

    ``class_weight`` (float32 ``[C]`` buffer, ones when not re-weighting) moves with ``.to(device)``
    and is only ever modified in place, so a CUDA graph captured around the training step keeps
    seeing the current weights. Subclasses implement :meth:`per_sample`.
    """

    class_weight: torch.Tensor
    _weight_after: torch.Tensor

    def __init__(self, num_classes: int, schedule: ReweightSchedule | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        self.num_classes = int(num_classes)
        self.start_epoch: int | None = None
        self.register_buffer("class_weight", torch.ones(num_classes, dtype=torch.float32))
        if schedule is not None:
            if schedule.weights_after.shape != (num_classes,):
                raise ValueError(
                    f"re-weighting schedule has {tuple(schedule.weights_after.shape)} weights for {num_classes} classes"
                )
            self.start_epoch = int(schedule.start_epoch)
            # Kept on the criterion's device (non-persistent: derived from the counts) so that
            # set_epoch is a device-to-device copy with no host transfer.
            self.register_buffer("_weight_after", schedule.weights_after.to(torch.float32).clone(), persistent=False)
        self.set_epoch(0)

    @property
    def reweighting(self) -> bool:
        """Whether the current ``class_weight`` is the re-weighted one (not all ones)."""
        return self._active

    @torch.no_grad()
    def set_epoch(self, epoch: int) -> None:
        """Set the class weights for 0-based training ``epoch`` (call before the epoch; in place)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0 (epochs are 0-based)")
        self._active = self.start_epoch is not None and epoch >= self.start_epoch
        if self._active:
            self.class_weight.copy_(self._weight_after)
        else:
            self.class_weight.fill_(1.0)

    def per_sample(self, out: HeadOutput, y: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
        """Unreduced loss ``[B]`` (float32)."""
        raise NotImplementedError

    def weighted_mean(self, losses: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_i w[y_i] l_i / sum_i w[y_i]`` (= ``F.cross_entropy(weight=w)``'s "mean" reduction)."""
        w = self.class_weight[y]
        return (w * losses).sum() / w.sum()

    def forward(self, out: HeadOutput, y: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        return self.weighted_mean(self.per_sample(out, y, k), y)

    def extra_repr(self) -> str:
        rw = "none" if self.start_epoch is None else f"effective-number from epoch {self.start_epoch}"
        return f"num_classes={self.num_classes}, reweight={rw}"


def _check_width(name: str, logits: torch.Tensor, expected: int, what: str) -> None:
    """Static shape check (Python on shapes only: no device sync, fine under graph capture)."""
    if logits.ndim != 2 or logits.shape[1] != expected:
        raise ValueError(f"{name} has shape {tuple(logits.shape)}; expected [B, {expected}] ({what})")
