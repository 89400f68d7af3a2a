"""twohead.tracking: a real tiny run logged to a real MLflow store (SQLite) and TensorBoard event files, read back
with MLflow's own client and TensorBoard's own event reader, compared with what the run folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from synthetic import synthetic, tiny_cfg

from twohead import cli
from twohead.loop import fit
from twohead.tracking import TrackingSettings, open_tracking, resolve_uri

mlflow = pytest.importorskip("mlflow")


def _uri(tmp_path: Path) -> str:
    return resolve_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _history(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines() if ln.strip()]


def _dotted(d: dict, prefix: str = "") -> dict:
    """config.yaml flattened by hand, the way --set names keys (lists as Python lists)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(list(v)) if isinstance(v, (list, tuple)) else str(v)
    return out


def _runs(uri: str, experiment: str = "twohead"):
    """The experiment's runs, read with a client of its own (MLflow's process-wide URI stays MLflow's default)."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp is not None else []


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    cfg = tiny_cfg(tmp / "runs", **{"run.name": "t", "run.plots": True, "optim.epochs": 3, "optim.milestones": [2]})
    settings = TrackingSettings(mlflow_uri=_uri(tmp), tensorboard=True)
    with open_tracking(settings) as tracking:
        result = fit(cfg, data=synthetic(), tracking=tracking)
    return tmp, tmp / "runs" / "t", settings.mlflow_uri, result


def test_params_metrics_and_artifacts_equal_the_run_folder(tracked):
    _, out, uri, result = tracked
    (run,) = _runs(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert run.data.tags["twohead.run"] == str(out.resolve()) and run.data.tags["twohead.method"] == "twohead"
    assert run.data.params == _dotted(yaml.safe_load((out / "config.yaml").read_text()))

    client = mlflow.MlflowClient(uri)
    history = _history(out)
    for key in ("train_loss", "lr", "train_img_per_s", "val_top1", "val_medium", "val_few", "val_worst_class", "val_ece"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert points == [(h["epoch"], pytest.approx(h[key])) for h in history], key
    # nested readings and post-hoc variants of every epoch, under outer/inner names
    for h in history:
        for variant, groups in h["val_posthoc_groups"].items():
            got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"val_posthoc_groups/{variant}/top1")}
            assert got[h["epoch"]] == pytest.approx(groups["top1"])
    # the final test metrics of every reading and post-hoc variant, at step = epochs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    final = run.data.metrics
    assert final["test/top1"] == pytest.approx(metrics["top1"])
    for reading, top1 in metrics["by_inference"].items():
        assert final[f"test/by_inference/{reading}"] == pytest.approx(top1)
    for variant, groups in metrics["posthoc_groups"].items():
        for g, v in groups.items():
            if v is None:  # a group without classes (few: none in this split) is not a number to plot
                assert f"test/posthoc_groups/{variant}/{g}" not in final
            else:
                assert final[f"test/posthoc_groups/{variant}/{g}"] == pytest.approx(v)
    assert final["run/wall_s"] == pytest.approx(metrics["wall_s"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/top1")] == [3]

    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    expected = sorted(p.name for p in out.iterdir() if p.suffix == ".png") + [
        "config.yaml",
        "metrics.json",
        "model_card.json",
        "model_card.md",
    ]
    assert artifacts == sorted(expected) and any(a.endswith(".png") for a in artifacts)
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="metrics.json", tracking_uri=uri))
    assert json.loads(local.read_text()) == metrics


def test_tensorboard_events_equal_the_history(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, _, result = tracked
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    history = _history(out)
    for key in ("train_loss", "val_top1", "val_by_inference/fuse"):
        outer, _, inner = key.partition("/")
        want = [(h["epoch"], h[outer][inner] if inner else h[outer]) for h in history]
        assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars(key)] == want, key
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("test/top1")] == [(3, result["top1"])]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    """Ctrl-C after epoch 1's checkpoint: the MLflow run ends KILLED; the rerun continues the same run (no second
    one), epoch 1 logged once, and ends FINISHED."""
    from twohead.runs import LocalReporter

    cfg = tiny_cfg(tmp_path / "runs", **{"run.name": "r", "optim.epochs": 2})
    settings = TrackingSettings(mlflow_uri=_uri(tmp_path))

    class StopAfterFirst(LocalReporter):
        def report(self, metrics, make_state):
            super().report(metrics, make_state)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with open_tracking(settings) as tracking:
            fit(cfg, data=synthetic(), tracking=tracking, reporter=StopAfterFirst(tmp_path / "runs" / "r"))
    (first,) = _runs(settings.mlflow_uri)
    assert first.info.status == "KILLED"

    with open_tracking(settings) as tracking:
        fit(cfg, data=synthetic(), tracking=tracking)
    (run,) = _runs(settings.mlflow_uri)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient(settings.mlflow_uri).get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2]


def test_a_tracking_store_that_stops_answering_costs_a_warning_not_the_run(tmp_path, monkeypatch, caplog):
    import mlflow.tracking.client

    cfg = tiny_cfg(tmp_path / "runs", **{"run.name": "w"})
    settings = TrackingSettings(mlflow_uri=_uri(tmp_path))

    def down(*a, **k):
        raise ConnectionError("the tracking server went away")

    with open_tracking(settings) as tracking:
        tracking.start(cfg, tmp_path / "runs" / "w")  # the run exists in MLflow; then the server goes away
        monkeypatch.setattr(mlflow.tracking.client.MlflowClient, "log_batch", down)
        result = fit(cfg, data=synthetic(), tracking=tracking)
    assert json.loads((tmp_path / "runs" / "w" / "metrics.json").read_text())["top1"] == pytest.approx(result["top1"])
    warned = [r.getMessage() for r in caplog.records if "MLflow: could not log" in r.getMessage()]
    assert len(warned) == 1 and "the tracking server went away" in warned[0], warned


def test_train_cli_logs_to_the_default_store_of_the_working_folder(tmp_path, monkeypatch, data_root):
    """``twohead train --mlflow`` without a URI: MLflow's default, sqlite:///mlflow.db in the working folder (what
    ``mlflow ui`` opens there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # A search earlier in this test process set MLflow's process-wide URI (Ray's callback does): back to the default.
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    args = ["train", "--preset", "smoke", "--out", "runs", "--name", "c", "--mlflow", "--mlflow-experiment", "lt"]
    args += ["--set", "data.train_fraction=0.02", "--set", "data.eval_fraction=0.02", "--set", "optim.epochs=1"]
    args += ["--set", "optim.milestones=[]", "--set", "run.plots=false", "--set", "run.progress=false"]
    assert cli.main(args) == 0
    (run,) = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "lt")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/top1"] == pytest.approx(json.loads((tmp_path / "runs/c/metrics.json").read_text())["top1"])


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--mlflow", "nosuchscheme://x"], "--mlflow nosuchscheme://x: cannot use this tracking store"),
        (["--mlflow-experiment", "e"], "--mlflow-experiment names the MLflow experiment of --mlflow"),
    ],
)
def test_bad_tracking_flags_are_one_line_and_write_nothing(tmp_path, capsys, flags, match):
    assert cli.main(["train", "--preset", "smoke", "--out", str(tmp_path / "runs"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("flag", "module"), [("--mlflow", "mlflow"), ("--tensorboard", "tensorboard")])
def test_a_missing_extra_names_it(tmp_path, capsys, monkeypatch, flag, module):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    assert cli.main(["train", "--preset", "smoke", "--out", str(tmp_path / "runs"), flag]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{flag} needs the {module} package" in err and "pip install 'twohead[tracking]'" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()
