"""The one training loop: outputs, checkpoint/resume, refusal to overwrite, every method end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic import synthetic, tiny_cfg  # noqa: E402 - tests/synthetic.py, data the tests build themselves

from twohead.config import METHODS, ConfigError, apply_overrides, load_config
from twohead.division import DivisionError
from twohead.loop import LocalReporter, RunExistsError, fit, lr_at


@pytest.mark.parametrize("preset", ["cifar10-lt", "cifar100-lt", "tiny-imagenet-lt"])
def test_lr_schedule_is_the_papers_bbn_recipe(preset):
    """0.1, x0.01 at each of epochs 120 and 160 (BBN's LR_FACTOR), after LDAM-DRW/BBN's 5-epoch linear warm-up."""
    cfg = load_config(preset=preset)
    want = {0: 0.02, 4: 0.1, 5: 0.1, 119: 0.1, 120: 0.001, 159: 0.001, 160: 1e-5, 199: 1e-5}
    assert {e: lr_at(cfg, e) for e in want} == pytest.approx(want, rel=1e-9)
    assert lr_at(apply_overrides(cfg, {"optim.lr_gamma": 0.1}), 160) == pytest.approx(0.001)  # still configurable


def test_cosine_schedule_of_imagenet_lt():
    cos = load_config(preset="imagenet-lt")
    assert lr_at(cos, 5) == pytest.approx(0.2) and lr_at(cos, 89) < 0.001


def test_fit_writes_resolved_config_history_metrics_and_plots(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"run.plots": True})
    result = fit(cfg, data=synthetic())
    out = tmp_path / cfg.run_name()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "top1",
        "per_class_recall",
        "many",
        "medium",
        "few",
        "ece",
        "val",
        "weight_norms",
        "wall_s",
        "torch",
        "by_inference",
        "posthoc",
        "cluster_seed",
    ):
        assert key in metrics
    assert metrics == json.loads(json.dumps(result))
    assert len(metrics["per_class_recall"]) == 3 and metrics["clusters_per_class"] == [3, 2, 1]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert "val_top1" in history[0] and "test_top1" in history[-1] and "test_top1" not in history[0]
    assert load_config(out / "config.yaml").to_dict() == cfg.to_dict()
    assert (out / "per_class_recall.png").stat().st_size > 0 and (out / "history.png").stat().st_size > 0


class Crash(LocalReporter):
    """Checkpoints like the default reporter, then dies after epoch `at` (a killed process)."""

    def __init__(self, out, at):
        super().__init__(out)
        self.at = at

    def report(self, metrics, make_state):
        super().report(metrics, make_state)
        if metrics["epoch"] == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = synthetic()
    a = tiny_cfg(tmp_path, **{"run.name": "a", "optim.epochs": 3, "method.name": "twohead_full"})
    fit(a, data=data)
    b = apply_overrides(a, {"run.name": "b"})
    with pytest.raises(KeyboardInterrupt):
        fit(b, data=data, reporter=Crash(tmp_path / "b", at=1))
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    fit(b, data=data)
    wa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    wb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert wa["epoch"] == wb["epoch"] == 3
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    hb = [json.loads(line)["epoch"] for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert hb == [1, 2, 3]
    # a finished run is not retrained: the same command returns its metrics
    again = fit(b, data=data)
    assert again["top1"] == json.loads((tmp_path / "b" / "metrics.json").read_text())["top1"]


def test_refuses_to_overwrite_another_runs_results(tmp_path):
    data = synthetic()
    cfg = tiny_cfg(tmp_path, **{"run.name": "x", "optim.epochs": 1, "optim.milestones": []})
    fit(cfg, data=data)
    before = (tmp_path / "x" / "metrics.json").read_bytes()
    other = apply_overrides(cfg, {"method.u": 2})
    with pytest.raises(RunExistsError, match="different config"):
        fit(other, data=data)
    assert (tmp_path / "x" / "metrics.json").read_bytes() == before
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="not empty"):
        fit(apply_overrides(cfg, {"run.name": "y"}), data=data)


def test_division_error_is_raised_before_anything_is_written(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"method.u": 400, "run.name": "z"})  # Eq. 3: the largest class needs 400 clusters
    data = synthetic(counts=[200, 3, 2])
    with pytest.raises(DivisionError, match="class 0 has 200 training samples but needs u_c=400"):
        fit(cfg, data=data)
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_reports_every_reading(tmp_path, method):
    cfg = tiny_cfg(tmp_path, **{"method.name": method, "optim.epochs": 2})
    result = fit(cfg, data=synthetic())
    spec = METHODS[method]
    readings = ["max", "sum", "fuse", "fbh"] if spec.fbh else ["max", "sum"]
    assert list(result["by_inference"]) == readings
    assert result["by_inference"][cfg.model.inference] == result["top1"]  # the headline is the default reading
    posthoc = ["la_tau0.5", "la_tau1.0", "la_tau1.5", "la_tau2.0"] + (
        [] if spec.normed_classifier else ["taunorm0.5", "taunorm1.0"]
    )
    assert list(result["posthoc"]) == posthoc
    assert len(result["weight_norms"]) == 3 and len(result["cluster_weight_norms"]) == sum(result["clusters_per_class"])
    history = [json.loads(x) for x in (tmp_path / cfg.run_name() / "history.jsonl").read_text().splitlines()]
    assert np.isfinite([h["train_loss"] for h in history]).all()
    for h in history:  # validation counterparts at every evaluation
        assert list(h["val_by_inference"]) == readings and list(h["val_posthoc"]) == posthoc
        assert h["val_by_inference"][cfg.model.inference] == h["val_top1"]
        assert set(h["val_by_inference_groups"]["max"]) == {"top1", "many", "medium", "few", "worst_class"}


def test_test_curve_records_the_best_epoch_beside_the_final_one(tmp_path):
    """run.test_curve: test top-1 every epoch from the first lr milestone on; the headline stays the final epoch."""
    cfg = tiny_cfg(tmp_path, **{"optim.epochs": 4, "optim.milestones": [2], "run.test_curve": True})
    result = fit(cfg, data=synthetic())
    history = [json.loads(x) for x in (tmp_path / cfg.run_name() / "history.jsonl").read_text().splitlines()]
    assert ["test_top1" in h for h in history] == [False, False, True, True]  # 0-based epochs 2, 3 (from milestone 2)
    best = result["test_best_over_epochs"]
    curve = {h["epoch"]: h["test_top1"] for h in history if "test_top1" in h}
    assert curve[4] == result["top1"]
    assert best["top1"] == max(curve.values()) and curve[best["epoch"]] == best["top1"] and best["from_epoch"] == 3
    plain = fit(apply_overrides(cfg, {"run.test_curve": False, "run.name": "plain"}), data=synthetic())
    assert plain["test_best_over_epochs"] is None and plain["top1"] == result["top1"]  # tracking changes nothing


def test_cluster_split_follows_the_run_seed_unless_pinned(tmp_path):
    from twohead.clusters import division_for

    data = synthetic()
    splits = [division_for(tiny_cfg(tmp_path, **{"optim.seed": s}), data)[1] for s in (0, 1, 2)]
    assert all(not np.array_equal(splits[i], splits[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    pinned = [division_for(tiny_cfg(tmp_path, **{"optim.seed": s, "method.cluster_seed": 7}), data)[1] for s in (0, 1)]
    assert np.array_equal(pinned[0], pinned[1])
    assert np.array_equal(splits[1], division_for(tiny_cfg(tmp_path, **{"optim.seed": 5, "method.cluster_seed": 1}), data)[1])


def test_two_head_learns_the_synthetic_task(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"optim.epochs": 6, "optim.milestones": [5], "optim.lr": 0.05})
    result = fit(cfg, data=synthetic())
    assert result["top1"] > 60  # chance is 33%


def test_file_backed_split_trains_through_the_dataloader(tmp_path):
    """Large images stay on disk: the DataLoader path (decode + RandomResizedCrop on workers) feeds the same loop."""
    from PIL import Image

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split, per in (("train", [12, 4]), ("test", [3, 3])):
        for c, n in enumerate(per):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    cfg = tiny_cfg(
        tmp_path / "runs",
        **{
            "data.dataset": "folder",
            "data.path": str(root),
            "data.val_per_class": 0,
            "data.image_size": 72,
            "data.num_workers": 0,
            "optim.batch_size": 4,
            "method.u": 2,
            "optim.epochs": 1,
            "optim.milestones": [],
        },
    )
    result = fit(cfg)
    assert result["num_samples"] == 6 and len(result["per_class_recall"]) == 2


def test_kmeans_division_on_features_of_a_checkpoint(tmp_path):
    data = synthetic()
    first = tiny_cfg(tmp_path, **{"run.name": "feat", "optim.epochs": 1, "optim.milestones": []})
    fit(first, data=data)
    ckpt = tmp_path / "feat" / "checkpoint.pt"
    cfg = tiny_cfg(
        tmp_path,
        **{
            "run.name": "km",
            "optim.epochs": 1,
            "optim.milestones": [],
            "method.clustering": "kmeans",
            "method.embedding": f"checkpoint:{ckpt}",
        },
    )
    result = fit(cfg, data=data)
    assert result["clusters_per_class"] == [3, 2, 1]
    bad = apply_overrides(cfg, {"run.name": "km2", "method.embedding": f"checkpoint:{tmp_path}/nope.pt"})
    with pytest.raises(ConfigError, match="method.embedding=checkpoint:.*nope.pt: file does not exist"):
        fit(bad, data=data)
