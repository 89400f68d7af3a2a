"""rayjobs.search: errors before any trial (fast), and real searches on the session's Ray head (slow).

The slow tests run real Tune trials of the real loop on a tiny CIFAR-10-LT subset (5% of the long-tailed train
set, 1-3 epochs) against real SQLite / PostgreSQL Optuna studies, moto's S3 server and the Jobs API, and read
everything back from the files and objects a user gets.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml
from test_jobs import submit, wait  # the Jobs API helpers of tests/rayjobs/test_jobs.py (same folder)

from rayjobs.data import prepare, storage
from rayjobs.search import driver as search
from rayjobs.search import report
from rayjobs.search.searcher import fail_orphans
from rayjobs.search.space import load_search_space
from rayjobs.search.study import default_storage_url, save_record
from rayjobs.search.trial import finished_run
from twohead.config import TrainConfig

REPO = Path(__file__).resolve().parents[3]
optuna.logging.set_verbosity(optuna.logging.WARNING)

# 5% of CIFAR-10-LT train (~620 images), 10% of val/test: a ResNet-8 epoch takes a few seconds on one core.
TINY_BASE = {"preset": "smoke", "set": {"data.train_fraction": 0.05, "optim.epochs": 2, "optim.milestones": []}}
TINY_DATA = ["data.train_fraction=0.05", "data.eval_fraction=0.1"]


def _space(
    tmp_path: Path,
    name: str = "tiny",
    *,
    base: dict | None = None,
    params: dict | None = None,
    search_: dict | None = None,
    resources: dict | None = None,
) -> Path:
    d = {
        "base": base or TINY_BASE,
        "metric": "val_top1",
        "mode": "max",
        "params": params
        or {
            "u": {"type": "int", "low": 2, "high": 30},
            "alpha": {"type": "float", "low": 0.3, "high": 1.0},
            "clustering": {"type": "categorical", "choices": ["random", "kmeans"]},
        },
        "search": search_
        or {
            "num_samples": 4,
            "max_concurrent": 2,
            "seed": 0,
            "n_startup_trials": 2,
            "asha": {"grace_period": 1, "reduction_factor": 2},
        },
        "resources": resources or {"cpus_per_trial": 1},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _load(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / f'{name}.db'}")


def _history(run_dir: str) -> list[dict]:
    text = storage.read_bytes(storage.join(run_dir, "history.jsonl")).decode()
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def _best_top1(line: dict) -> float:
    """A validated epoch's value for the search: the best validation top-1 over every reading and post-hoc variant
    (posthoc: true, the default)."""
    return max([g["top1"] for g in line["val_by_inference_groups"].values()] + list(line["val_posthoc"].values()))


def _check_states(trials, epochs: int) -> None:
    """Every finished trial is COMPLETE iff it trained all epochs, else PRUNED with its last validated value; the
    values are those of the variant chosen on validation, the raw configured reading's is kept beside them."""
    for t in trials:
        hist = _history(t.user_attrs["run_dir"])
        assert t.user_attrs["epochs"] == hist[-1]["epoch"]
        assert t.intermediate_values == {h["epoch"]: pytest.approx(_best_top1(h)) for h in hist}
        assert t.value == pytest.approx(_best_top1(hist[-1])) and t.user_attrs["val_top1"] == pytest.approx(hist[-1]["val_top1"])
        if hist[-1]["epoch"] == epochs:
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.user_attrs["test_top1"] == pytest.approx(hist[-1]["test_top1"])
        else:  # stopped by ASHA: pruned, valued at its last epoch, never reached the test evaluation
            assert t.state == optuna.trial.TrialState.PRUNED
            assert "test_top1" not in t.user_attrs


# ------------------------------------------------------------------------------ fast: refused before trials
def test_unopenable_storage_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(out), "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot open Optuna storage" in err and "no/such/dir" in err
    assert not (out / "tiny").exists()  # no Tune experiment was started


def test_missing_database_driver_names_it_and_hides_the_password(tmp_path, capsys):
    url = "postgresql+psycopg2://twohead:s3cret@127.0.0.1:1/optuna"
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(tmp_path / "out"), "--storage", url])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot open Optuna storage" in err
    assert "s3cret" not in err and "***" in err


def test_storage_from_an_unset_environment_variable_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(tmp_path / "out"), "--storage", "env:OPTUNA_STORAGE"])
    assert rc == 2 and "the environment variable OPTUNA_STORAGE is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_negative_retry_budget_is_refused(tmp_path, capsys):
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(tmp_path / "out"), "--max-failures", "-1"])
    assert rc == 2 and "--max-failures -1 must be >= 0" in capsys.readouterr().err


def test_study_with_the_other_direction_is_refused_before_any_trial(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    optuna.create_study(storage=default_storage_url(out, "tiny"), study_name="tiny", direction="minimize")
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "direction minimize" in err and "mode=max" in err
    assert len(_load(out).trials) == 0 and not (out / "tiny").exists()


def test_a_different_search_in_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    spec = load_search_space(_space(tmp_path))
    save_record(str(out), spec, {"storage": "default", "data": None, "experiment": str(out / "tiny")})
    neutral = ["--set", "data.download=true", "--set", f"data.root={tmp_path / 'elsewhere'}"]
    rc = search.main(
        ["--space", str(_space(tmp_path)), "--out", str(out), "--num-samples", "9", "--set", "optim.lr=0.02", *neutral]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "holds a different search" in err
    assert "search.num_samples: 4 -> 9" in err and "base optim.lr: 0.1 -> 0.02" in err
    # where the data lives and whether it may be downloaded do not change results: not differences
    differences = err.split("Differences:")[1]
    assert "resources" not in differences and "data.download" not in differences and "data.root" not in differences
    assert not (tmp_path / "elsewhere").exists()  # refused before anything was fetched


def test_finished_run_is_recognised_only_for_the_same_config(tmp_path):
    cfg = TrainConfig()
    cfg.optim.epochs = 2
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "history.jsonl").write_text(json.dumps({"epoch": 1, "val_top1": 1.0}) + "\n")
    (run / "metrics.json").write_text("{}")
    assert finished_run(str(run), cfg) is None  # only 1 of 2 epochs
    with open(run / "history.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "val_top1": 3.0, "test_top1": 2.0}) + "\n")
    assert finished_run(str(run), cfg) == {"epoch": 2, "val_top1": 3.0, "test_top1": 2.0}
    other = TrainConfig()
    other.optim.epochs, other.method.u = 2, 3
    assert finished_run(str(run), other) is None


def test_orphans_of_a_killed_driver_are_failed_others_are_left(tmp_path):
    study = optuna.create_study(storage=default_storage_url(tmp_path, "o"), study_name="o", direction="maximize")
    ours, other, untagged, done = (study.ask() for _ in range(4))
    ours.set_user_attr("experiment", "/x/o")
    other.set_user_attr("experiment", "/y/o")  # another search's live trial
    done.set_user_attr("experiment", "/x/o")
    study.tell(done, 1.0)
    started = datetime.datetime.now()
    late = study.ask()  # untagged but younger than this driver: not ours to judge
    assert fail_orphans(study, "/x/o", started) == 2
    states = {t.number: t.state.name for t in study.trials}
    assert states == {
        ours.number: "FAIL",
        other.number: "RUNNING",
        untagged.number: "FAIL",
        done.number: "COMPLETE",
        late.number: "RUNNING",
    }


# ------------------------------------------------------------------------------------ slow: real searches
@pytest.fixture(scope="module")
def searched(ray_session, data_root, tmp_path_factory):
    from twohead.tracking import resolve_uri

    tmp = tmp_path_factory.mktemp("search")
    spec = load_search_space(_space(tmp))
    return search.run_search(spec, tmp / "out", verbose=0, mlflow=resolve_uri(f"sqlite:///{tmp / 'mlflow.db'}"), tensorboard=True)


@pytest.mark.slow
def test_search_end_to_end(searched):
    out = searched.out
    assert searched.errors == 0 and not searched.resumed and searched.interrupted == 0
    study = _load(out)  # the real SQLite file, read back by Optuna
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.user_attrs["metric"] == "val_top1"
    trials = study.trials
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    _check_states(trials, 2)
    for t in trials:
        assert 2 <= t.params["u"] <= 30 and 0.3 <= t.params["alpha"] <= 1.0 and t.params["clustering"] in ("random", "kmeans")
        run_cfg = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert (run_cfg["method"]["u"], run_cfg["method"]["alpha"], run_cfg["method"]["clustering"]) == (
            t.params["u"],
            t.params["alpha"],
            t.params["clustering"],
        )  # the trial trained the configuration Optuna proposed
    full = [t for t in trials if t.state.name == "COMPLETE"]
    assert full, "ASHA keeps at least one trial to the last epoch"

    rep = out / "report"
    best = json.loads((rep / "best.json").read_text())
    top = max(full, key=lambda t: t.value)  # chosen on validation among fully trained trials; test only reported
    assert best["trial"] == top.number and best["value"] == pytest.approx(top.value) and best["metric"] == "val_top1"
    assert best["test"]["test_top1"] == pytest.approx(top.user_attrs["test_top1"])
    assert TrainConfig.from_dict(yaml.safe_load((rep / "best_config.yaml").read_text())).method.u == top.params["u"]
    import pandas as pd

    csv = pd.read_csv(rep / "trials.csv")
    assert sorted(csv["number"]) == [0, 1, 2, 3] and "user_attrs_test_top1" in csv.columns
    import matplotlib.image

    # Importances need two fully trained trials; how many ASHA lets through depends on the trials' values.
    pngs = ["optimization_history.png", "u_sensitivity.png"] + (["param_importances.png"] if len(full) >= 2 else [])
    for png in pngs:
        img = matplotlib.image.imread(rep / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    text = (rep / "report.md").read_text()
    if len(full) < 2:
        assert "param_importances.png: not drawn (needs >= 2 completed trials, have 1)" in text
    assert f"Trial {top.number}, chosen on **val_top1" in text and "never used for the choice" in text
    assert f"optuna-dashboard sqlite:///{out / 'tiny.db'}" in text
    assert f"python -m rayjobs.search --retrain-best {out} --seeds 3" in text
    table = text.split("## All trials")[1]
    assert len(re.findall(r"\| COMPLETE +\|", table)) == len(full) and len(re.findall(r"\| PRUNED +\|", table)) == 4 - len(full)


def _mlflow_runs(uri: str, experiment: str) -> tuple[Any, list]:
    """(parent run, trial runs) of a search's MLflow experiment, read back with MLflow's client."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


@pytest.mark.slow
def test_search_trials_in_mlflow_and_tensorboard(searched):
    """One MLflow run per trial, nested under the search's run, with the study's numbers, states, values and
    parameters, and each validated epoch's metrics equal to the trial's history.jsonl; TensorBoard event files
    in every trial folder with the same curves; a model card in every checkpoint folder."""
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = searched.out
    uri = f"sqlite:///{out.parent / 'mlflow.db'}"
    study = _load(out)
    parent, runs = _mlflow_runs(uri, "tiny")
    assert parent.info.status == "FINISHED" and parent.data.tags["twohead.search"] == searched.experiment
    assert parent.data.params["search.num_samples"] == "4" and parent.data.params["base.method.name"] == "twohead"
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    assert len(runs) == len(by_number) == len(study.trials) == 4
    client = mlflow.MlflowClient(uri)
    for t in study.trials:
        run = by_number[t.number]
        assert run.data.tags["optuna.state"] == t.state.name and run.data.tags["ray.trial_id"] == t.user_attrs["tune_trial_id"]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["optuna/value"] == pytest.approx(t.value)
        assert {k: run.data.params[k] for k in ("u", "alpha", "clustering")} == {k: str(v) for k, v in t.params.items()}
        hist = _history(t.user_attrs["run_dir"])
        val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_top1")}
        assert val == {h["epoch"]: pytest.approx(h["val_top1"]) for h in hist}
        trial_dir = out / "tiny" / f"trial_{t.user_attrs['tune_trial_id']}"
        acc = EventAccumulator(str(trial_dir))
        acc.Reload()
        assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("ray/tune/val_top1")] == [
            (h["epoch"], h["val_top1"]) for h in hist
        ]
        for ck in sorted(trial_dir.glob("checkpoint_*")):
            card = json.loads((ck / "model_card.json").read_text())
            state = torch.load(ck / "state.pt", map_location="cpu", weights_only=True)
            assert card["metrics"]["epoch"] == state["epoch"] and card["paper_parameters"]["u"] == t.params["u"]
    assert "TensorBoard: `tensorboard --logdir" in searched.report.text


@pytest.mark.slow
def test_retrain_best_on_two_seeds(searched):
    where, text = search.retrain_best(searched.out, seeds=2, verbose=0)
    assert where == str(searched.out / "report" / "retrain.md")
    payload = json.loads((searched.out / "report" / "retrain.json").read_text())
    best = json.loads((searched.out / "report" / "best.json").read_text())
    assert payload["trial"] == best["trial"] and [r["seed"] for r in payload["runs"]] == [0, 1]
    for r in payload["runs"]:
        assert r["state"] == "DONE" and r["epochs"] == 2 and r["test_top1"] is not None
        cfg = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())
        assert cfg["optim"]["seed"] == r["seed"] and cfg["method"]["u"] == best["params"]["u"]
        # each seed is also read with the variant the search chose for this configuration (test: never chosen on)
        variant = best["chosen_variant"]
        if variant != "max":
            final = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
            groups = {**final["by_inference_groups"], **final["posthoc_groups"]}[variant]
            assert r["chosen/test_top1"] == pytest.approx(groups["top1"])
        else:
            assert "chosen/test_top1" not in r
    tops = [r["test_top1"] for r in payload["runs"]]
    assert payload["summary"]["test_top1"]["mean"] == pytest.approx(np.mean(tops))
    assert payload["summary"]["test_top1"]["std"] == pytest.approx(np.std(tops, ddof=1))
    assert "test_top1" in text and "+-" in text


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    name = s3_server.make_bucket(f"search-{uuid.uuid4().hex[:8]}")
    s3_server.client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture(scope="module")
def s3_data(bucket, data_root) -> str:
    from twohead.config import load_config

    return prepare.prepare(load_config(preset="smoke", overrides=TINY_DATA), f"s3://{bucket}/datasets").url


def _objects(s3_server, bucket: str, prefix: str) -> list[str]:
    keys, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3_server.client().list_objects_v2(**kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


@pytest.mark.slow
def test_search_on_the_data_plane_keeps_everything_in_storage(ray_session, s3_server, bucket, s3_data, tmp_path):
    """The issue's acceptance run: prepare to S3, search --data from S3 with --storage-path S3 and a local --out;
    labels once per key; every epoch-2 trial killed once (spot node) and resumed from its checkpoint; the local
    folder deleted and the report rebuilt from the bucket."""
    space = _space(
        tmp_path,
        "plane",
        base={"preset": "smoke", "set": {"optim.epochs": 2, "optim.milestones": [], "optim.lr": 0.05}},
        params={
            "u": {"type": "int", "low": 2, "high": 3},
            "clustering": {"type": "categorical", "choices": ["random", "kmeans"]},
        },
        # 5 trials over 4 (clustering, u) keys: at least two trials share a labels file.
        search_={"num_samples": 5, "max_concurrent": 2, "seed": 0, "n_startup_trials": 5, "asha": {"grace_period": 1}},
    )
    spec = load_search_space(space)
    out = tmp_path / "out"
    res = search.run_search(spec, out, data=s3_data, storage_path=f"s3://{bucket}/search", verbose=0, fail_at_epoch=2)
    record = f"s3://{bucket}/search/plane"
    assert res.errors == 0 and res.record == record and res.experiment == record
    study = _load(out, "plane")
    trials = study.trials
    assert len(trials) == 5
    _check_states(trials, 2)

    keys: dict[str, list[int]] = {}
    attempts: dict[str, int] = {}  # a trial asks for its labels once per start: its first run and its retry
    for t in trials:
        assert t.user_attrs["data_uri"] == s3_data
        key = (t.params["clustering"], t.params["u"])
        assert t.user_attrs["labels_uri"] == f"{s3_data}/labels/{key[0]}-u{key[1]}-rceil-s0.parquet"
        assert storage.exists(t.user_attrs["labels_uri"])
        keys.setdefault(t.user_attrs["labels_uri"], []).append(t.number)
        run = t.user_attrs["run_dir"]
        attempts[t.user_attrs["labels_uri"]] = attempts.get(t.user_attrs["labels_uri"], 0) + 1 + (t.user_attrs["epochs"] == 2)
        assert run == f"{record}/trial_{t.user_attrs['tune_trial_id']}/run"
        hist = _history(run)
        assert [h["epoch"] for h in hist] == list(range(1, len(hist) + 1))  # each epoch once, also after a kill
        cfg = yaml.safe_load(storage.read_bytes(f"{run}/config.yaml"))
        assert (cfg["method"]["clustering"], cfg["method"]["u"]) == key and cfg["data"]["train_fraction"] == 0.05
        if len(hist) == 2:  # reached epoch 2: killed once there, retried from its epoch-1 checkpoint
            assert storage.exists(f"{record}/trial_{t.user_attrs['tune_trial_id']}/_fault-injected-epoch2")
            assert storage.exists(f"{run}/metrics.json")
    assert any(len(v) > 1 for v in keys.values())
    # Computed once per key: the service's count, and S3's own count of writes to each labels file.
    meta = json.loads((out / "search.json").read_text())
    assert {u: v["computed"] for u, v in meta["labels"].items()} == {u: 1 for u in keys}
    assert {u: v["requests"] for u, v in meta["labels"].items()} == attempts
    prefix = s3_data.split(f"s3://{bucket}/", 1)[1] + "/labels/"
    versions = s3_server.client().list_object_versions(Bucket=bucket, Prefix=prefix).get("Versions", [])
    assert sorted(v["Key"].rsplit("/", 1)[1] for v in versions if not v["Key"].endswith("/")) == sorted(
        u.rsplit("/", 1)[1] for u in keys
    )
    objects = _objects(s3_server, bucket, "search/plane/")
    for name in ("search.json", "search_space.yaml", "plane.db", "report/report.md", "report/best.json", "tuner.pkl"):
        assert f"search/plane/{name}" in objects, name

    best = json.loads(storage.read_bytes(f"{record}/report/best.json"))
    shutil.rmtree(out)  # the driver's working directory is gone: the bucket has everything
    rebuilt = tmp_path / "rebuilt"
    assert report.main([record, "--out", str(rebuilt)]) == 0
    assert json.loads((rebuilt / "report" / "best.json").read_text()) == best
    assert json.loads(storage.read_bytes(f"{record}/report/best.json")) == best


@pytest.mark.slow
def test_multi_worker_trial_streams_and_keeps_its_run_in_storage(ray_session, bucket, data_root, tmp_path):
    """A DDP trial (2 gloo workers, validation sharded over them) reading a large-image (72 px) dataset through Ray
    Data, with its run folder published to S3 by rank 0."""
    from twohead.config import load_config

    ds = prepare.prepare(load_config(preset="smoke", overrides=[*TINY_DATA, "data.image_size=72"]), f"s3://{bucket}/big").url
    # 0.5 CPU for the trial's driver + 2 DDP workers x 0.25 CPU: Ray Data decodes on the head's remaining CPU
    space = _space(
        tmp_path,
        "ddp",
        base={"preset": "smoke", "set": {"optim.epochs": 1, "optim.milestones": [], "optim.batch_size": 32}},
        search_={"num_samples": 1, "max_concurrent": 1, "seed": 0},
        resources={"cpus_per_trial": 0.25, "workers_per_trial": 2},
    )
    res = search.run_search(load_search_space(space), tmp_path / "out", data=ds, storage_path=f"s3://{bucket}/ddp", verbose=0)
    assert res.errors == 0
    (t,) = _load(tmp_path / "out", "ddp").trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["epochs"] == 1 and "test_top1" in t.user_attrs
    run = t.user_attrs["run_dir"]
    assert run == f"s3://{bucket}/ddp/ddp/trial_{t.user_attrs['tune_trial_id']}/run"
    metrics = json.loads(storage.read_bytes(f"{run}/metrics.json"))
    assert metrics["top1"] == pytest.approx(t.user_attrs["test_top1"]) and metrics["epochs"] == 1
    assert storage.list_files(
        f"s3://{bucket}/ddp/ddp/trial_{t.user_attrs['tune_trial_id']}/train_{t.user_attrs['tune_trial_id']}"
    )


def _driver(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_interrupted_then_killed_search_resumes_with_true_states(ray_head, data_root, tmp_path):
    """Ctrl-C: exit 130, the running trials stay RUNNING (not FAIL). A SIGKILL (a crash) later. The third run
    continues every trial under its Optuna number and the study ends with each trial's true state and value."""
    space = _space(
        tmp_path,
        "resume",
        # Validation every 2nd epoch (and the last): epochs 2 and 3 carry the metric, epoch 1 reports without it.
        base={
            "preset": "smoke",
            "set": {"data.train_fraction": 0.05, "optim.epochs": 3, "optim.milestones": [], "run.eval_every": 2},
        },
        search_={"num_samples": 3, "max_concurrent": 2, "seed": 1},
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rayjobs.search", "--space", str(space), "--out", str(out)]
    cmd += ["--address", ray_head.address, "--verbose", "0", "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = dict(os.environ, TWOHEAD_DATA=str(data_root))

    def trials() -> list:
        return _load(out, "resume").trials if (out / "search.json").is_file() else []

    def wait_for(cond, proc, what: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert proc.poll() is None, f"driver exited early; {what}"
            if cond(trials()):
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting: {what}")

    # 1) Ctrl-C once a trial is mid-way (an epoch reported, not finished).
    d1 = _driver(cmd, env, tmp_path / "d1.log")
    try:
        wait_for(lambda ts: any(t.intermediate_values and t.state.name == "RUNNING" for t in ts), d1, "a trial mid-way")
        d1.send_signal(signal.SIGINT)
        assert d1.wait(timeout=120) == 130, (tmp_path / "d1.log").read_text()[-3000:]
    finally:
        if d1.poll() is None:
            d1.kill()
    after1 = {t.number: t for t in trials()}
    assert not [t for t in after1.values() if t.state.name == "FAIL"], "an interrupted driver fails nothing"
    cut = [n for n, t in after1.items() if t.state.name == "RUNNING"]
    assert cut and "interrupted by SIGINT" in (out / "report" / "report.md").read_text()
    parent, runs = _mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume")
    assert parent.info.status == "KILLED"
    assert {r.data.tags["optuna.state"] for r in runs if r.info.status == "KILLED"} == {"RUNNING"}
    assert {int(r.data.tags["optuna.trial_number"]) for r in runs if r.info.status == "KILLED"} == set(cut)

    # 2) A crash of the second driver after a trial finished.
    d2 = _driver(cmd, env, tmp_path / "d2.log")
    try:
        done_before = sum(t.state.name == "COMPLETE" for t in after1.values())
        wait_for(lambda ts: sum(t.state.name == "COMPLETE" for t in ts) > done_before, d2, "one more finished trial")
    finally:
        d2.kill()
        d2.wait()
    finished = {t.number: (t.value, t.datetime_complete) for t in trials() if t.state.name == "COMPLETE"}

    # 3) The same command finishes the search.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Resuming the search" in again.stdout
    final = {t.number: t for t in trials()}
    assert len(final) == 3 and {t.state.name for t in final.values()} == {"COMPLETE"}, {
        n: (t.state.name, t.value) for n, t in final.items()
    }
    for t in final.values():
        hist = _history(t.user_attrs["run_dir"])
        assert [h["epoch"] for h in hist] == [1, 2, 3]  # continued from checkpoints: each epoch once
        assert t.value == pytest.approx(_best_top1(hist[-1])) and sorted(t.intermediate_values) == [2, 3]
        assert "val_top1" not in hist[0] and t.intermediate_values[2] == pytest.approx(_best_top1(hist[1]))
    for n, (value, when) in finished.items():  # finished before the crash: kept as they were
        assert final[n].value == value and final[n].datetime_complete == when
    assert set(cut) <= set(final)  # the trials cut by Ctrl-C finished under their own numbers
    best = json.loads((out / "report" / "best.json").read_text())
    assert best["value"] == max(t.value for t in final.values())
    assert "(resumed)" in (out / "report" / "report.md").read_text()
    # MLflow: three resumes later still one parent run and one run per trial, with the study's final record
    parent, runs = _mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume")
    assert parent.info.status == "FINISHED" and len(runs) == 3
    for r in runs:
        t = final[int(r.data.tags["optuna.trial_number"])]
        assert r.info.status == "FINISHED" and r.data.tags["optuna.state"] == "COMPLETE"
        assert r.data.metrics["optuna/value"] == pytest.approx(t.value)


@pytest.mark.slow
def test_search_job_keeps_the_postgres_password_secret_and_survives_its_working_dir(
    ray_head, s3_server, bucket, s3_data, data_root, tmp_path, postgres_url
):
    """``ray job submit`` of a search with --storage env:TWOHEAD_TEST_POSTGRES_URL (the head's environment, as a
    cluster's nodes would have it): the password is in no file the search wrote, no log, no job listing; the job's
    working directory is deleted and the report is rebuilt from the bucket."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    from sqlalchemy.engine import make_url

    password = make_url(os.environ["TWOHEAD_TEST_POSTGRES_URL"]).password
    assert password and len(password) >= 8
    study = f"job{uuid.uuid4().hex[:6]}"
    space = _space(
        tmp_path,
        study,
        base={"preset": "smoke", "set": {"optim.epochs": 1, "optim.milestones": []}},
        search_={"num_samples": 3, "max_concurrent": 2, "seed": 0},
    )
    workdir = tmp_path / "jobdir"  # the job's own working_dir: the search space file only
    workdir.mkdir()
    shutil.copy(space, workdir / "space.yaml")
    env = {
        "working_dir": str(workdir),
        "env_vars": {
            "AWS_ENDPOINT_URL": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TWOHEAD_DATA": str(data_root),
            "TQDM_DISABLE": "1",
        },
    }
    client = JobSubmissionClient(ray_head.dashboard_url)
    entry = (
        f"python -m rayjobs.search --space space.yaml --data {s3_data} --storage-path s3://{bucket}/jobs "
        f"--storage env:TWOHEAD_TEST_POSTGRES_URL --study-name {study} --verbose 0"
    )
    job = submit(client, entry, env)
    assert wait(client, job, timeout=420) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-6000:]
    logs = client.get_job_logs(job)
    record = f"s3://{bucket}/jobs/{study}"
    mirror = Path(next(ln for ln in logs.splitlines() if ln.startswith("Report: ")).split("(mirror: ", 1)[1].rstrip(")"))
    local_out = mirror.parents[1]  # <job working dir>/runs/<study>-search
    assert local_out.is_dir() and (local_out / "search.json").is_file()

    # No secret anywhere: the local mirror, every object of the search (tuner.pkl and searcher state included),
    # the job's logs, the job listing.
    secret = password.encode()
    for f in local_out.rglob("*"):
        assert not f.is_file() or secret not in f.read_bytes(), f
    objects = _objects(s3_server, bucket, f"jobs/{study}/")
    assert any(k.endswith("tuner.pkl") for k in objects) and any("/searcher-state-" in k for k in objects), objects
    for key in objects:
        assert secret not in s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read(), key
    assert password not in logs
    details = next(j for j in client.list_jobs() if j.submission_id == job)
    assert password not in details.entrypoint and password not in str(details)
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "list", "--address", ray_head.dashboard_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and job in listing.stdout and password not in listing.stdout + listing.stderr

    # The study is in PostgreSQL, with every trial and its data/labels files.
    pg = optuna.load_study(study_name=study, storage=os.environ["TWOHEAD_TEST_POSTGRES_URL"])
    assert len(pg.trials) == 3 and all(t.state.name == "COMPLETE" and t.user_attrs["data_uri"] == s3_data for t in pg.trials)
    assert json.loads(storage.read_bytes(f"{record}/search.json"))["storage"] == "env:TWOHEAD_TEST_POSTGRES_URL"

    # The working directory goes away; nothing is lost.
    best = json.loads(storage.read_bytes(f"{record}/report/best.json"))
    pkg = next(p for p in mirror.parents if p.name.startswith("_ray_pkg_"))
    shutil.rmtree(pkg)
    shutil.rmtree(workdir)
    assert report.main([record, "--out", str(tmp_path / "rebuilt")]) == 0
    assert json.loads((tmp_path / "rebuilt" / "report" / "best.json").read_text()) == best
    for t in pg.trials:
        assert storage.exists(f"{t.user_attrs['run_dir']}/metrics.json")
