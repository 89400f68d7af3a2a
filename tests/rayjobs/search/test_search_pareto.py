"""Pareto searches: the front and its picks, warm starts, extensions and the report, on real Optuna studies (fast),
and real searches on the session's Ray head (slow): the smoke-pareto preset through the CLI, an extension by two
trials, a warm start, and a deferred re-weighting search under ASHA.

Expected values are worked out by hand in the comments (fast tests) or recomputed from the trials' own run
folders (slow tests).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import optuna
import pytest
import yaml

from rayjobs.data import storage
from rayjobs.search import driver as search
from rayjobs.search import pareto
from rayjobs.search.objectives import Objective
from rayjobs.search.report import write_report
from rayjobs.search.seeding import Segment, enqueue, plan_segments, rank_trials, resolve_warm_start
from rayjobs.search.space import SearchSpaceError, load_search_space, parse_search_space
from rayjobs.search.study import SearchError, default_storage_url, open_study, save_record

optuna.logging.set_verbosity(optuna.logging.WARNING)
TWO = [{"metric": "val_top1", "mode": "max"}, {"metric": "val_worst_class", "mode": "max"}]
PAPER = {"u": 10, "alpha": 0.5, "lambda": 1.5, "clustering": "random"}


def _spec(tmp_path: Path, name: str = "pf", **changes) -> object:
    d = {
        "base": {"preset": "smoke", "set": {"optim.epochs": 2, "optim.milestones": []}},
        "objectives": TWO,
        "params": {
            "u": {"type": "int", "low": 2, "high": 30},
            "alpha": {"type": "float", "low": 0.3, "high": 1.0},
            "lambda": {"type": "float", "low": 0.0, "high": 3.0},
            "clustering": {"type": "categorical", "choices": ["random", "kmeans"]},
        },
        "reference": {"label": "paper", "params": PAPER},
        "search": {"num_samples": 6, "seed": 0},
        **changes,
    }
    return parse_search_space(d, source=str(tmp_path / f"{name}.yaml"), study_name=name)


# (top-1, worst class) of five finished trials: #4 (45, 10) is dominated by #2 (50, 30); the front is #0..#3.
# Scaled over the front (top-1 40..60, worst 0..35): #0 1 + 0, #1 .75 + .571, #2 .5 + .857, #3 0 + 1
# -> sums 1, 1.321, 1.357, 1: the knee is #2. Best top-1 #0, best worst class #3.
VALUES = [(60.0, 0.0), (55.0, 20.0), (50.0, 30.0), (40.0, 35.0), (45.0, 10.0)]
PARAMS = [PAPER, {**PAPER, "u": 12}, {**PAPER, "u": 25, "alpha": 0.9}, {**PAPER, "u": 8}, {**PAPER, "u": 3}]
VARIANTS = ["la_tau1.0", "max", "la_tau1.0", "la_tau2.0", "sum"]


def _filled_study(spec, url: str) -> optuna.Study:
    """The study a search would leave: the five trials above (the first is the reference), plus one pruned."""
    study = open_study(url, spec)
    for i, (values, params, variant) in enumerate(zip(VALUES, PARAMS, VARIANTS)):
        study.enqueue_trial(params, user_attrs={"reference": "paper"} if i == 0 else None)
        t = study.ask()
        spec.suggest(t)
        recall = [90.0, 60.0, values[1]]  # the worst class is the rarest here
        for k, v in {
            "chosen_variant": variant,
            "val_top1": values[0] - 2,
            "val_worst_class": 0.0,
            "class_counts": [500, 100, 10],
            "val_per_class_recall": recall,
            "epochs": 2,
        }.items():
            t.set_user_attr(k, v)
        study.tell(t, list(values))
    t = study.ask()
    spec.suggest(t)
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return study


# ------------------------------------------------------------------------------------------ front and picks
def test_front_knee_and_best_per_objective(tmp_path):
    spec = _spec(tmp_path)
    study = _filled_study(spec, default_storage_url(tmp_path, "pf"))
    front = pareto.front(study)
    assert [t.number for t in front] == [0, 1, 2, 3]
    assert pareto.knee(front, spec.objectives).number == 2
    assert {m: t.number for m, t in pareto.best_per_objective(study.trials, spec.objectives).items()} == {
        "val_top1": 0,
        "val_worst_class": 3,
    }
    assert pareto.reference_trial(study.trials).number == 0
    assert pareto.posthoc_tally(pareto.complete(study.trials)) == [("la_tau1.0", 2), ("la_tau2.0", 1), ("max", 1), ("sum", 1)]


def test_knee_of_a_minimised_objective_and_of_a_flat_front():
    # (top-1 max, ECE min): (70, 9), (65, 3), (60, 2). Scaled: top-1 1, .5, 0; -ECE (-9..-2) 0, 6/7, 1
    # -> sums 1, 1.357, 1: the knee is the middle one.
    objs = [Objective("val_top1", "max"), Objective("val_ece", "min")]
    trials = [type("T", (), {"number": n, "values": v})() for n, v in enumerate([(70, 9), (65, 3), (60, 2)])]
    assert pareto.knee(trials, objs).number == 1
    # an objective constant on the front counts 1 for every trial: the other decides
    flat = [type("T", (), {"number": n, "values": v})() for n, v in enumerate([(50, 10), (55, 10)])]
    assert pareto.knee(flat, objs[:1] + [Objective("val_worst_class")]).number == 1
    assert pareto.knee([], objs) is None


def test_report_of_a_pareto_search(tmp_path):
    spec = _spec(tmp_path)
    study = _filled_study(spec, default_storage_url(tmp_path, "pf"))
    rep = write_report(study, spec, tmp_path / "out", storage_display="sqlite:///x", retrain_command="retrain")
    folder = tmp_path / "out" / "report"
    best = json.loads((folder / "best.json").read_text())
    assert best["trial"] == 2 and best["values"] == {"val_top1": 50.0, "val_worst_class": 30.0}
    assert best["chosen_variant"] == "la_tau1.0" and best["params"]["u"] == 25
    rows = list(csv.DictReader((folder / "pareto_front.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    picks = {int(r["trial"]): r["picked as"] for r in rows}
    assert picks == {0: "best val_top1, reference: paper", 1: "", 2: "knee", 3: "best val_worst_class"}
    assert [float(r["raw val_top1"]) for r in rows] == [58.0, 53.0, 48.0, 38.0]
    text = rep.text
    assert "Trial 2, chosen on **val_top1 = 50.00 and val_worst_class = 30.00** as the knee of the Pareto front" in text
    assert "(4 of the 5 trials that trained all their epochs)" in text
    assert "Reference paper: trial 0 (val_top1=60.00, val_worst_class=0.000; on the front)." in text
    assert "read with **logit adjustment tau=1.0 on the max reading**" in text
    assert "logit adjustment tau=1.0 on the max reading x2, logit adjustment tau=2.0 on the max reading x1" in text
    import matplotlib.image

    for png in ("pareto_front.png", "per_class_vs_frequency.png", "optimization_history.png", "param_importances.png"):
        img = matplotlib.image.imread(folder / png)
        assert img.shape[0] > 300 and img.shape[1] > 500, png
    assert rep.skipped == {}


# ------------------------------------------------------------------------------------ reference, warm start
def test_reference_takes_the_base_value_of_what_it_leaves_out(tmp_path):
    spec = _spec(tmp_path, reference={"label": "paper", "params": {"u": 10, "clustering": "random"}})
    assert spec.reference.params == PAPER  # alpha 0.5 and lambda 1.5: the smoke recipe's (the config defaults)
    with pytest.raises(SearchSpaceError, match=r"reference 'paper': u=40 is outside the parameter's range \[2, 30\]"):
        _spec(tmp_path, reference={"label": "paper", "params": {"u": 40}})
    with pytest.raises(SearchSpaceError, match=r"reference 'paper': parameters \['beta'\] are not searched"):
        _spec(tmp_path, reference={"label": "paper", "params": {"beta": 1}})
    narrow = {"type": "float", "low": 0.6, "high": 1.0}
    with pytest.raises(SearchSpaceError, match=r"alpha=0.5 \(not given: the base config's value\) is outside"):
        _spec(tmp_path, params={"alpha": narrow}, reference={"label": "p", "params": {}})


def test_warm_start_ranks_the_source_and_enqueues_after_the_reference(tmp_path):
    src_spec = _spec(tmp_path, "src")
    src_url = default_storage_url(tmp_path, "src")
    _filled_study(src_spec, src_url)
    open_study(src_url, _spec(tmp_path, "other"))  # a second study in the same file: the source must be named
    with pytest.raises(SearchError, match=r"holds studies \['other', 'src'\]: name one with .*#STUDY"):
        resolve_warm_start(src_url)
    warm = resolve_warm_start(f"{src_url}#src", top=4)
    # front by mean first: #2 40, #1 37.5, #3 37.5, #0 30; then the dominated #4 27.5
    assert [t.number for t in rank_trials(warm.study)] == [2, 1, 3, 0, 4]

    spec = _spec(tmp_path, "new", params={**_spec(tmp_path).to_dict()["params"], "u": {"type": "int", "low": 2, "high": 20}})
    study = open_study(default_storage_url(tmp_path, "new"), spec)
    plan = enqueue(study, spec, warm)
    # the reference, then four distinct source configurations: #0 is the reference itself, so #4 comes in;
    # #2's u=25 is outside this space's [2, 20]: dropped, sampled instead
    assert [p["user_attrs"] for p in plan] == [{"reference": "paper"}] + [
        {"warm_start": f"{warm.shown} trial {n}"} for n in (2, 1, 3, 4)
    ]
    assert plan[1]["dropped"] == ["u"] and "u" not in plan[1]["params"]
    asked = []
    for _ in plan:
        t = study.ask()
        spec.suggest(t)
        asked.append(t)
    assert [t.params for t in asked][0] == PAPER
    assert [t.params for t in asked[2:]] == [PARAMS[1], PARAMS[3], PARAMS[4]]
    assert {k: v for k, v in asked[1].params.items() if k != "u"} == {k: v for k, v in PARAMS[2].items() if k != "u"}
    assert 2 <= asked[1].params["u"] <= 20
    assert enqueue(study, spec, warm) == []  # a study with trials is never seeded again


def test_warm_start_source_errors(tmp_path):
    with pytest.raises(SearchError, match=r"not a search folder .*search_space.yaml is missing\) nor an Optuna storage URL"):
        resolve_warm_start(str(tmp_path / "nowhere"))
    with pytest.raises(SearchError, match=r"study 'nope' not found in sqlite:///.*; it holds no study"):
        resolve_warm_start(f"{default_storage_url(tmp_path, 'empty')}#nope")
    with pytest.raises(SearchError, match=r"--warm-start-top 0 must be >= 1"):
        resolve_warm_start("x", top=0)


# ------------------------------------------------------------------------------------------------- extension
def test_a_rerun_may_only_raise_num_samples(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    meta = {"storage": "default", "data": None, "experiment": str(out / "pf")}
    assert save_record(str(out), spec, meta, extend=True) is None
    assert save_record(str(out), spec.replace(num_samples=8), meta, extend=True) == 6
    assert yaml.safe_load((out / "search_space.yaml").read_text())["search"]["num_samples"] == 8
    with pytest.raises(SearchError, match=r"holds this search with num_samples=8; a rerun may only raise it .*--num-samples 8"):
        save_record(str(out), spec.replace(num_samples=7), meta, extend=True, check_only=True)
    with pytest.raises(SearchError, match=r"Differences: base optim.lr: 0.1 -> 0.2; search.num_samples: 8 -> 9"):
        save_record(str(out), spec.replace(num_samples=9, set=["optim.lr=0.2"]), meta, extend=True, check_only=True)


def test_extension_segments():
    first = plan_segments({}, "/o/pf", "/o", "pf", None, 6)
    assert first == [Segment("/o/pf", "pf", 6)]
    assert plan_segments({}, "/o/pf", "/o", "pf", 6, 6) == first  # a resume
    two = plan_segments({}, "/o/pf", "/o", "pf", 6, 8)
    assert two == [Segment("/o/pf", "pf", 6), Segment("/o/pf-extend1", "pf-extend1", 2)]
    meta = {"segments": [{"experiment": s.experiment, "name": s.name, "num_samples": s.num_samples} for s in two]}
    assert plan_segments(meta, "/o/pf", "/o", "pf", 8, 11)[2] == Segment("/o/pf-extend2", "pf-extend2", 3)


def test_pareto_presets():
    smoke = load_search_space("smoke-pareto")
    gpu = load_search_space("cifar10-lt-pareto")
    for spec in (smoke, gpu):
        assert spec.metrics == ["val_top1", "val_worst_class"] and spec.posthoc and spec.score_mode == "max"
        assert {k: spec.reference.params[k] for k in PAPER} == PAPER
        assert spec.base.data.dataset == "cifar10-lt" and spec.base.data.imbalance == 100
    assert smoke.resources.gpus_per_trial == 0 and smoke.base.model.backbone == "resnet8"
    assert gpu.base.model.backbone == "resnet32" and gpu.base.optim.epochs == 200
    # CIFAR-10-LT's rarest class has 5000 / 100 = 50 training images: the "few" group (< 20) is empty
    assert math.floor(5000 / gpu.base.data.imbalance) >= 20


# ------------------------------------------------------------------------------------ slow: real searches
# The smoke-pareto preset through the CLI, shrunk: 5% of its train set, 4 epochs (its ASHA rung: no trial is
# stopped, so every trial's values can be checked), 4 trials.
SHRINK = ["--set", "data.train_fraction=0.05", "--set", "optim.epochs=4", "--set", "optim.milestones=[]", "--verbose", "0"]


def _history(run_dir: str) -> list[dict]:
    text = storage.read_bytes(storage.join(run_dir, "history.jsonl")).decode()
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def _by_hand(line: dict) -> tuple[float, dict[str, tuple[float, float]]]:
    """The best mean of (top-1, worst class) over the variants of one history line, and every variant's pair."""
    pairs = {
        v: (g["top1"], g["worst_class"])
        for v, g in {**line["val_by_inference_groups"], **line.get("val_posthoc_groups", {})}.items()
        if g["top1"] is not None and g["worst_class"] is not None
    }
    return max((a + b) / 2 for a, b in pairs.values()), pairs


@pytest.fixture(scope="module")
def pareto_searched(ray_session, data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pareto") / "out"
    assert search.main(["--preset", "smoke-pareto", "--out", str(out), "--num-samples", "4", *SHRINK]) == 0
    return out


def _study(out: Path, name: str = "smoke-pareto") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / f'{name}.db'}")


@pytest.mark.slow
def test_pareto_search_end_to_end(pareto_searched):
    out = pareto_searched
    study = _study(out)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["val_top1", "val_worst_class"]
    trials = study.trials
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    ref = trials[0]
    assert ref.user_attrs["reference"] == "paper (u=10, alpha=0.5, lambda=1.5, random)" and ref.params == PAPER
    for t in trials:
        hist = _history(t.user_attrs["run_dir"])
        # the score at each validated epoch: the best mean over the variants (a user attribute: several objectives)
        assert t.user_attrs["search_scores"] == {str(h["epoch"]): pytest.approx(_by_hand(h)[0]) for h in hist}
        best, pairs = _by_hand(hist[-1])
        chosen = t.user_attrs["chosen_variant"]
        assert sum(pairs[chosen]) / 2 == pytest.approx(best)
        assert t.user_attrs["val_per_class_recall"] == [round(v, 2) for v in hist[-1]["val_per_class"]["recall"][chosen]]
        assert t.user_attrs["val_per_class_recall_raw"] == [round(v, 2) for v in hist[-1]["val_per_class"]["recall"]["max"]]
        assert t.user_attrs["val_top1"] == pytest.approx(hist[-1]["val_top1"])  # the raw value, next to the chosen
        assert len(t.user_attrs["class_counts"]) == 10
        if t.state.name == "COMPLETE":
            assert hist[-1]["epoch"] == 4 and t.values == pytest.approx(list(pairs[chosen]))
            metrics = json.loads(storage.read_bytes(storage.join(t.user_attrs["run_dir"], "metrics.json")))
            assert t.user_attrs["class_counts"] == metrics["class_counts"]  # the run's own record of its data
        else:
            assert hist[-1]["epoch"] < 4 and t.values is None

    rep = out / "report"
    front = sorted(t.number for t in study.best_trials)
    rows = list(csv.DictReader((rep / "pareto_front.csv").open()))
    assert [int(r["trial"]) for r in rows] == front
    # the knee by its definition: objectives scaled to [0, 1] over the front, the largest sum (ties: lower number)
    pts = [t for t in study.trials if t.number in front]
    lo = [min(t.values[i] for t in pts) for i in range(2)]
    hi = [max(t.values[i] for t in pts) for i in range(2)]
    scaled = {t.number: sum(1.0 if hi[i] == lo[i] else (t.values[i] - lo[i]) / (hi[i] - lo[i]) for i in range(2)) for t in pts}
    knee = min(scaled, key=lambda n: (-scaled[n], n))
    best = json.loads((rep / "best.json").read_text())
    assert best["trial"] == knee and best["chosen"].startswith("as the knee of the Pareto front")
    import matplotlib.image

    for png in ("pareto_front.png", "per_class_vs_frequency.png"):
        img = matplotlib.image.imread(rep / png)
        assert img.shape[0] > 300 and img.shape[1] > 500
    text = (rep / "report.md").read_text()
    assert "## Pareto front" in text and "## Post-hoc choice" in text and "Reference paper (u=10" in text


@pytest.mark.slow
def test_extending_a_finished_search_adds_exactly_the_extra_trials(pareto_searched):
    out = pareto_searched
    before = [(t.number, t.state, t.values, t.datetime_complete) for t in _study(out).trials]
    assert search.main(["--preset", "smoke-pareto", "--out", str(out), "--num-samples", "6", *SHRINK]) == 0
    trials = _study(out).trials
    assert len(trials) == len(before) + 2
    assert [(t.number, t.state, t.values, t.datetime_complete) for t in trials[: len(before)]] == before
    assert {t.user_attrs["experiment"] for t in trials[len(before) :]} == {str(out / "smoke-pareto-extend1")}
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    meta = json.loads((out / "search.json").read_text())
    assert [s["num_samples"] for s in meta["segments"]] == [4, 2]
    assert yaml.safe_load((out / "search_space.yaml").read_text())["search"]["num_samples"] == 6
    # the same command again: the search is finished, nothing runs
    assert search.main(["--preset", "smoke-pareto", "--out", str(out), "--num-samples", "6", *SHRINK]) == 0
    assert len(_study(out).trials) == len(trials)
    assert "extended by 2 trials" in (out / "report" / "report.md").read_text()


@pytest.mark.slow
def test_warm_started_search_begins_with_the_best_of_the_finished_one(pareto_searched, tmp_path, capsys):
    source = _study(pareto_searched)
    out = tmp_path / "warm"
    args = ["--preset", "smoke-pareto", "--study-name", "warm", "--out", str(out), "--num-samples", "3", *SHRINK]
    args += ["--set", "data.imbalance=50", "--warm-start", str(pareto_searched), "--warm-start-top", "2"]
    assert search.main(args) == 0
    # the source's finished trials, Pareto-optimal first, then by the mean of the objectives; not the reference
    front = {t.number for t in source.best_trials}
    done = [t for t in source.trials if t.state.name == "COMPLETE"]
    ranked = sorted(done, key=lambda t: (t.number not in front, -sum(t.values) / 2, t.number))
    expected = [t for t in ranked if t.params != PAPER][:2]
    trials = _study(out, "warm").trials
    assert trials[0].params == PAPER and trials[0].user_attrs["reference"].startswith("paper")
    assert [t.params for t in trials[1 : 1 + len(expected)]] == [t.params for t in expected]
    assert [t.user_attrs["warm_start"] for t in trials[1 : 1 + len(expected)]] == [
        f"{pareto_searched}#smoke-pareto trial {t.number}" for t in expected
    ]
    meta = json.loads((out / "search.json").read_text())
    assert meta["warm_start"] == f"{pareto_searched}#smoke-pareto"
    assert yaml.safe_load((out / "search_space.yaml").read_text())["base"]["set"]["data.imbalance"] == 50
    # a rerun with another source is refused: a warm start only seeds a new search
    capsys.readouterr()
    assert search.main([*args[:-4], "--warm-start", str(out)]) == 2
    assert "a warm start only seeds a new search" in capsys.readouterr().err


@pytest.mark.slow
def test_a_drw_trial_is_never_stopped_before_its_reweighting_epoch(ray_session, data_root, tmp_path):
    """Ours-Full re-weights from method.drw_epoch = 1 (0-based: its second epoch); ASHA rungs at epochs 1 and 2. Every
    trial reports the ASHA metric from epoch 2 on only, so none is stopped after its first epoch."""
    d = {
        "base": {
            "preset": "smoke",
            "set": {
                "method.name": "twohead_full",
                "method.drw_epoch": 1,
                "data.train_fraction": 0.05,
                "optim.epochs": 3,
                "optim.milestones": [],
            },
        },
        "objectives": TWO,
        "params": {"u": {"type": "int", "low": 2, "high": 30}, "alpha": {"type": "float", "low": 0.3, "high": 1.0}},
        "search": {
            "num_samples": 4,
            "max_concurrent": 2,
            "seed": 3,
            "n_startup_trials": 4,
            "asha": {"grace_period": 1, "reduction_factor": 2},
        },
        "resources": {"cpus_per_trial": 1},
    }
    (tmp_path / "drw.yaml").write_text(yaml.safe_dump(d))
    res = search.run_search(load_search_space(tmp_path / "drw.yaml"), tmp_path / "out", verbose=0)
    assert res.errors == 0
    trials = _study(tmp_path / "out", "drw").trials
    assert len(trials) == 4
    for t in trials:
        assert t.user_attrs["epochs"] >= 2, f"trial {t.number} stopped at epoch {t.user_attrs['epochs']}"
        results = [json.loads(ln) for ln in (Path(t.user_attrs["run_dir"]).parent / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in results if "asha_score" in r] == [e for e in range(2, t.user_attrs["epochs"] + 1)]
        assert all("search_score" in r for r in results)  # every epoch validates: the score itself is there from epoch 1
