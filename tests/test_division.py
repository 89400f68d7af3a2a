"""Eq. 3, cluster assignment, soft labels and the K-to-C map (paper Sec. 2.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twohead.division import (
    DivisionError,
    DivisionPlan,
    assign_clusters,
    clusters_per_class,
    pixel_embedding,
    soft_label_matrix,
)


def eq3_float(counts, u):
    """Eq. 3 as printed, evaluated in floating point on the sorted counts (independent of the implementation)."""
    n1, nC = min(counts), max(counts)
    return [1 + math.ceil((n - n1) / (nC - n1) * (u - 1)) for n in counts]


def test_eq3_cifar10_lt_imbalance_100():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # LDAM's CIFAR-10-LT, beta = 100
    assert clusters_per_class(counts, 10) == eq3_float(counts, 10)
    got = clusters_per_class(counts, 10)
    assert got[0] == 10 and got[-1] == 1  # largest class -> u clusters, smallest -> 1
    assert got == sorted(got, reverse=True)


def test_eq3_any_class_order_is_returned_in_caller_order():
    counts = [50, 5000, 645, 2997, 83]
    order = np.argsort(counts)
    got = clusters_per_class(counts, 7)
    sorted_got = clusters_per_class(sorted(counts), 7)
    assert [got[i] for i in order] == sorted_got


def test_eq3_balanced_and_two_class_and_u1():
    assert clusters_per_class([100, 100, 100], 10) == [1, 1, 1]
    assert clusters_per_class([10, 1000], 5) == [1, 5]
    assert clusters_per_class([10, 1000, 37], 1) == [1, 1, 1]


def test_eq3_ties_get_equal_clusters():
    counts = [300, 20, 300, 160, 20]
    got = clusters_per_class(counts, 6)
    assert got[0] == got[2] == 6 and got[1] == got[4] == 1
    # (160 - 20) / 280 * 5 = 2.5 -> ceil 3 -> u_c = 4; "round" reads the operator as nearest (halves up) -> 4 too
    assert got[3] == 4


def test_eq3_exact_rational_ceil_and_round_differ():
    # (n - n1)/(nC - n1)*(u-1) = 1/3 * 3 = 1 exactly: ceil must not give 2 from float error
    assert clusters_per_class([1, 4, 10], 4) == [1, 2, 4]
    # 0.25 * 3 = 0.75: ceil -> 1 extra, round -> 1 extra; 0.1*3=0.3: ceil -> 1, round -> 0
    counts = [0 + 1, 11, 101]
    assert clusters_per_class(counts, 4, "ceil") == [1, 2, 4]
    assert clusters_per_class(counts, 4, "round") == [1, 1, 4]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_eq3_rejects_bad_u(bad):
    with pytest.raises(DivisionError, match="u="):
        clusters_per_class([10, 20], bad)


def test_eq3_rejects_empty_class_and_unknown_rounding():
    with pytest.raises(DivisionError, match="class 1 has 0"):
        clusters_per_class([10, 0, 5], 3)
    with pytest.raises(DivisionError, match="rounding"):
        clusters_per_class([10, 20], 3, rounding="floor")


def test_plan_offsets_and_map():
    plan = DivisionPlan((3, 1, 2))
    assert plan.num_clusters == 6
    assert plan.offsets.tolist() == [0, 3, 4]
    assert plan.cluster_to_class.tolist() == [0, 0, 0, 1, 2, 2]


def test_plan_rejects_class_smaller_than_its_clusters():
    with pytest.raises(DivisionError, match="class 1 has 3 training samples but needs u_c=4"):
        DivisionPlan.from_counts([1, 3, 4], 5)


@pytest.mark.parametrize("method", ["random", "kmeans", "hierarchical"])
def test_assignment_nonempty_within_class_and_deterministic(method):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [40, 9, 3])
    emb = rng.normal(size=(len(labels), 5)).astype(np.float32)
    plan = DivisionPlan.from_counts(np.bincount(labels), 4)
    a = assign_clusters(labels, plan, method, seed=1, embedding=emb)
    b = assign_clusters(labels, plan, method, seed=1, embedding=emb)
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < plan.num_clusters
    assert (np.bincount(a, minlength=plan.num_clusters) > 0).all()
    assert np.array_equal(plan.cluster_to_class[a], labels)  # every sample stays inside its own class


def test_random_split_is_near_equal_and_seeded():
    labels = np.zeros(103, dtype=np.int64)
    plan = DivisionPlan((10,))
    a = assign_clusters(labels, plan, "random", seed=0)
    sizes = np.bincount(a)
    assert sizes.max() - sizes.min() <= 1
    assert not np.array_equal(a, assign_clusters(labels, plan, "random", seed=1))


def test_kmeans_recovers_separated_groups():
    # two well separated blobs inside one class must become the two clusters
    emb = np.concatenate([np.zeros((20, 2)), np.full((20, 2), 10.0)]).astype(np.float32)
    labels = np.zeros(40, dtype=np.int64)
    for method in ("kmeans", "hierarchical"):
        a = assign_clusters(labels, DivisionPlan((2,)), method, embedding=emb)
        assert len(set(a[:20])) == 1 and len(set(a[20:])) == 1 and a[0] != a[20]


def test_assignment_errors():
    plan = DivisionPlan((2, 1))
    with pytest.raises(DivisionError, match="label 5 is outside"):
        assign_clusters(np.array([0, 5]), plan)
    with pytest.raises(DivisionError, match="needs a per-sample embedding"):
        assign_clusters(np.array([0, 0, 1]), plan, "kmeans")
    with pytest.raises(DivisionError, match="unknown"):
        assign_clusters(np.array([0, 0, 1]), plan, "spectral")


def test_soft_labels_rows_sum_to_one_and_values():
    plan = DivisionPlan((3, 1, 2))
    q = soft_label_matrix(plan, 0.5)
    assert torch.allclose(q.sum(1), torch.ones(6))
    assert q[0].tolist() == pytest.approx([0.5, 0.25, 0.25, 0, 0, 0])
    assert q[3].tolist() == [0, 0, 0, 1, 0, 0]  # single-cluster class: one-hot
    assert q[5].tolist() == pytest.approx([0, 0, 0, 0, 0.5, 0.5])  # u_c = 2: (1 - alpha) / 1 on the sibling
    assert torch.equal(soft_label_matrix(plan, 1.0), torch.eye(6))
    with pytest.raises(DivisionError, match="alpha"):
        soft_label_matrix(plan, 0.0)


def test_pixel_embedding_shape():
    imgs = np.random.default_rng(0).integers(0, 255, (50, 32, 32, 3), dtype=np.uint8)
    e = pixel_embedding(imgs, dim=8)
    assert e.shape == (50, 8) and e.dtype == np.float32
