"""Evaluating a model on a split: one forward pass, every reading and post-hoc correction scored from it.

:func:`evaluate` returns the full :func:`twohead.metrics.classification_report` of the default reading
(``model.inference``) plus, from the same pass:

* ``by_inference``: test top-1 of each reading the model supports (``max``, ``sum``, ``fuse``, ``fbh``; see
  :mod:`twohead.readings`), and ``by_inference_groups`` with their many / medium / few / worst-class recalls;
* ``posthoc``: top-1 of logit adjustment and tau-normalisation on the default reading (``la_tau1.0``, ...), and
  ``posthoc_groups`` with their many / medium / few / worst-class recalls;
* ``per_class_by_variant``: the per-class recall of every reading and post-hoc variant (``class_counts``: the
  training images per class they are read against).

Only per-sample predictions (and, for the default reading, confidence and the true class's probability) are kept
between batches, never [N, C] score matrices, so ImageNet-LT's 1000 classes cost a few MB.

In a multi-process (DDP) run, ``evaluate(..., distributed=True)`` has every rank score its share of the split
(samples ``rank::world``) and all-gathers those per-sample predictions (``torch.distributed.all_gather_object``),
so each rank builds the same report of the whole split while no GPU waits for rank 0 to score it alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .augment import normalize, to_nchw
from .metrics import prediction_report, recall_report
from .readings import LA_TAUS, TAU_NORMS, log_prior, logit_adjusted, readings_of, tau_normalised_logits
from .runtime import amp_dtype, rank_world

__all__ = ["Evaluator", "evaluate", "eval_batches", "shard_split", "GROUP_KEYS"]

GROUP_KEYS = ("top1", "many", "medium", "few", "worst_class")  # what history / by_inference_groups keep per reading


def eval_batches(split, image_size: int, batch_size: int = 512, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 image batches of a split in order: slices of in-memory pixels, or decoded files (resize + centre crop)."""
    if split.images is not None:
        for i in range(0, len(split), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(split.images[i : i + batch_size]))
        return
    from .data import FileDataset

    ds = FileDataset(split, train=False, image_size=image_size)
    for batch in torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        yield batch[0]


def shard_split(split, rank: int, world: int):
    """Samples ``rank::world`` of ``split`` (views of in-memory pixels, no copy); the shards partition it."""
    from .data import Split

    if world <= 1:
        return split
    return Split(
        labels=split.labels[rank::world],
        ids=split.ids[rank::world],
        images=None if split.images is None else split.images[rank::world],
        files=None if split.files is None else split.files[rank::world],
        image_size=split.image_size,
    )


class Evaluator:
    """Accumulates one split's predictions under every reading and post-hoc variant, batch by batch."""

    def __init__(self, model, class_counts, posthoc: bool = True):
        self.model = model
        self.default = model.inference
        self.readings = readings_of(model.fbh is not None)
        self.counts = np.asarray(class_counts, dtype=np.int64)
        self.posthoc = posthoc
        self.normed = bool(getattr(model.cdh, "normed", False))
        dev = model.cluster_to_class.device
        self.log_prior = log_prior(self.counts, model.plan.u_per_class, self.default).to(dev)
        self.weight = model.classifier_weight().detach()
        self.taunorms = () if (self.normed or not posthoc) else TAU_NORMS
        self.preds: dict[str, list[torch.Tensor]] = {}
        self.conf: list[torch.Tensor] = []
        self.p_true: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def _keep(self, name: str, log_probs: torch.Tensor) -> None:
        self.preds.setdefault(name, []).append(log_probs.argmax(dim=1).cpu())

    @torch.no_grad()
    def add(self, out, pooled: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.to(out.logits.device)
        for r in self.readings:
            lp = self.model.log_probs(out, r)
            self._keep(r, lp)
            if r == self.default:
                self.conf.append(lp.max(dim=1).values.exp().cpu())
                self.p_true.append(lp.gather(1, labels[:, None])[:, 0].exp().cpu())
                if self.posthoc:
                    for tau in LA_TAUS:
                        self._keep(f"la_tau{tau}", logit_adjusted(lp, self.log_prior, tau))
        for tau in self.taunorms:
            logits = tau_normalised_logits(pooled, self.weight, tau)
            self._keep(f"taunorm{tau}", self.model.log_probs(out._replace(logits=logits), self.default))
        self.labels.append(labels.cpu())

    def gather(self) -> None:
        """Replace this rank's per-sample results by every rank's (rank order); a collective call."""
        import torch.distributed as dist

        mine = {
            "preds": {k: torch.cat(v) for k, v in self.preds.items()},
            "conf": torch.cat(self.conf) if self.conf else torch.zeros(0),
            "p_true": torch.cat(self.p_true) if self.p_true else torch.zeros(0),
            "labels": torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.int64),
        }
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        self.preds = {k: [p["preds"][k] for p in parts if k in p["preds"]] for k in mine["preds"]}
        self.conf = [p["conf"] for p in parts]
        self.p_true = [p["p_true"] for p in parts]
        self.labels = [p["labels"] for p in parts]

    def predictions(self) -> dict[str, np.ndarray]:
        """Predicted class per sample under every reading and post-hoc variant (keys as in the report)."""
        return {k: torch.cat(v).numpy().astype(np.int64) for k, v in self.preds.items()}

    def report(self) -> dict[str, Any]:
        y = torch.cat(self.labels).numpy().astype(np.int64)
        preds = self.predictions()
        pred = preds[self.default]
        report = prediction_report(
            pred, y, self.counts, confidence=torch.cat(self.conf).double().numpy(), p_true=torch.cat(self.p_true).double().numpy()
        )
        report["reading"] = self.default
        full = {k: recall_report(p, y, self.counts) for k, p in preds.items()}
        groups = {k: {g: v for g, v in r.items() if g in GROUP_KEYS} for k, r in full.items()}
        report["by_inference"] = {r: groups[r]["top1"] for r in self.readings}
        report["by_inference_groups"] = {r: groups[r] for r in self.readings}
        report["posthoc"] = {k: float((p == y).mean() * 100.0) for k, p in preds.items() if k not in self.readings}
        # Searches choose a trial's reading / post-hoc variant on validation for any objective (worst class, few):
        # each variant's groups and per-class recall, and the training counts that define the groups.
        report["posthoc_groups"] = {k: g for k, g in groups.items() if k not in self.readings}
        report["per_class_by_variant"] = {k: r["per_class_recall"] for k, r in full.items()}
        report["class_counts"] = self.counts.tolist()
        return report


@torch.inference_mode()
def evaluate(
    model,
    split,
    data,
    cfg,
    device: torch.device,
    *,
    posthoc: bool = True,
    batch_size: int | None = None,
    distributed: bool = False,
) -> dict:
    """Every reading's metrics on ``split`` from one forward pass (see the module docstring).

    ``batch_size`` defaults to 1024 on CUDA (fewer launches) and 128 on CPU, where larger batches fall out of cache
    (ResNet-32 forward on 2 cores: 1,580 img/s at 128, 800 at 512). ``distributed``: every rank of the process
    group calls this with the same split; each scores its shard and all get the report of the whole split."""
    batch_size = batch_size or (1024 if device.type == "cuda" else 128)
    rank, world = rank_world() if distributed else (0, 1)
    split = shard_split(split, rank, world)
    was_training = model.training
    model.eval()
    amp = amp_dtype(cfg, device)
    ev = Evaluator(model, data.class_counts, posthoc=posthoc)
    labels = torch.as_tensor(np.asarray(split.labels, dtype=np.int64))
    seen = 0
    image_size = cfg.data.image_size or int(data.image_size)
    for x in eval_batches(split, image_size, batch_size, cfg.data.num_workers):
        x = to_nchw(x.to(device, non_blocking=True))
        if x.dtype == torch.uint8:
            x = normalize(x, data.mean, data.std, cfg.model.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out, pooled = model.outputs(x)
        out = out._replace(logits=out.logits.float(), fbh=None if out.fbh is None else out.fbh.float())
        ev.add(out, pooled.float(), labels[seen : seen + x.shape[0]])
        seen += x.shape[0]
    model.train(was_training)
    if world > 1:
        ev.gather()
    return ev.report()
