"""twohead.model_card: the card next to a run's checkpoint says what the weights are, and its load line loads them."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from synthetic import synthetic, tiny_cfg

import twohead
from twohead.loop import fit
from twohead.model_card import CARD_JSON, CARD_MD, build_card


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    cfg = tiny_cfg(tmp, **{"run.name": "c", "method.u": 3, "method.alpha": 0.7, "method.lam": 1.25})
    data = synthetic()
    metrics = fit(cfg, data=data)
    return tmp / "c", data, metrics


def test_the_card_states_method_paper_parameters_data_and_metrics(run):
    out, data, metrics = run
    card = json.loads((out / CARD_JSON).read_text())
    assert card["method"] == "twohead" and card["backbone"] == "resnet32"
    p = card["paper_parameters"]
    # Eq. 3 with u = 3 on counts [48, 16, 6]: u_c = 1 + ceil((n_c - 6) * 2 / 42) = [3, 1 + ceil(0.48), 1] = [3, 2, 1]
    assert (p["u"], p["alpha"], p["lambda"], p["clustering"]) == (3, 0.7, 1.25, "random")
    assert p["clusters_per_class"] == [3, 2, 1] and p["K"] == 6
    d = card["data"]
    assert (d["num_classes"], d["train_images"], d["n_max"], d["n_min"]) == (3, 70, 48, 6)
    # the training split's fingerprint, recomputed here from the labels and ids themselves
    h = hashlib.sha256(np.asarray(data.train.labels, dtype=np.int64).tobytes())
    h.update(np.asarray(data.train.ids, dtype=np.int64).tobytes())
    assert d["train_fingerprint"] == h.hexdigest()
    m = card["metrics"]
    assert m["finished"] and m["epoch"] == 2
    assert m["test"] == {k: metrics[k] for k in ("top1", "many", "medium", "few", "worst_class")}
    assert m["val"]["top1"] == metrics["val"]["top1"]
    env = card["environment"]
    assert env["torch"] == torch.__version__ and env["twohead"] == twohead.__version__


def test_the_load_line_loads_the_checkpoint_beside_it(run):
    out, data, metrics = run
    card = json.loads((out / CARD_JSON).read_text())
    scope: dict = {}
    exec("; ".join(card["load"]["python"].split("; ")[:2]), scope)  # "import twohead; clf = twohead.load(...)"
    clf = scope["clf"]
    pred = clf.predict(data.test.images)
    assert (np.asarray(pred.classes) == data.test.labels).mean() * 100 == pytest.approx(metrics["top1"])
    md = (out / CARD_MD).read_text()
    assert f"twohead.load('{out.resolve()}')" in md and "| u (Eq. 3) / K" in md and "3 / 6" in md


def test_an_unfinished_checkpoint_says_so():
    state = {
        "epoch": 1,
        "config": {"method": {"name": "ce"}, "model": {"backbone": "resnet8"}, "data": {"dataset": "x"}, "optim": {"epochs": 4}},
        "history": [{"epoch": 1, "train_loss": 2.0}],
        "class_counts": [5, 1],
        "clusters_per_class": [1, 1],
    }
    card = build_card(state, load_path="state.pt")
    assert card["metrics"]["finished"] is False and card["metrics"]["val"] is None and card["metrics"]["test"] is None
    assert card["load"]["note"] == "the path is relative to this checkpoint folder"
