"""Long-tailed subsets exactly as LDAM-DRW draws them, the balanced validation reserve, and stratified fractions.

LDAM-DRW (Cao et al. 2019, ``imbalance_cifar.py``) -- the protocol the paper's CIFAR / Tiny-ImageNet numbers
follow (Sec. 3.1) -- keeps, for class c of C (in label order),

    n_c = int(n_max * (1 / imbalance) ** (c / (C - 1))),     n_max = len(train) / C,

images: it calls ``np.random.seed(0)`` once, then for c = 0 .. C-1 takes ``idx = np.where(targets == c)[0]``,
``np.random.shuffle(idx)`` and keeps ``idx[:n_c]``. :func:`ldam_lt_split` replays that procedure draw for draw
(``RandomState(seed).shuffle`` is the same Mersenne-Twister stream as the global ``np.random`` after
``np.random.seed``), so with ``val_per_class=0`` it returns LDAM's subset image for image.

Validation reserve (this toolkit, so nothing is ever selected on the test set): the last ``v`` entries of each
class's shuffled list become the balanced validation split. They are never among LDAM's first n_c unless
n_c > n_pool - v, which only happens for the head class (n_0 = n_max = n_pool); such a class is capped at
n_pool - v. On CIFAR-10 at imbalance 100 with v = 20 the train subset is LDAM's minus 20 class-0 images
(12,386 instead of 12,406); every other class is LDAM's exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from twohead.data.types import DataError

__all__ = [
    "ldam_counts",
    "ldam_lt_split",
    "LTSelection",
    "carve_val",
    "stratified_subsample",
    "check_labels",
    "check_nonempty",
]


def ldam_counts(n_max: float, num_classes: int, imbalance: float) -> list[int]:
    """LDAM-DRW's exponential profile: ``int(n_max * (1/imbalance) ** (c / (C-1)))`` for c = 0 .. C-1.

    Evaluated with the same float operations as LDAM's ``img_max * imb_factor**(cls_idx / (cls_num - 1.0))``
    (``1/imbalance`` is bit-identical to their ``imb_factor`` literal for 10, 50, 100), so the integer
    truncation lands on the same side: CIFAR-10 at 100 sums to 12,406 and CIFAR-100 at 100 to 10,847.
    """
    if num_classes < 1:
        raise DataError(f"num_classes={num_classes} must be >= 1")
    if imbalance < 1:
        raise DataError(f"imbalance={imbalance} must be >= 1 (n_max / n_min)")
    if num_classes == 1:
        return [int(n_max)]
    factor = 1.0 / float(imbalance)
    return [int(n_max * (factor ** (c / (num_classes - 1.0)))) for c in range(num_classes)]


@dataclass
class LTSelection:
    """Positions (into the labels passed in) of the LT train subset and of the validation reserve."""

    train: np.ndarray  # int64, class by class in LDAM's order (class 0's shuffled picks first)
    val: np.ndarray  # int64, class by class, v per class
    counts: list[int]  # train images actually kept per class
    target: list[int]  # LDAM's n_c before any cap
    notes: list[str] = field(default_factory=list)


def ldam_lt_split(
    labels: np.ndarray,
    num_classes: int,
    imbalance: float,
    seed: int = 0,
    val_per_class: int = 0,
    class_names: Sequence[str] | None = None,
) -> LTSelection:
    """LDAM-DRW's long-tailed subset of a balanced train split, plus a disjoint balanced validation reserve.

    See the module docstring for the exact procedure. ``labels`` must be in the source split's official order
    (LDAM indexes torchvision's arrays). A class with n_c > n_pool - val_per_class is capped at
    n_pool - val_per_class and the cap is recorded in ``notes`` (and shown by ``twohead describe``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    v = int(val_per_class)
    if v < 0:
        raise DataError(f"val_per_class={v} must be >= 0")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    pools = np.bincount(labels, minlength=num_classes)
    # LDAM zips np.unique(targets) with the count list: an empty class would shift every later class's count,
    # so the replay is only exact (and meaningful) when every class is present.
    check_nonempty(pools, names, "the source train split")
    target = ldam_counts(len(labels) / num_classes, num_classes, imbalance)
    rng = np.random.RandomState(seed)
    train_parts, val_parts, counts, notes = [], [], [], []
    for c in range(num_classes):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)  # the draw LDAM makes for this class, whatever we keep afterwards
        n_pool = len(idx)
        if v and n_pool - v < 1:
            raise DataError(f"class {c} ({names[c]}) has {n_pool} training images; data.val_per_class={v} needs at least {v + 1}")
        keep = min(target[c], n_pool - v)
        if v and target[c] > n_pool - v:
            notes.append(
                f"class {c} ({names[c]}): LDAM count {target[c]} capped at {keep} = {n_pool} - {v} so the "
                f"data.val_per_class={v} validation images stay disjoint from the train subset"
            )
        elif target[c] > n_pool:
            notes.append(f"class {c} ({names[c]}): LDAM count {target[c]} exceeds the {n_pool} images available")
        if keep < 1:
            raise DataError(
                f"class {c} ({names[c]}) gets {target[c]} training images at imbalance {imbalance:g} "
                f"(n_max {len(labels) / num_classes:g}); lower data.imbalance"
            )
        train_parts.append(idx[:keep])
        val_parts.append(idx[n_pool - v :] if v else idx[:0])
        counts.append(int(keep))
    return LTSelection(
        train=np.concatenate(train_parts).astype(np.int64),
        val=np.concatenate(val_parts).astype(np.int64),
        counts=counts,
        target=target,
        notes=notes,
    )


def carve_val(
    labels: np.ndarray,
    num_classes: int,
    val_per_class: int,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Split an already long-tailed train set into (train, val) positions with ``val_per_class`` per class.

    Same convention as :func:`ldam_lt_split`: the last v entries of each class's seeded shuffle go to val.
    A class with fewer than 2v images gives at most half of them (floor) so it keeps most of its training
    data; such classes are listed in the returned notes (the val split is then not perfectly balanced).
    """
    labels = np.asarray(labels, dtype=np.int64)
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    v = int(val_per_class)
    rng = np.random.RandomState(seed)
    train_parts, val_parts, short = [], [], []
    for c in range(num_classes):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        take = min(v, len(idx) // 2)
        if take < v:
            short.append(f"{c} ({names[c]}): {take}")
        train_parts.append(idx[: len(idx) - take])
        val_parts.append(idx[len(idx) - take :])
    notes = []
    if short:
        notes.append(
            f"{len(short)} classes have fewer than 2 x data.val_per_class={v} images and give only half to "
            f"validation: " + ", ".join(short[:10]) + (" ..." if len(short) > 10 else "")
        )
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts)), notes


def stratified_subsample(labels: np.ndarray, fraction: float, num_classes: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a seeded, stratified ``fraction`` of ``labels``: ``max(1, round(fraction * n_c))`` per
    class (capped at n_c), so every class present keeps at least one sample and the class profile is preserved.

    For smoke runs only (``data.train_fraction`` / ``data.eval_fraction`` < 1). The class-division head needs
    at least u_c samples of class c (Eq. 3); a tiny train fraction can violate that, which the caller checks.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 < fraction <= 1:
        raise DataError(f"fraction={fraction} must be in (0, 1]")
    if fraction == 1:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        k = min(len(idx), max(1, int(round(fraction * len(idx)))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, dtype=np.int64)


def check_labels(labels: np.ndarray, num_classes: int, where: Callable[[int], str]) -> None:
    """Raise :class:`DataError` naming the first label outside [0, num_classes) via ``where(position)``."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"label {int(labels[i])} at {where(i)} is outside [0, {num_classes}){more}")


def check_nonempty(counts: np.ndarray, class_names: Sequence[str], what: str) -> None:
    """Raise :class:`DataError` naming the first class with no sample in ``counts``."""
    empty = np.flatnonzero(np.asarray(counts) == 0)
    if len(empty):
        c = int(empty[0])
        more = f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else ""
        raise DataError(f"class {c} ({class_names[c]}) has no images in {what}{more}; every class needs at least one")
