"""Class division (paper Sec. 2.2): Eq. 3, cluster assignment, soft labels and the K-to-C map.

Class c is split into u_c clusters, u_c = 1 + ceil((n_c - n_1) / (n_C - n_1) * (u - 1)) with classes sorted by
training count (n_1 smallest, n_C largest), so the largest class gets u clusters and the smallest one. The K =
sum(u_c) clusters become the classes of the main (class-division) head, trained with soft labels: alpha on the
sample's own cluster and (1 - alpha) / (u_c - 1) on each sibling cluster of the same class (one-hot if u_c = 1).

Cluster ids are global: class c owns ids ``offsets[c] .. offsets[c] + u_c - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "clusters_per_class",
    "DivisionPlan",
    "assign_clusters",
    "soft_label_matrix",
    "pixel_embedding",
    "DivisionError",
]


class DivisionError(ValueError):
    """The class division cannot be made (bad u, a class smaller than its number of clusters, ...)."""


def clusters_per_class(class_counts: Sequence[int], u: int, rounding: str = "ceil") -> list[int]:
    """Eq. 3: the number of clusters u_c of each class, returned in the caller's class order.

    ``rounding`` is Eq. 3's "rounding operator": ``ceil`` as printed (the default) or ``round`` (nearest,
    halves up) as the alternative reading. Classes all of equal size get one cluster each.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0:
        raise DivisionError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if isinstance(u, bool) or int(u) != u or u < 1:
        raise DivisionError(f"u={u!r} must be an integer >= 1 (clusters of the largest class, Eq. 3)")
    if (counts < 1).any():
        c = int(np.flatnonzero(counts < 1)[0])
        raise DivisionError(f"class {c} has {int(counts[c])} training samples; every class needs at least 1")
    if rounding not in ("ceil", "round"):
        raise DivisionError(f"rounding={rounding!r} is unknown; allowed: ceil, round")
    # Sorting only defines n_1 = min and n_C = max; Eq. 3 is then evaluated per class in the caller's order.
    n1, nC = int(counts.min()), int(counts.max())
    if nC == n1:
        return [1] * len(counts)
    out = []
    for n in counts.tolist():
        # Exact rational arithmetic avoids ceil(2.0000000001) = 3 style float errors on ties.
        num, den = (n - n1) * (int(u) - 1), nC - n1
        if rounding == "ceil":
            extra = -(-num // den)
        else:
            extra = (2 * num + den) // (2 * den)
        out.append(1 + int(extra))
    return out


@dataclass(frozen=True)
class DivisionPlan:
    """How the C classes map to the K clusters of the class-division head."""

    u_per_class: tuple[int, ...]  # u_c, in class order

    @classmethod
    def from_counts(cls, class_counts: Sequence[int], u: int, rounding: str = "ceil") -> DivisionPlan:
        plan = cls(tuple(clusters_per_class(class_counts, u, rounding)))
        for c, (n, uc) in enumerate(zip(np.asarray(class_counts).tolist(), plan.u_per_class)):
            if n < uc:
                raise DivisionError(
                    f"class {c} has {n} training samples but needs u_c={uc} non-empty clusters (Eq. 3 with u={u}); lower method.u"
                )
        return plan

    @classmethod
    def identity(cls, num_classes: int) -> DivisionPlan:
        """One cluster per class: the plain C-way classifier (no class division)."""
        return cls((1,) * num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.u_per_class)

    @property
    def num_clusters(self) -> int:
        return int(sum(self.u_per_class))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.u_per_class)[:-1]]).astype(np.int64)

    @property
    def cluster_to_class(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_classes, dtype=np.int64), self.u_per_class)


def _split_equal(n: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """Random split of n samples into `parts` near-equal groups (sizes differ by at most one)."""
    local = np.arange(n) % parts
    rng.shuffle(local)
    return local


def assign_clusters(
    labels: np.ndarray,
    plan: DivisionPlan,
    method: str = "random",
    seed: int = 0,
    embedding: np.ndarray | None = None,
) -> np.ndarray:
    """Global cluster id (int64 in [0, K)) of every sample; every cluster is non-empty, deterministic per seed.

    ``random`` is the paper's default (Sec. 3.1); ``kmeans`` / ``hierarchical`` (Ward) cluster each class's
    rows of ``embedding`` (e.g. :func:`pixel_embedding` or backbone features) with scikit-learn (Fig. 4 right).
    """
    labels = np.asarray(labels, dtype=np.int64)
    C = plan.num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= C):
        bad = int(labels[(labels < 0) | (labels >= C)][0])
        raise DivisionError(f"label {bad} is outside [0, {C})")
    if method not in ("random", "kmeans", "hierarchical"):
        raise DivisionError(f"clustering method {method!r} is unknown; allowed: random, kmeans, hierarchical")
    if method != "random":
        if embedding is None:
            raise DivisionError(f"clustering method {method!r} needs a per-sample embedding")
        embedding = np.asarray(embedding, dtype=np.float32).reshape(len(labels), -1)
    out = np.empty(len(labels), dtype=np.int64)
    offsets = plan.offsets
    for c in range(C):
        idx = np.flatnonzero(labels == c)
        uc = plan.u_per_class[c]
        if len(idx) < uc:
            raise DivisionError(f"class {c} has {len(idx)} samples but needs u_c={uc} non-empty clusters")
        rng = np.random.default_rng([seed, c])
        if uc == 1:
            local = np.zeros(len(idx), dtype=np.int64)
        elif method == "random":
            local = _split_equal(len(idx), uc, rng)
        else:
            local = _cluster(embedding[idx], uc, method, int(rng.integers(2**31 - 1)))
        out[idx] = offsets[c] + local
    return out


def _cluster(x: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    if method == "kmeans":
        from sklearn.cluster import KMeans

        local = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    else:
        from sklearn.cluster import AgglomerativeClustering

        local = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
    return _fill_empty(local.astype(np.int64), k)


def _fill_empty(local: np.ndarray, k: int) -> np.ndarray:
    """Guarantee k non-empty clusters (k-means can return fewer on duplicate points): move one sample of the
    largest cluster into each empty one."""
    for empty in np.flatnonzero(np.bincount(local, minlength=k) == 0):
        biggest = int(np.argmax(np.bincount(local, minlength=k)))
        local[np.flatnonzero(local == biggest)[0]] = empty
    return local


def soft_label_matrix(plan: DivisionPlan, alpha: float):
    """[K, K] soft targets: row k is the soft label of a sample in cluster k (Sec. 2.2).

    alpha on k, (1 - alpha) / (u_c - 1) on the other clusters of the same class c, 0 elsewhere; rows of
    single-cluster classes are one-hot. Every row sums to 1.
    """
    import torch

    if not 0 < alpha <= 1:
        raise DivisionError(f"alpha={alpha} must be in (0, 1]")
    K = plan.num_clusters
    q = torch.zeros(K, K, dtype=torch.float32)
    for start, uc in zip(plan.offsets.tolist(), plan.u_per_class):
        if uc == 1:
            q[start, start] = 1.0
            continue
        block = torch.full((uc, uc), (1.0 - alpha) / (uc - 1))
        block.fill_diagonal_(alpha)
        q[start : start + uc, start : start + uc] = block
    return q


def pixel_embedding(images: np.ndarray, dim: int = 32, seed: int = 0, fit_max: int = 20000) -> np.ndarray:
    """Cheap default embedding for k-means / hierarchical division: PCA of down-sampled pixels.

    Images are uint8 [N, H, W, 3]; they are 2x average-pooled when larger than 16 px, flattened, standardised
    and projected on ``dim`` principal components fitted on at most ``fit_max`` samples.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(images, dtype=np.float32) / 255.0
    while x.shape[1] > 16:
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        x = x[:, :h, :w].reshape(x.shape[0], h // 2, 2, w // 2, 2, x.shape[3]).mean(axis=(2, 4))
    x = x.reshape(len(x), -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    dim = min(dim, x.shape[1], len(x))
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= fit_max else x[rng.choice(len(x), fit_max, replace=False)]
    return PCA(n_components=dim, random_state=seed).fit(fit).transform(x).astype(np.float32)


def describe_division(class_counts: Sequence[int], u: int, rounding: str = "ceil") -> list[dict]:
    """Rows (class, n_c, u_c) for `twohead describe`."""
    ucs = clusters_per_class(class_counts, u, rounding)
    return [{"class": c, "n": int(n), "u_c": uc} for c, (n, uc) in enumerate(zip(class_counts, ucs))]
