"""twohead.metrics (report, groups, ECE, weight norms) and twohead.plots (PNG files)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from twohead import plots
from twohead.metrics import (
    classification_report,
    cluster_weight_norms,
    expected_calibration_error,
    group_of_classes,
    recall_report,
    weight_norms,
)

# --------------------------------------------------------------------------- a hand-made 4-class example
# train counts: class 0 many (150), classes 1, 2 medium (100, 20: both boundaries inclusive), class 3 few (19)
COUNTS = [150, 100, 20, 19]
LABELS = [0, 0, 0, 1, 1, 2, 2, 3]
PREDS = [0, 0, 1, 1, 0, 2, 2, 0]
CONF = 0.7  # every sample puts 0.7 on its prediction and 0.1 on each other class


def _probs(preds, num_classes, conf):
    p = np.full((len(preds), num_classes), (1 - conf) / (num_classes - 1))
    p[np.arange(len(preds)), preds] = conf
    return p


def test_report_hand_computed():
    r = classification_report(_probs(PREDS, 4, CONF), np.array(LABELS), COUNTS)
    # correct: class 0 2/3, class 1 1/2, class 2 2/2, class 3 0/1 -> 5/8 overall
    assert r["top1"] == pytest.approx(62.5)
    assert r["per_class_recall"] == pytest.approx([200 / 3, 50.0, 100.0, 0.0])
    assert r["many"] == pytest.approx(200 / 3)
    assert r["medium"] == pytest.approx(75.0)  # class-balanced mean of 50 and 100, not 3/4 of pooled samples
    assert r["few"] == pytest.approx(0.0)
    assert r["worst_class"] == pytest.approx(0.0)  # class 3: 0/1
    assert recall_report(PREDS, LABELS, COUNTS) == {
        k: r[k] for k in ("top1", "per_class_recall", "many", "medium", "few", "worst_class")
    }
    # all 8 samples sit in the (0.667, 0.733] bin: |acc 0.625 - conf 0.7| = 7.5 %
    assert r["ece"] == pytest.approx(7.5)
    assert r["nll"] == pytest.approx((5 * -math.log(0.7) + 3 * -math.log(0.1)) / 8)
    assert r["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0], [1, 0, 0, 0]]
    assert r["num_samples"] == 8 and r["num_classes"] == 4
    json.dumps(r, allow_nan=False)  # plain python types only
    assert all(type(v) is float for v in r["per_class_recall"])


def test_report_accepts_torch_and_matches_numpy():
    p = _probs(PREDS, 4, CONF)
    r_np = classification_report(p, np.array(LABELS), COUNTS)
    r_t = classification_report(torch.tensor(p, dtype=torch.float32), torch.tensor(LABELS), torch.tensor(COUNTS))
    for key in ("top1", "many", "medium", "few", "ece", "nll"):
        assert r_t[key] == pytest.approx(r_np[key], rel=1e-5)
    assert r_t["confusion"] == r_np["confusion"]


def test_ece_two_bins_known_value():
    # 4 samples at confidence 0.95 with 3 right (|0.75-0.95| = 0.2), 4 at 0.55 with 2 right (|0.5-0.55| = 0.05)
    conf = np.array([0.95] * 4 + [0.55] * 4)
    correct = np.array([1, 1, 1, 0, 1, 1, 0, 0], dtype=bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 20 + 0.5 * 5)
    # the same through the report with 2 classes (confidence is the max probability)
    labels = np.array([0, 0, 0, 1, 0, 0, 1, 1])
    probs = np.array([[c, 1 - c] for c in conf])
    assert classification_report(probs, labels, [500, 50])["ece"] == pytest.approx(12.5)
    # perfectly confident and right -> 0
    assert expected_calibration_error(np.ones(5), np.ones(5, dtype=bool)) == 0.0


def test_ece_bins_are_separate():
    # 0.95 and 0.55 in ONE bin would give |0.625 - 0.75| = 12.5 (over-/under-confidence cancelling);
    # separate bins must not cancel: 0.95 all wrong, 0.55 all right -> (0.95 + 0.45) / 2 = 70 %
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([0, 0, 1, 1], dtype=bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(70.0)


@pytest.mark.parametrize("bad", [4, -1, 7])
def test_label_out_of_range_names_value(bad):
    labels = np.array([0, 1, bad, 2])
    with pytest.raises(ValueError, match=rf"label {bad} at position 2 is outside \[0, 4\)"):
        classification_report(_probs([0, 1, 2, 3], 4, 0.7), labels, COUNTS)


def test_bad_inputs_raise():
    p = _probs([0, 1], 4, 0.7)
    with pytest.raises(ValueError, match="4 classes but train_class_counts has 3"):
        classification_report(p, [0, 1], [10, 10, 10])
    with pytest.raises(ValueError, match="labels must have shape"):
        classification_report(p, [0, 1, 2], COUNTS)
    with pytest.raises(ValueError, match="row 1 is not a probability vector"):
        classification_report(np.array([[0.7, 0.1, 0.1, 0.1], [3.0, -1.0, 0.5, 0.2]]), [0, 1], COUNTS)
    with pytest.raises(ValueError, match="class 2 has -5"):
        classification_report(p, [0, 1], [10, 10, -5, 10])


def test_group_boundaries():
    counts = [101, 100, 99, 21, 20, 19, 0, 5000]
    g = group_of_classes(counts)
    assert g == {"many": [0, 7], "medium": [1, 2, 3, 4], "few": [5, 6]}


def test_empty_group_is_none_and_class_without_samples():
    # every class > 100 images (CIFAR-10-LT at imbalance 10): medium / few undefined -> None, JSON-valid
    r = classification_report(_probs([0, 1, 1], 3, 0.8), [0, 1, 1], [5000, 1000, 500])
    assert r["medium"] is None and r["few"] is None
    assert r["per_class_recall"] == [100.0, 100.0, None]  # class 2 has no evaluation sample
    assert r["many"] == pytest.approx(100.0)  # mean over classes that have samples
    json.dumps(r, allow_nan=False)


def test_confusion_sparse_above_200_classes():
    c, n = 250, 40
    rng = np.random.default_rng(0)
    labels = rng.integers(0, c, n)
    preds = np.where(np.arange(n) % 4 == 0, (labels + 1) % c, labels)  # every 4th sample wrong
    r = classification_report(_probs(preds, c, 0.9), labels, np.full(c, 50))
    assert r["confusion"] is None
    cells = {(t, p): k for t, p, k in r["confusion_sparse"]}
    expected: dict[tuple[int, int], int] = {}
    for t, p in zip(labels.tolist(), preds.tolist()):
        expected[(t, p)] = expected.get((t, p), 0) + 1
    assert cells == expected
    assert r["top1"] == pytest.approx(75.0)


# --------------------------------------------------------------------------- weight norms


class _StandIn(nn.Module):
    """The model surface the metrics read: classifier_weight() -> [K, D], cluster_to_class -> LongTensor [K]."""

    def __init__(self, rows, cluster_to_class=None, num_classes=None):
        super().__init__()
        self.fc = nn.Linear(2, len(rows), bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(rows, dtype=torch.float32))
        if cluster_to_class is not None:
            self.register_buffer("cluster_to_class", torch.tensor(cluster_to_class, dtype=torch.long))
        else:
            self.cluster_to_class = None
        if num_classes is not None:
            self.num_classes = num_classes

    def classifier_weight(self) -> torch.Tensor:
        return self.fc.weight


ROWS = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [6.0, 8.0], [0.0, 0.5]]  # row norms 5, 1, 2, 10, 0.5


def test_weight_norms_are_the_mean_cluster_norm_per_class_for_cdh():
    m = _StandIn(ROWS, cluster_to_class=[0, 0, 0, 1, 2])  # K=5 clusters -> C=3 classes
    assert weight_norms(m) == pytest.approx([(5 + 1 + 2) / 3, 10.0, 0.5])  # mean, comparable with a C-way row
    assert cluster_weight_norms(m) == pytest.approx([5.0, 1.0, 2.0, 10.0, 0.5])
    # clusters need not be contiguous
    m2 = _StandIn(ROWS, cluster_to_class=[2, 0, 2, 1, 0])
    assert weight_norms(m2) == pytest.approx([(1 + 0.5) / 2, 10.0, (5 + 2) / 2])


def test_weight_norms_without_cdh_and_wrapped():
    m = _StandIn(ROWS)  # K == C, no mapping
    assert weight_norms(m) == pytest.approx([5.0, 1.0, 2.0, 10.0, 0.5])

    class Wrapper(nn.Module):  # DDP-like: the real model under .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    out = weight_norms(Wrapper(_StandIn(ROWS, [0, 0, 0, 1, 2])))
    assert out == pytest.approx([8.0 / 3, 10.0, 0.5])
    json.dumps(out)


def test_weight_norms_errors():
    with pytest.raises(ValueError, match="cluster_to_class has 4 entries but the classifier has 5 rows"):
        weight_norms(_StandIn(ROWS, [0, 0, 1, 2]))
    with pytest.raises(ValueError, match="class 3, outside"):
        weight_norms(_StandIn(ROWS, [0, 0, 1, 2, 3], num_classes=3))
    with pytest.raises(TypeError, match="no classifier_weight"):
        weight_norms(nn.Linear(2, 3))


# --------------------------------------------------------------------------- plots


def _lt_counts(c=100, n_max=500, ratio=100):
    return np.floor(n_max * (1 / ratio) ** (np.arange(c) / (c - 1))).astype(int)  # CIFAR-100-LT profile


def _png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # full decode: a truncated file fails here
        return im.size


def _fake_metrics(counts, seed, tilt):
    rng = np.random.default_rng(seed)
    c = len(counts)
    recall = np.clip(90 - tilt * np.arange(c) / c * 80 + rng.normal(0, 5, c), 0, 100).tolist()
    norms = (1.0 + tilt * np.log(counts + 1) / 5).tolist()
    return {
        "top1": float(np.mean(recall)),
        "per_class_recall": recall,
        "many": 80.0,
        "medium": 50.0,
        "few": None,
        "weight_norms": norms,
    }


def test_plot_run_and_history(tmp_path):
    counts = _lt_counts()
    metrics = _fake_metrics(counts, 0, 1.0)
    metrics["per_class_recall"][5] = None  # a class without test samples draws as a gap, not an error
    history = [
        {"epoch": e, "lr": 0.1 * 0.5**e, "train_loss": 2.0 / e, "val_top1": 10.0 * e, "val_many": 12.0 * e} for e in range(1, 6)
    ]
    history[-1]["test_top1"] = 48.0
    out = tmp_path / "run"
    paths = plots.plot_run(metrics, counts, out, history=history)
    assert [p.name for p in paths] == ["train_counts.png", "per_class_recall.png", "weight_norms.png", "history.png"]
    w, h = plots.RUN_PANEL_SIZE
    for p in paths[:3]:
        assert _png_size(p) == (round(w * plots.DPI), round(h * plots.DPI))
    hw, hh = plots.HISTORY_SIZE
    assert _png_size(paths[3]) == (round(hw * plots.DPI), round(hh * plots.DPI))
    assert sorted(f.name for f in out.iterdir()) == sorted(p.name for p in paths)  # no temp files left behind

    # without weight norms / history only two panels; rewriting over existing files works
    del metrics["weight_norms"]
    assert [p.name for p in plots.plot_run(metrics, counts, out)] == ["train_counts.png", "per_class_recall.png"]


def test_plot_run_rejects_length_mismatch(tmp_path):
    counts = _lt_counts(10)
    with pytest.raises(ValueError, match="per_class_recall.*9 entries but class_counts has 10"):
        plots.plot_run({"per_class_recall": [50.0] * 9}, counts, tmp_path)
    with pytest.raises(ValueError, match="history is empty"):
        plots.plot_history([], tmp_path)


def test_plot_comparison_2x2(tmp_path):
    counts = _lt_counts()
    runs = {"CE": _fake_metrics(counts, 1, 1.0), "two-head": _fake_metrics(counts, 2, 0.2)}
    out = plots.plot_comparison(runs, counts, tmp_path / "cmp" / "fig3.png")
    w, h = plots.COMPARISON_PANEL_SIZE
    assert _png_size(out) == (round(2 * w * plots.DPI), round(2 * h * plots.DPI))
    # no weight norms at all -> only the top row
    for m in runs.values():
        del m["weight_norms"]
    out = plots.plot_comparison(runs, counts, tmp_path / "top_only.png")
    assert _png_size(out) == (round(2 * w * plots.DPI), round(h * plots.DPI))


def test_plot_u_sensitivity(tmp_path):
    values = [(10, 44.0), (1, 40.5), (5, 43.0), (20, 43.5), (10, 45.0)]  # unsorted, a repeated u
    out = plots.plot_u_sensitivity(values, tmp_path / "u.png", baseline=38.3)
    w, h = plots.U_SENSITIVITY_SIZE
    assert _png_size(out) == (round(w * plots.DPI), round(h * plots.DPI))
    with pytest.raises(ValueError, match=r"values\[1\].*not finite"):
        plots.plot_u_sensitivity([(1, 40.0), (5, float("nan"))], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "u.png"
    target.write_bytes(b"previous")
    from matplotlib.figure import Figure

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_u_sensitivity([(1, 40.0)], target)
    assert target.read_bytes() == b"previous"
    assert [f.name for f in tmp_path.iterdir()] == ["u.png"]


def test_imports_stay_light():
    code = (
        "import sys, twohead.metrics, twohead.plots; "
        "bad = [m for m in ('matplotlib', 'ray') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
