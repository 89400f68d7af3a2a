"""Evaluation metrics for long-tailed classification (paper Sec. 3.2, Table 3, Fig. 3).

Everything here returns plain Python ``int`` / ``float`` / ``list`` / ``None`` so the result can go
straight into ``metrics.json`` (``json.dumps(..., allow_nan=False)`` succeeds): undefined values such as the
mean recall of an empty class group are ``None``, never ``NaN``.

Conventions
-----------
* Accuracy-like numbers (``top1``, recalls, group means, ``ece``) are percentages in [0, 100].
* Class groups follow the paper (Sec. 3.2) and the ImageNet-LT convention (Liu et al., OLTR): *many* = more
  than 100 training images, *medium* = 20..100 inclusive, *few* = fewer than 20.
* Group means are the mean of the per-class recalls of the group's classes, i.e. a *class-balanced* average,
  not the accuracy over the pooled samples of the group. Classes without any evaluation sample have recall
  ``None`` and are left out of the means.
* ``confusion[i][j]`` counts samples of true class ``i`` predicted as ``j``. It is dense up to
  :data:`DENSE_CONFUSION_MAX_CLASSES` classes (CIFAR-10/100: <= 40k ints). Above that (ImageNet-LT: 1000
  classes, a dense matrix would be 1M ints in every ``metrics.json``) ``confusion`` is ``None`` and
  ``confusion_sparse`` holds the non-zero cells as ``[true, pred, count]`` triples, row-major; that list has at
  most ``min(N, C*C)`` entries and is mostly the diagonal for a trained model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is only needed by weight_norms(); keep numpy callers light
    import torch

__all__ = [
    "MANY_THRESHOLD",
    "FEW_THRESHOLD",
    "ECE_BINS",
    "DENSE_CONFUSION_MAX_CLASSES",
    "group_of_classes",
    "classification_report",
    "expected_calibration_error",
    "weight_norms",
    "cluster_weight_norms",
    "recall_report",
    "prediction_report",
]

#: a class is "many" if it has strictly more training images than this (paper Sec. 3.2)
MANY_THRESHOLD = 100
#: a class is "few" if it has strictly fewer training images than this; 20..100 inclusive is "medium"
FEW_THRESHOLD = 20
#: equal-width confidence bins for ECE (Guo et al. 2017; the MiSLAS [19] setting)
ECE_BINS = 15
#: above this many classes the confusion matrix is stored sparse (see module docstring)
DENSE_CONFUSION_MAX_CLASSES = 200

# probabilities are accepted if each row sums to 1 within this tolerance (float16/bfloat16 softmax outputs
# drift by ~1e-3); anything further off is almost certainly logits passed by mistake.
_ROW_SUM_ATOL = 1e-2
_NLL_EPS = 1e-12  # keeps -log p finite (and JSON-valid) when a model puts exactly 0 on the true class


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists etc.
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to an array: {exc}") from exc


def _counts_array(train_class_counts: Any) -> np.ndarray:
    counts = _to_numpy(train_class_counts, "train_class_counts")
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"train_class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise ValueError(f"train_class_counts must be numbers, got dtype {counts.dtype}")
    bad = np.flatnonzero(~np.isfinite(counts) | (counts < 0) | (counts != np.round(counts)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"train_class_counts must be non-negative integers; class {i} has {counts[i].item()!r}")
    return counts.astype(np.int64)


def group_of_classes(train_class_counts: Sequence[int] | np.ndarray) -> dict[str, list[int]]:
    """Split class indices into the paper's many / medium / few groups (Sec. 3.2, Table 3).

    many: ``count > 100``; medium: ``20 <= count <= 100``; few: ``count < 20``. Every class lands in exactly
    one group; a group may be empty (e.g. every CIFAR-10-LT class has > 100 images at imbalance 10).
    """
    counts = _counts_array(train_class_counts)
    return {
        "many": np.flatnonzero(counts > MANY_THRESHOLD).tolist(),
        "medium": np.flatnonzero((counts >= FEW_THRESHOLD) & (counts <= MANY_THRESHOLD)).tolist(),
        "few": np.flatnonzero(counts < FEW_THRESHOLD).tolist(),
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error in percent (Guo et al. 2017, as reported by MiSLAS [19]).

    ``confidence`` is the top-1 probability per sample and ``correct`` whether the top-1 prediction is right.
    The unit interval is cut into ``n_bins`` equal-width bins ``(lo, hi]`` (the first also takes 0) and
    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1 or confidence.size == 0:
        raise ValueError(f"confidence {confidence.shape} and correct {correct.shape} must be equal non-empty 1-D")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    # bin b covers (b/n, (b+1)/n]: ceil(conf * n) - 1, with conf == 0 folded into bin 0
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    # |sum acc - sum conf| / N == |B|/N * |mean acc - mean conf|, and is 0 for empty bins (no division)
    return float(np.abs(acc_sum - conf_sum).sum() / confidence.size * 100.0)


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def classification_report(
    probs: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    train_class_counts: Sequence[int] | np.ndarray,
) -> dict[str, Any]:
    """Top-1, per-class recall, many/medium/few means, ECE, NLL and confusion for class probabilities.

    Args:
        probs: ``[N, C]`` class probabilities (e.g. ``model.predict_proba``; rows must sum to 1 — pass
            softmax outputs, not logits). numpy or torch.
        labels: ``[N]`` true class indices in ``[0, C)``.
        train_class_counts: ``[C]`` training images per class; defines the many/medium/few groups.

    Returns:
        JSON-serialisable dict: ``top1``, ``per_class_recall`` (C entries, ``None`` for a class without
        evaluation samples), ``many``, ``medium``, ``few`` (``None`` for an empty group), ``worst_class`` (the
        lowest per-class recall), ``ece``, ``nll``
        (mean negative log-likelihood, nats), ``num_samples``, ``num_classes``, ``confusion`` (dense C x C
        list, or ``None`` above :data:`DENSE_CONFUSION_MAX_CLASSES` classes) and, in the sparse case,
        ``confusion_sparse``. See the module docstring for the conventions.

    Raises:
        ValueError: shape mismatch, non-finite or non-probability rows, or a label outside ``[0, C)``
            (the message names the offending value and its position).
    """
    p = _to_numpy(probs, "probs")
    y = _to_numpy(labels, "labels")
    counts = _counts_array(train_class_counts)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    n, c = p.shape
    if n == 0:
        raise ValueError("probs has no rows: cannot evaluate an empty split")
    if c != counts.size:
        raise ValueError(f"probs has {c} classes but train_class_counts has {counts.size}")
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match probs, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    out_of_range = np.flatnonzero((y < 0) | (y >= c))
    if out_of_range.size:
        i = int(out_of_range[0])
        raise ValueError(
            f"label {int(y[i])} at position {i} is outside [0, {c}) ({out_of_range.size} out-of-range label(s) in total)"
        )
    p = p.astype(np.float64)
    bad_rows = np.flatnonzero(
        ~np.all(np.isfinite(p), axis=1) | np.any(p < 0, axis=1) | (np.abs(p.sum(axis=1) - 1.0) > _ROW_SUM_ATOL)
    )
    if bad_rows.size:
        i = int(bad_rows[0])
        raise ValueError(
            f"probs row {i} is not a probability vector (sum={p[i].sum():.4g}, min={p[i].min():.4g}); "
            "pass softmax probabilities, not logits"
        )

    pred = p.argmax(axis=1)  # ties -> lowest class index, deterministic
    return prediction_report(pred, y, counts, confidence=p.max(axis=1), p_true=p[np.arange(n), y])


def prediction_report(
    pred: np.ndarray, labels: np.ndarray, train_class_counts: Any, *, confidence: np.ndarray, p_true: np.ndarray
) -> dict[str, Any]:
    """:func:`classification_report` from per-sample predictions, top-1 confidence and the true class's probability
    (what an evaluation keeps between batches instead of the [N, C] probabilities)."""
    counts = _counts_array(train_class_counts)
    pred, y = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    c = counts.size
    report, confusion = _recall_report(pred, y, counts)
    report.update(
        ece=expected_calibration_error(np.asarray(confidence, dtype=np.float64), pred == y),
        nll=float(-np.log(np.clip(np.asarray(p_true, dtype=np.float64), _NLL_EPS, None)).mean()),
        num_samples=int(y.size),
        num_classes=int(c),
    )
    if c <= DENSE_CONFUSION_MAX_CLASSES:
        report["confusion"] = confusion.tolist()
    else:
        rows, cols = np.nonzero(confusion)
        report["confusion"] = None
        report["confusion_sparse"] = np.stack([rows, cols, confusion[rows, cols]], axis=1).tolist()
    return report


def _recall_report(pred: np.ndarray, y: np.ndarray, counts: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    c = counts.size
    confusion = np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
    support = confusion.sum(axis=1)
    diag = np.diag(confusion)
    per_class: list[float | None] = [float(diag[k] / support[k] * 100.0) if support[k] > 0 else None for k in range(c)]
    groups = group_of_classes(counts)
    present = [v for v in per_class if v is not None]
    report = {
        "top1": float((pred == y).mean() * 100.0),
        "per_class_recall": per_class,
        "many": _mean_or_none([per_class[k] for k in groups["many"]]),
        "medium": _mean_or_none([per_class[k] for k in groups["medium"]]),
        "few": _mean_or_none([per_class[k] for k in groups["few"]]),
        "worst_class": float(min(present)) if present else None,
    }
    return report, confusion


def recall_report(
    pred: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    train_class_counts: Sequence[int] | np.ndarray,
) -> dict[str, Any]:
    """``top1``, ``per_class_recall``, ``many`` / ``medium`` / ``few`` and ``worst_class`` (the lowest per-class
    recall) of predicted class indices; the conventions of :func:`classification_report`."""
    counts = _counts_array(train_class_counts)
    pred = np.asarray(pred, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if pred.shape != y.shape or pred.ndim != 1 or pred.size == 0:
        raise ValueError(f"pred {pred.shape} and labels {y.shape} must be equal non-empty 1-D")
    bad = np.flatnonzero((y < 0) | (y >= counts.size) | (pred < 0) | (pred >= counts.size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"label {int(y[i])} / prediction {int(pred[i])} at position {i} is outside [0, {counts.size})")
    return _recall_report(pred, y, counts)[0]


def _classifier_rows(model: Any) -> tuple[Any, Any]:
    """(row norms [K] float64 CPU, cluster_to_class [K] long, num_classes) of the main classifier."""
    import torch

    inner = model
    for attr in ("module", "_orig_mod"):  # DistributedDataParallel, torch.compile
        if not hasattr(inner, "classifier_weight") and hasattr(inner, attr):
            inner = getattr(inner, attr)
    if not callable(getattr(inner, "classifier_weight", None)):
        raise TypeError(f"{type(model).__name__} has no classifier_weight() method; cannot compute weight norms")
    with torch.no_grad():
        w = inner.classifier_weight().detach()
        if w.ndim != 2:
            raise ValueError(f"classifier_weight() must be [K, D], got shape {tuple(w.shape)}")
        row_norms = torch.linalg.vector_norm(w.float(), dim=1).cpu().double()
    k = row_norms.numel()
    mapping = getattr(inner, "cluster_to_class", None)
    c2c = torch.arange(k) if mapping is None else torch.as_tensor(mapping).detach().cpu().long().flatten()
    if c2c.numel() != k:
        raise ValueError(f"cluster_to_class has {c2c.numel()} entries but the classifier has {k} rows")
    num_classes = getattr(inner, "num_classes", None)
    num_classes = int(num_classes) if num_classes is not None else int(c2c.max()) + 1
    if k and (int(c2c.min()) < 0 or int(c2c.max()) >= num_classes):
        bad = int(c2c[(c2c < 0) | (c2c >= num_classes)][0])
        raise ValueError(f"cluster_to_class contains class {bad}, outside [0, {num_classes})")
    return row_norms, c2c, num_classes


def weight_norms(model: Any) -> list[float]:
    """Per-class L2 norm of the main classifier's weight rows (the paper's Fig. 3, second row).

    With a class-division head the main classifier has K >= C rows, one per cluster (Sec. 2.2); the value of
    class ``c`` is then the **mean** row norm of its u_c clusters, the quantity comparable with a C-way classifier's
    row norm (a sum would credit a head class split into u_c clusters with about u_c times its norm and draw the
    opposite of the figure it redraws). Without CDH (K == C) this is the plain per-row norm;
    :func:`cluster_weight_norms` gives the K per-cluster norms.

    The model must expose ``classifier_weight() -> Tensor [K, D]`` and ``cluster_to_class`` (``[K]`` ints,
    tensor or array; ``None``/absent means identity). A DDP/``torch.compile`` wrapper is unwrapped via
    ``.module`` / ``._orig_mod``. The number of classes is ``model.num_classes`` when present, else
    ``max(cluster_to_class) + 1``.
    """
    import torch

    row_norms, c2c, num_classes = _classifier_rows(model)
    total = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, c2c, row_norms)
    n = torch.bincount(c2c, minlength=num_classes).double()
    return [float(t / m) if m > 0 else 0.0 for t, m in zip(total.tolist(), n.tolist())]


def cluster_weight_norms(model: Any) -> list[float]:
    """The L2 norm of each of the K rows of the main classifier (one per cluster, in cluster order)."""
    return [float(v) for v in _classifier_rows(model)[0]]
