"""Every reading and post-hoc variant of a validation pass, scored like the configured one (groups, per-class
recall), and what the loop keeps of it per epoch: the hand-built model of test_readings, values worked out by hand.

Searches choose a trial's variant on validation for any objective (rayjobs.search.objectives), so each variant needs the
worst class and the shot groups, not only top-1; the per-class recall feeds the accuracy-vs-frequency plots.
"""

from __future__ import annotations

import torch
from test_readings import COUNTS, EXPECTED, LABELS, X, hand_model

from twohead.evaluation import Evaluator
from twohead.loop import _val_entry


def _report() -> dict:
    model = hand_model()
    ev = Evaluator(model, COUNTS)
    with torch.no_grad():
        out, pooled = model.outputs(X)
    ev.add(out, pooled, LABELS)
    return ev.report()


def test_every_variant_has_groups_and_per_class_recall():
    report = _report()
    # labels [0, 1]; class 0 has 90 training images (medium), class 1 has 10 (few).
    # la_tau1.5 predicts [1, 1]: class 0 wrong, class 1 right -> recall [0, 100]
    assert report["posthoc_groups"]["la_tau1.5"] == {"top1": 50.0, "many": None, "medium": 0.0, "few": 100.0, "worst_class": 0.0}
    # taunorm1.0 predicts [0, 0] -> recall [100, 0]; la_tau0.5 predicts [1, 0] -> [0, 0]
    assert report["posthoc_groups"]["taunorm1.0"] == {"top1": 50.0, "many": None, "medium": 100.0, "few": 0.0, "worst_class": 0.0}
    assert report["posthoc_groups"]["la_tau0.5"]["top1"] == 0.0
    recall = {k: [100.0 * (p == y) for p, y in zip(pred, LABELS.tolist())] for k, pred in EXPECTED.items()}
    assert report["per_class_by_variant"] == recall
    assert report["class_counts"] == COUNTS
    # the top-1 of each post-hoc variant is the one it always had
    assert {k: g["top1"] for k, g in report["posthoc_groups"].items()} == report["posthoc"]


def test_a_history_line_keeps_every_variant_and_the_counts():
    report = _report()
    entry = _val_entry(report)
    assert entry["val_posthoc_groups"] == report["posthoc_groups"] and entry["val_ece"] == report["ece"]
    assert entry["val_per_class"] == {"counts": [90, 10], "recall": report["per_class_by_variant"]}
    assert set(entry["val_per_class"]["recall"]) == set(EXPECTED)
