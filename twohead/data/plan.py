"""A dataset *plan*: which source rows form train / val / test, decided from labels alone.

Every builder first produces a :class:`DatasetPlan` (cheap: label columns, list files, directory listings),
then :meth:`DatasetPlan.materialize` decodes only the rows that survived LT sampling, the validation carve and
the smoke-run fractions. ``twohead describe`` stops after the plan, so it never decodes an image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from twohead.data.lt import check_nonempty, stratified_subsample
from twohead.data.sources import FileSource, _Source
from twohead.data.types import DataError, LTData, Split

__all__ = ["SplitPlan", "DatasetPlan", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR_MEAN", "CIFAR_STD"]

log = logging.getLogger("twohead.data")

# LDAM-DRW's cifar_train.py normalises both CIFAR-10 and CIFAR-100 with these (CIFAR-10 train statistics).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SplitPlan:
    source: _Source
    rows: np.ndarray  # positions in ``source``
    labels: np.ndarray  # int64, aligned with rows
    ids: np.ndarray  # int64 stable ids (index within the source split)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, idx: np.ndarray) -> SplitPlan:
        return SplitPlan(self.source, self.rows[idx], self.labels[idx], self.ids[idx])


@dataclass
class DatasetPlan:
    name: str
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: SplitPlan
    val: SplitPlan | None
    test: SplitPlan
    file_backed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_fractions(self, train_fraction: float, eval_fraction: float, seed: int) -> DatasetPlan:
        """Stratified, seeded subsets for smoke runs (every class keeps >= 1 sample in every split)."""
        if train_fraction >= 1 and eval_fraction >= 1:
            return self
        C, notes = self.num_classes, list(self.notes)
        train, val, test = self.train, self.val, self.test
        if train_fraction < 1:
            train = train.subset(stratified_subsample(train.labels, train_fraction, C, seed))
            notes.append(f"data.train_fraction={train_fraction:g}: stratified subset of {len(train)} training images")
        if eval_fraction < 1:
            test = test.subset(stratified_subsample(test.labels, eval_fraction, C, seed + 1))
            if val is not None:
                val = val.subset(stratified_subsample(val.labels, eval_fraction, C, seed + 2))
            notes.append(f"data.eval_fraction={eval_fraction:g}: stratified subsets of the validation and test splits")
        return replace(self, train=train, val=val, test=test, notes=notes)

    def counts(self) -> dict:
        """Per-class counts of every split, without decoding (``twohead describe``)."""
        C = self.num_classes
        tr = np.bincount(self.train.labels, minlength=C)
        out = {
            "dataset": self.name,
            "num_classes": C,
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "file_backed": self.file_backed,
            "train_counts": tr.tolist(),
            "train_total": int(tr.sum()),
            "imbalance": float(tr.max() / max(tr.min(), 1)),
            "val_counts": None if self.val is None else np.bincount(self.val.labels, minlength=C).tolist(),
            "val_total": 0 if self.val is None else len(self.val),
            "test_counts": np.bincount(self.test.labels, minlength=C).tolist(),
            "test_total": len(self.test),
            "notes": list(self.notes),
        }
        return out

    def materialize(self, skip_corrupt: bool = False) -> LTData:
        check_nonempty(
            np.bincount(self.train.labels, minlength=self.num_classes), self.class_names, f"the {self.name} train split"
        )
        skipped = 0
        notes = list(self.notes)
        splits: dict[str, Split | None] = {}
        for split_name, sp in (("train", self.train), ("val", self.val), ("test", self.test)):
            if sp is None:
                splits[split_name] = None
                continue
            if self.file_backed:
                if not isinstance(sp.source, FileSource):
                    raise DataError(f"{self.name} {split_name}: a file-backed split needs image files")
                splits[split_name] = Split(
                    sp.labels, sp.ids, files=[sp.source.paths[r] for r in sp.rows.tolist()], image_size=self.image_size
                )
                continue
            images, bad = sp.source.decode(sp.rows, self.image_size, skip_corrupt=skip_corrupt)
            if len(bad):
                log.warning(
                    "skipped %d undecodable image(s) in the %s %s split (data.skip_corrupt=true), first: %s",
                    len(bad),
                    self.name,
                    split_name,
                    sp.source.where(int(sp.rows[bad[0]])),
                )
                notes.append(f"{split_name}: skipped {len(bad)} undecodable images")
                skipped += len(bad)
                keep = np.setdiff1d(np.arange(len(sp)), bad)
                sp = sp.subset(keep)
            splits[split_name] = Split(sp.labels, sp.ids, images=images, image_size=self.image_size)
        data = LTData(
            name=self.name,
            class_names=list(self.class_names),
            num_classes=self.num_classes,
            image_size=self.image_size,
            mean=tuple(self.mean),
            std=tuple(self.std),
            train=splits["train"],
            val=splits["val"],
            test=splits["test"],
            skipped=skipped,
            notes=notes,
        )
        if skipped:  # skipping may have emptied a tail class (e.g. CIFAR-10-LT's rarest has 50 images)
            check_nonempty(data.class_counts, data.class_names, f"the {self.name} train split after skipping corrupt images")
        return data
