"""Every test-time reading and post-hoc correction, against values worked out by hand.

The model is built by hand so its outputs are known: the "backbone" passes a 4-vector through as a 1x1 feature
map (D = 4, C = 2, so m = 2 and no projection); the K = 3 cluster rows (class 0 owns clusters 0 and 1, class 1
owns cluster 2) read one feature each; the FBH's class-0 kernel is zero and its class-1 kernel reads feature 3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from twohead.division import DivisionPlan
from twohead.evaluation import Evaluator
from twohead.model import TwoHeadModel
from twohead.readings import class_log_probs, readings_of, tau_normalised_logits


class PassThrough(nn.Module):
    out_channels = 4

    def forward(self, x):
        return x[:, :, None, None]


def hand_model(inference="max") -> TwoHeadModel:
    model = TwoHeadModel(PassThrough(), DivisionPlan((2, 1)), fbh=True, fbh_kernel=1, inference=inference)
    with torch.no_grad():
        model.cdh.fc.weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))  # row norms 2, 1, 1
        model.cdh.fc.bias.copy_(torch.tensor([0.2, -0.4, 0.5]))  # tau-normalisation must drop it
        model.fbh.conv.weight.copy_(torch.tensor([[0.0], [0.0], [0.0], [1.0]]).view(2, 2, 1, 1))
    return model.eval()


# Sample A: cluster logits [2, 2, 2.5], FBH logits [0, 1].  Sample B: cluster logits [3.6, 0, 2], FBH [0, -2].
# Inputs solved for those logits through the rows (2, 1, 1 on features 0, 1, 2) and the bias (0.2, -0.4, 0.5).
X = torch.tensor([[0.9, 2.4, 2.0, 1.0], [1.7, 0.4, 1.5, -2.0]])
LABELS = torch.tensor([0, 1])
COUNTS = [90, 10]  # class 0 split into u_0 = 2 clusters, class 1 into 1

# Worked out by hand:
# max : A classes [2, 2.5] -> 1;  B [3.6, 2] -> 0
# sum : A [2e^2, e^2.5] = [14.78, 12.18] -> 0;  B [e^3.6 + 1, e^2] -> 0
# fbh : A [0, 1] -> 1;  B [0, -2] -> 0
# fuse: A 0.5 * ([0.548, 0.452] + [0.269, 0.731]) = [0.409, 0.591] -> 1;  B -> 0 (both heads say 0)
# la  : on max the prior is per cluster, n_c / u_c = [45, 10]: class-1 margin = (max-score gap) + tau * ln 4.5 (1.504).
#       A: +0.5 + tau*1.504 > 0 -> 1 for every tau;  B: -1.6 + tau*1.504 -> 0 at tau 0.5 and 1.0, 1 at 1.5 and 2.0
# taunorm: rows / norm^tau and NO bias. tau 1: A [0.9, 2.4, 2.0] -> class scores [2.4, 2.0] -> 0, B [1.7, 0.4, 1.5]
#          -> [1.7, 1.5] -> 0; tau 0.5: A [1.27, 2.4, 2.0] -> 0, B [2.40, 0.4, 1.5] -> 0 (keeping the bias would
#          make A [1.1, 2.0, 2.5] -> 1 at tau 1)
EXPECTED = {
    "max": [1, 0],
    "sum": [0, 0],
    "fbh": [1, 0],
    "fuse": [1, 0],
    "la_tau0.5": [1, 0],
    "la_tau1.0": [1, 0],
    "la_tau1.5": [1, 1],
    "la_tau2.0": [1, 1],
    "taunorm0.5": [0, 0],
    "taunorm1.0": [0, 0],
}


def test_hand_model_outputs_are_the_designed_logits():
    out = hand_model()(X)
    assert torch.allclose(out.logits, torch.tensor([[2.0, 2.0, 2.5], [3.6, 0.0, 2.0]]))
    assert torch.allclose(out.fbh, torch.tensor([[0.0, 1.0], [0.0, -2.0]]))


def test_every_reading_and_posthoc_prediction_matches_the_hand_calculation():
    model = hand_model()
    ev = Evaluator(model, COUNTS)
    with torch.no_grad():
        out, pooled = model.outputs(X)
    ev.add(out, pooled, LABELS)
    preds = {k: v.tolist() for k, v in ev.predictions().items()}
    assert preds == EXPECTED
    report = ev.report()
    # labels [0, 1]: max [1, 0] gets none right, sum [0, 0] gets A, la_tau1.5 [1, 1] gets B
    assert report["by_inference"] == {"max": 0.0, "sum": 50.0, "fuse": 0.0, "fbh": 0.0}
    assert report["posthoc"] == {
        "la_tau0.5": 0.0,
        "la_tau1.0": 0.0,
        "la_tau1.5": 50.0,
        "la_tau2.0": 50.0,
        "taunorm0.5": 50.0,
        "taunorm1.0": 50.0,
    }
    assert report["top1"] == 0.0 and report["reading"] == "max"
    # class 0 has 90 training images (medium: 20..100), class 1 has 10 (few): sum gets class 0 right, class 1 wrong
    assert report["by_inference_groups"]["sum"] == {"top1": 50.0, "many": None, "medium": 100.0, "few": 0.0, "worst_class": 0.0}


def test_reading_probabilities_match_closed_forms():
    model = hand_model()
    out = model(X[:1])
    e = math.exp
    p_sum0 = (e(2) + e(2)) / (e(2) + e(2) + e(2.5))
    assert model.probs(out, "sum")[0].tolist() == pytest.approx([p_sum0, 1 - p_sum0], rel=1e-6)
    p_max1 = e(2.5) / (e(2) + e(2.5))
    assert model.probs(out, "max")[0].tolist() == pytest.approx([1 - p_max1, p_max1], rel=1e-6)
    p_fbh1 = e(1) / (1 + e(1))
    assert model.probs(out, "fbh")[0].tolist() == pytest.approx([1 - p_fbh1, p_fbh1], rel=1e-6)
    assert model.probs(out, "fuse")[0].tolist() == pytest.approx(
        [0.5 * (p_sum0 + 1 - p_fbh1), 0.5 * (1 - p_sum0 + p_fbh1)], rel=1e-6
    )


def test_sum_reading_does_not_underflow():
    """A class whose every cluster is far below the best still gets a finite log-probability."""
    logits = torch.tensor([[0.0, -200.0, -200.0]])
    lp = class_log_probs("sum", logits, torch.tensor([0, 1, 1]), 2)
    assert torch.isfinite(lp).all()
    assert lp[0, 1].item() == pytest.approx(-200.0 + math.log(2), abs=1e-3)


def test_default_reading_and_readings_without_fbh():
    assert hand_model("sum").inference == "sum"
    assert readings_of(False) == ("max", "sum") and readings_of(True) == ("max", "sum", "fuse", "fbh")
    with pytest.raises(ValueError, match="needs the feature-balancing head"):
        class_log_probs("fbh", torch.zeros(1, 3), torch.tensor([0, 0, 1]), 2)


def test_tau_normalisation_rescales_rows_and_drops_the_bias():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # norms 5 and 2
    f = torch.tensor([[1.0, 1.0]])
    assert tau_normalised_logits(f, w, 1.0)[0].tolist() == pytest.approx([7 / 5, 2 / 2])
    assert tau_normalised_logits(f, w, 0.5)[0].tolist() == pytest.approx([7 / 5**0.5, 2 / 2**0.5])
    assert tau_normalised_logits(f, w, 0.0)[0].tolist() == pytest.approx([7.0, 2.0])


def test_no_class_division_makes_max_and_sum_the_same_classifier():
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    c2c = torch.arange(5)
    assert torch.allclose(class_log_probs("max", logits, c2c, 5), class_log_probs("sum", logits, c2c, 5), atol=1e-6)
    assert torch.allclose(class_log_probs("max", logits, c2c, 5), logits.log_softmax(1), atol=1e-6)
    np.testing.assert_array_equal(class_log_probs("max", logits, c2c, 5).argmax(1), logits.argmax(1))


def test_logit_adjustment_prior_follows_the_reading():
    """max reads cluster logits trained on n_c / u_c per cluster; sum / fuse / fbh read class probabilities (n_c)."""
    from twohead.readings import log_prior

    counts, u = [90, 10], [2, 1]
    assert log_prior(counts, u, "max").tolist() == pytest.approx([math.log(45 / 55), math.log(10 / 55)], rel=1e-6)
    for reading in ("sum", "fuse", "fbh"):
        assert log_prior(counts, u, reading).tolist() == pytest.approx([math.log(0.9), math.log(0.1)], rel=1e-6)


def test_a_cosine_classifier_is_read_at_ldam_scale():
    """LDAM trains s * cos; probabilities and every post-hoc score must read the same scaled logits."""
    from twohead.config import TrainConfig, apply_overrides
    from twohead.model import create_model

    cfg = apply_overrides(TrainConfig(), {"method.name": "ldam", "method.ldam_s": 30.0})
    model = create_model(cfg, [50, 20, 5]).eval()
    out, _ = model.outputs(torch.randn(4, 3, 32, 32))
    assert out.logits.abs().max() <= 1.0 + 1e-6  # cosines, as the loss expects them
    want = (30.0 * out.logits).log_softmax(1)
    assert torch.allclose(model.log_probs(out), want, atol=1e-5)
