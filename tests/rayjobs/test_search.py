"""rayjobs.search: errors before any trial (fast), and real searches on the session's Ray head (slow).

The slow tests run real Tune trials of the real loop on a tiny CIFAR-10-LT subset (5% of the long-tailed train
set, 1-2 epochs) against a real SQLite Optuna study, and read everything back from the files a user gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from rayjobs import search
from rayjobs.report import default_storage_url, save_search_folder
from rayjobs.search_space import load_search_space
from twohead.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)

# 5% of CIFAR-10-LT train (~620 images), 10% of val/test: a ResNet-32 epoch takes a few seconds on one core.
TINY_BASE = {"preset": "smoke", "set": {"data.train_fraction": 0.05, "optim.epochs": 2, "optim.milestones": []}}


def _space(
    tmp_path: Path, name: str = "tiny", *, base: dict | None = None, search_: dict | None = None, resources: dict | None = None
) -> Path:
    d = {
        "base": base or TINY_BASE,
        "metric": "val_top1",
        "mode": "max",
        "params": {
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
    return [json.loads(ln) for ln in (Path(run_dir) / "history.jsonl").read_text().splitlines() if ln.strip()]


# ------------------------------------------------------------------------------ fast: refused before trials
def test_unopenable_storage_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(out), "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot open Optuna storage" in err and "no/such/dir" in err
    assert not (out / "tiny").exists()  # no Tune experiment was started


def test_missing_database_driver_names_it_and_hides_the_password(tmp_path, capsys):
    rc = search.main(
        [
            "--space",
            str(_space(tmp_path)),
            "--out",
            str(tmp_path / "out"),
            "--storage",
            "postgresql+psycopg2://twohead:s3cret@127.0.0.1:1/optuna",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "cannot open Optuna storage" in err
    assert "s3cret" not in err and "***" in err


def test_study_with_the_other_direction_is_refused_before_any_trial(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    url = default_storage_url(out, "tiny")
    optuna.create_study(storage=url, study_name="tiny", direction="minimize")
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "direction minimize" in err and "mode=max" in err
    assert len(_load(out).trials) == 0 and not (out / "tiny").exists()


def test_a_different_search_in_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    spec = load_search_space(_space(tmp_path))
    save_search_folder(out, spec, default_storage_url(out, "tiny"), str(out / "tiny"))
    rc = search.main(["--space", str(_space(tmp_path)), "--out", str(out), "--num-samples", "9", "--set", "optim.lr=0.02"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a different search" in err
    assert "search.num_samples: 4 -> 9" in err and "base optim.lr: 0.1 -> 0.02" in err
    assert "resources" not in err.split("Differences:")[1]


def test_finished_run_is_recognised_only_for_the_same_config(tmp_path):
    cfg = TrainConfig()
    cfg.optim.epochs = 2
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "history.jsonl").write_text(json.dumps({"epoch": 1, "val_top1": 1.0}) + "\n")
    (run / "metrics.json").write_text("{}")
    assert search._finished_run(run, cfg) is None  # only 1 of 2 epochs
    with open(run / "history.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "val_top1": 3.0, "test_top1": 2.0}) + "\n")
    assert search._finished_run(run, cfg) == {"epoch": 2, "val_top1": 3.0, "test_top1": 2.0}
    other = TrainConfig()
    other.optim.epochs, other.method.u = 2, 3
    assert search._finished_run(run, other) is None


def test_orphans_of_a_killed_driver_are_failed_others_are_left(tmp_path):
    import datetime

    study = optuna.create_study(storage=default_storage_url(tmp_path, "o"), study_name="o", direction="maximize")
    ours, other, untagged, done = (study.ask() for _ in range(4))
    ours.set_user_attr("experiment", "/x/o")
    other.set_user_attr("experiment", "/y/o")  # another search's live trial
    done.set_user_attr("experiment", "/x/o")
    study.tell(done, 1.0)
    started = datetime.datetime.now()
    late = study.ask()  # untagged but younger than this driver: not ours to judge
    assert search._fail_orphans(study, "/x/o", started) == 2
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
    tmp = tmp_path_factory.mktemp("search")
    spec = load_search_space(_space(tmp))
    t0 = time.perf_counter()
    res = search.run_search(spec, tmp / "out", verbose=0)
    res.test_wall_s = time.perf_counter() - t0
    return res


@pytest.mark.slow
def test_search_end_to_end(searched):
    out = searched.out
    assert searched.errors == 0 and not searched.resumed
    study = _load(out)  # the real SQLite file, read back by Optuna
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.user_attrs["metric"] == "val_top1"
    trials = study.trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    full = []
    for t in trials:
        assert 2 <= t.params["u"] <= 30 and 0.3 <= t.params["alpha"] <= 1.0 and t.params["clustering"] in ("random", "kmeans")
        hist = _history(t.user_attrs["run_dir"])
        # The optimised value is the validation metric of the trial's last epoch (ASHA may stop at epoch 1) ...
        assert t.user_attrs["epochs"] == hist[-1]["epoch"] in (1, 2)
        assert t.value == pytest.approx(hist[-1]["val_top1"])
        # ... and the trial trained the configuration Optuna proposed.
        run_cfg = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert (run_cfg["method"]["u"], run_cfg["method"]["alpha"], run_cfg["method"]["clustering"]) == (
            t.params["u"],
            t.params["alpha"],
            t.params["clustering"],
        )
        if t.user_attrs["epochs"] == 2:
            full.append(t)
            metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
            assert t.user_attrs["test_top1"] == pytest.approx(metrics["top1"])
        else:
            assert "test_top1" not in t.user_attrs  # stopped early: never reached the test evaluation
    assert full, "ASHA keeps at least one trial to the last epoch"

    rep = out / "report"
    best = json.loads((rep / "best.json").read_text())
    # chosen on validation among fully trained trials; test only reported
    top = max(full, key=lambda t: t.value)
    assert best["trial"] == top.number and best["value"] == pytest.approx(top.value) and best["metric"] == "val_top1"
    assert best["test"]["test_top1"] == pytest.approx(top.user_attrs["test_top1"])
    best_cfg = TrainConfig.from_dict(yaml.safe_load((rep / "best_config.yaml").read_text()))
    assert best_cfg.method.u == top.params["u"]
    import pandas as pd

    csv = pd.read_csv(rep / "trials.csv")
    assert sorted(csv["number"]) == [0, 1, 2, 3] and "user_attrs_test_top1" in csv.columns
    import matplotlib.image

    for png in ("optimization_history.png", "param_importances.png", "u_sensitivity.png"):
        img = matplotlib.image.imread(rep / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    text = (rep / "report.md").read_text()
    assert f"Trial {top.number}, chosen on **val_top1" in text and "never used for the choice" in text
    assert f"optuna-dashboard sqlite:///{out / 'tiny.db'}" in text
    assert f"python -m rayjobs.search --retrain-best {out} --seeds 3" in text
    assert text.count("| COMPLETE |") == 4


@pytest.mark.slow
def test_retrain_best_on_two_seeds(searched):
    md, text = search.retrain_best(searched.out, seeds=2, verbose=0)
    payload = json.loads((searched.out / "report" / "retrain.json").read_text())
    best = json.loads((searched.out / "report" / "best.json").read_text())
    assert payload["trial"] == best["trial"] and [r["seed"] for r in payload["runs"]] == [0, 1]
    for r in payload["runs"]:
        assert r["state"] == "DONE" and r["epochs"] == 2 and r["test_top1"] is not None
        cfg = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())
        assert cfg["optim"]["seed"] == r["seed"] and cfg["method"]["u"] == best["params"]["u"]
    tops = [r["test_top1"] for r in payload["runs"]]
    assert payload["summary"]["test_top1"]["mean"] == pytest.approx(np.mean(tops))
    assert payload["summary"]["test_top1"]["std"] == pytest.approx(np.std(tops, ddof=1))
    assert md.is_file() and "test_top1" in text and "+-" in text


@pytest.mark.slow
def test_multi_worker_trial_runs_a_torch_trainer(ray_session, data_root, tmp_path):
    # 1 CPU for the trial's driver + 2 DDP workers x 0.5 CPU = the head's 2 CPUs
    spec = load_search_space(
        _space(
            tmp_path,
            "ddp",
            base={"preset": "smoke", "set": {"data.train_fraction": 0.05, "optim.epochs": 1, "optim.milestones": []}},
            search_={"num_samples": 1, "max_concurrent": 1, "seed": 0},
            resources={"cpus_per_trial": 0.5, "workers_per_trial": 2},
        )
    )
    res = search.run_search(spec, tmp_path / "out", verbose=0)
    assert res.errors == 0
    (t,) = _load(tmp_path / "out", "ddp").trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["epochs"] == 1 and "test_top1" in t.user_attrs
    trial_dir = Path(t.user_attrs["run_dir"]).parent
    assert (Path(t.user_attrs["run_dir"]) / "metrics.json").is_file()
    assert (trial_dir / f"train_{t.user_attrs['tune_trial_id']}").is_dir()  # the TorchTrainer's run storage


@pytest.mark.slow
def test_experiment_in_s3_storage(ray_session, s3_server, data_root, tmp_path):
    # Tune keeps the experiment (checkpoints, trial folders with the loop's files) in S3; the study and the
    # report stay in the local results folder.
    bucket = s3_server.make_bucket("twohead-search")
    spec = load_search_space(
        _space(
            tmp_path,
            "s3tiny",
            base={"preset": "smoke", "set": {"data.train_fraction": 0.05, "optim.epochs": 1, "optim.milestones": []}},
            search_={"num_samples": 1, "max_concurrent": 1, "seed": 0},
        )
    )
    res = search.run_search(spec, tmp_path / "out", storage_path=f"s3://{bucket}/runs", verbose=0)
    assert res.errors == 0 and res.experiment == f"s3://{bucket}/runs/s3tiny"
    (t,) = _load(tmp_path / "out", "s3tiny").trials
    assert t.state == optuna.trial.TrialState.COMPLETE and "test_top1" in t.user_attrs
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/s3tiny/")["Contents"]]
    trial = f"runs/s3tiny/trial_{t.user_attrs['tune_trial_id']}"
    assert f"{trial}/run/metrics.json" in keys and f"{trial}/run/config.yaml" in keys  # the loop's files, synced
    assert any(k.startswith(f"{trial}/checkpoint_") and k.endswith("/state.pt") for k in keys)
    assert (tmp_path / "out" / "report" / "report.md").is_file()


@pytest.mark.slow
def test_killed_search_resumes_and_keeps_finished_trials(ray_head, data_root, tmp_path):
    space = _space(tmp_path, "resume", search_={"num_samples": 3, "max_concurrent": 2, "seed": 1})
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "rayjobs.search",
        "--space",
        str(space),
        "--out",
        str(out),
        "--address",
        ray_head.address,
        "--verbose",
        "0",
    ]
    env = dict(os.environ, TWOHEAD_DATA=str(data_root))
    log1 = open(tmp_path / "driver1.log", "w")
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT)
    finished: dict[int, tuple] = {}
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not finished:
            time.sleep(1)
            assert driver.poll() is None, (tmp_path / "driver1.log").read_text()[-3000:]
            if (out / "search.json").is_file():  # written once the driver has created the study
                done = [t for t in _load(out, "resume").trials if t.state.name == "COMPLETE"]
                finished = {t.number: (t.value, t.datetime_complete, t.user_attrs["run_dir"]) for t in done}
        assert finished, "no trial finished in time"
    finally:
        driver.kill()  # a crash, not a graceful stop: nothing gets saved on the way out
        driver.wait()
        log1.close()
    assert len(finished) < 3, "the driver should be killed half-way"

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Resuming the search" in again.stdout and "optuna-dashboard sqlite:///" in again.stdout

    trials = _load(out, "resume").trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    states = [(t.number, t.state.name, t.value, t.user_attrs.get("tune_trial_id"), t.user_attrs.get("epochs")) for t in trials]
    assert len(complete) == 3 and not [t for t in trials if t.state.name == "RUNNING"], (states, finished, again.stdout[-4000:])
    for t in complete:  # trials cut by the kill continued from their checkpoint: each epoch once in the history
        assert [h["epoch"] for h in _history(t.user_attrs["run_dir"])] == [1, 2]
    by_number = {t.number: t for t in trials}
    for number, (value, when, run_dir) in finished.items():
        t = by_number[number]
        assert t.state.name == "COMPLETE" and t.value == value and t.datetime_complete == when
        assert len(_history(run_dir)) == 2, "a trial finished before the kill was trained again"
    assert "(resumed)" in (out / "report" / "report.md").read_text()
