"""What a trial optimises: the reading / post-hoc variant it chooses on validation, its score, when ASHA may judge
it (real ASHAScheduler), and what the searcher records from its run folder (real Optuna studies; no Ray cluster).

Results are made as the loop and the trial make them: a nested history line (twohead.loop's validation entry),
flattened by rayjobs.train.reporting.flat_scalars, plus the trial's scoring fields. Expected choices are worked out by
hand in the comments.
"""

from __future__ import annotations

import json
import types

import optuna
import pytest

from rayjobs.search.objectives import ASHA_KEY, SCORE_KEY, Objective, TrialScoring, judge_from, scoring_for
from rayjobs.search.searcher import StudySearcher
from rayjobs.search.space import parse_search_space
from rayjobs.search.study import default_storage_url, open_study
from rayjobs.search.tuning import asha_scheduler
from rayjobs.train.reporting import flat_scalars

optuna.logging.set_verbosity(optuna.logging.WARNING)
TOP1, WORST = Objective("val_top1", "max"), Objective("val_worst_class", "max")
ENV = "TWOHEAD_TEST_OBJECTIVES_STORAGE"


def _groups(top1: float, worst: float) -> dict:
    return {"top1": top1, "many": top1, "medium": None, "few": None, "worst_class": worst}


def _line(epoch: int, readings: dict, posthoc: dict, *, groups: bool = True, recall: dict | None = None) -> dict:
    """A history line as twohead.loop writes it; ``readings`` / ``posthoc``: {variant: (top1, worst)}; the first
    reading is the configured one (max)."""
    raw = readings["max"]
    line = {"epoch": epoch, "val_top1": raw[0], "val_worst_class": raw[1], "val_ece": 7.5}
    line["val_by_inference_groups"] = {r: _groups(*v) for r, v in readings.items()}
    line["val_posthoc"] = {k: v[0] for k, v in posthoc.items()}
    if groups:
        line["val_posthoc_groups"] = {k: _groups(*v) for k, v in posthoc.items()}
    if recall is not None:
        line["val_per_class"] = {"counts": [500, 50, 5], "recall": recall}
    return line


READINGS = {"max": (40.0, 0.0), "sum": (42.0, 5.0)}
POSTHOC = {"la_tau1.0": (45.0, 0.0), "la_tau2.0": (38.0, 20.0)}


# ------------------------------------------------------------------------------------------------- the choice
def test_one_objective_takes_the_best_variant_on_validation():
    s = TrialScoring((TOP1,))
    f = s.fields(flat_scalars(_line(3, READINGS, POSTHOC)))
    # top-1: max 40, sum 42, la_tau1.0 45, la_tau2.0 38 -> la_tau1.0; the score is its top-1
    assert f == {"chosen_variant": "la_tau1.0", "chosen/val_top1": 45.0, SCORE_KEY: 45.0, ASHA_KEY: 45.0}


def test_two_objectives_take_the_best_mean():
    s = TrialScoring((TOP1, WORST))
    f = s.fields(flat_scalars(_line(3, READINGS, POSTHOC)))
    # means: max (40+0)/2 = 20, sum 23.5, la_tau1.0 22.5, la_tau2.0 (38+20)/2 = 29 -> la_tau2.0
    assert f["chosen_variant"] == "la_tau2.0"
    assert (f["chosen/val_top1"], f["chosen/val_worst_class"], f[SCORE_KEY]) == (38.0, 20.0, 29.0)
    # posthoc: false keeps the configured reading
    g = TrialScoring((TOP1, WORST), posthoc=False).fields(flat_scalars(_line(3, READINGS, POSTHOC)))
    assert (g["chosen_variant"], g["chosen/val_top1"], g["chosen/val_worst_class"], g[SCORE_KEY]) == ("max", 40.0, 0.0, 20.0)


def test_variants_without_a_value_for_every_objective_are_not_candidates():
    # A history without posthoc groups has only the post-hoc variants' top-1: for (top-1, worst class) the readings
    # remain, max 20 vs sum 23.5 -> sum.
    f = TrialScoring((TOP1, WORST)).fields(flat_scalars(_line(3, READINGS, POSTHOC, groups=False)))
    assert (f["chosen_variant"], f[SCORE_KEY]) == ("sum", 23.5)
    # ECE exists for the configured reading only: a search on it keeps that reading, and compares in its mode.
    e = TrialScoring((Objective("val_ece", "min"),)).fields(flat_scalars(_line(3, READINGS, POSTHOC)))
    assert (e["chosen_variant"], e["chosen/val_ece"], e[SCORE_KEY]) == ("max", 7.5, 7.5)


def test_ties_go_to_the_configured_reading():
    tied = {"max": (40.0, 10.0), "sum": (40.0, 10.0)}
    f = TrialScoring((TOP1, WORST)).fields(flat_scalars(_line(1, tied, {"la_tau1.0": (40.0, 10.0)})))
    assert f["chosen_variant"] == "max"
    assert TrialScoring((TOP1,)).fields({"epoch": 2, "train_loss": 1.0}) == {}  # no validation at this epoch


def test_deferred_reweighting_methods_are_judged_after_their_reweighting_epoch():
    assert judge_from("twohead", 160) == 1 and judge_from("cb_focal", 160) == 1
    assert judge_from("ldam_drw", 160) == 161 and judge_from("twohead_full", 3) == 4
    s = TrialScoring((TOP1,), judge_from=4)
    assert ASHA_KEY not in s.fields(flat_scalars(_line(3, READINGS, POSTHOC)))
    assert s.fields(flat_scalars(_line(3, READINGS, POSTHOC)))[SCORE_KEY] == 45.0  # still the intermediate value
    assert s.fields(flat_scalars(_line(4, READINGS, POSTHOC)))[ASHA_KEY] == 45.0


def _drw_spec(tmp_path):
    d = {
        "base": {
            "preset": "smoke",
            "set": {"method.name": "ldam_drw", "method.drw_epoch": 2, "optim.epochs": 4, "optim.milestones": []},
        },
        "objectives": [{"metric": "val_top1"}, {"metric": "val_worst_class"}],
        "params": {"optim.lr": {"type": "float", "low": 0.05, "high": 0.2}},
        "search": {"num_samples": 2, "asha": {"grace_period": 1, "reduction_factor": 2}},
    }
    return parse_search_space(d, source=str(tmp_path / "drw.yaml"), study_name="drw")


@pytest.mark.parametrize("gated", [True, False])
def test_asha_never_stops_a_drw_trial_before_its_reweighting_epoch(tmp_path, gated):
    """The search's real ASHAScheduler fed the results two LDAM-DRW trials report (drw_epoch 2 of 4 epochs; rungs at
    epochs 1, 2, 4). Trial B is far behind A at every epoch: ungated, ASHA stops it at epoch 1 (its rung-1 value is
    under A's); gated (what trials report) it gets no ASHA metric before epoch 3 and is judged then, at rung 2."""
    spec = _drw_spec(tmp_path)
    scoring = scoring_for(spec, spec.trial_config({"optim.lr": 0.1}))
    assert scoring.judge_from == 3
    if not gated:
        scoring = TrialScoring(scoring.objectives, scoring.default, scoring.posthoc, judge_from=1)
    scheduler = asha_scheduler(spec)
    a, b = types.SimpleNamespace(trial_id="a"), types.SimpleNamespace(trial_id="b")
    scheduler.on_trial_add(None, a)
    scheduler.on_trial_add(None, b)
    stopped = {}
    for epoch in range(1, 5):
        for trial, (top1, worst) in ((a, (50.0 + epoch, 10.0)), (b, (10.0, 0.0))):
            if trial.trial_id in stopped:
                continue
            flat = flat_scalars(_line(epoch, {"max": (top1, worst), "sum": (top1, worst)}, {}))
            decision = scheduler.on_trial_result(None, trial, {**flat, **scoring.fields(flat)})
            if decision == "STOP":
                stopped[trial.trial_id] = epoch
    assert stopped == ({"b": 3, "a": 4} if gated else {"b": 1, "a": 4})  # A ends at max_t


# -------------------------------------------------------------------------------------- what the study keeps
@pytest.fixture
def mo_spec(tmp_path):
    d = {
        "base": {"preset": "smoke", "set": {"optim.epochs": 2, "optim.milestones": []}},
        "objectives": [{"metric": "val_top1", "mode": "max"}, {"metric": "val_worst_class", "mode": "max"}],
        "params": {"u": {"type": "int", "low": 2, "high": 30}},
        "search": {"num_samples": 2, "seed": 0},
    }
    return parse_search_space(d, source=str(tmp_path / "mo.yaml"), study_name="mo")


def test_a_pareto_trial_records_its_choice_per_class_recall_and_counts(mo_spec, tmp_path, monkeypatch):
    url = default_storage_url(tmp_path, "mo")
    monkeypatch.setenv(ENV, url)
    open_study(url, mo_spec)
    s = StudySearcher(mo_spec, storage_env=ENV, experiment=str(tmp_path / "mo"), sampler=optuna.samplers.TPESampler(seed=0))
    run = tmp_path / "run"
    run.mkdir()
    recall = {
        "max": [100.0, 10.0, 0.0],
        "sum": [90.0, 30.0, 10.0],
        "la_tau1.0": [80.0, 40.0, 20.0],
        "la_tau2.0": [60.0, 50.0, 40.0],
    }
    e1 = _line(1, READINGS, POSTHOC, recall=recall)
    # epoch 2: la_tau1.0 (50, 20) and la_tau2.0 (40, 30) tie at a mean of 35, above max 22 and sum 28: the earlier
    # variant in the loop's order wins
    e2 = _line(
        2, {"max": (44.0, 0.0), "sum": (46.0, 10.0)}, {"la_tau1.0": (50.0, 20.0), "la_tau2.0": (40.0, 30.0)}, recall=recall
    )
    (run / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in (e1, e2)))
    test_groups = {"top1": 33.0, "many": 40.0, "medium": 30.0, "few": None, "worst_class": 12.0}
    (run / "metrics.json").write_text(
        json.dumps({"top1": 30.0, "posthoc": {"la_tau1.0": 33.0}, "posthoc_groups": {"la_tau1.0": test_groups}})
    )
    scoring = TrialScoring(mo_spec.objectives)
    s.suggest("t")
    for line in (e1, e2):
        flat = {**flat_scalars(line), "epochs_total": 2, "run_dir": str(run)}
        result = {**flat, **scoring.fields(flat)}
        if line["epoch"] == 1:
            s.on_trial_result("t", result)
        else:
            s.on_trial_complete("t", result)
    (t,) = optuna.load_study(study_name="mo", storage=url).trials
    assert t.state.name == "COMPLETE" and t.values == [50.0, 20.0]
    # epoch 1 la_tau2.0 (38+20)/2; epoch 2 la_tau1.0 (50+20)/2. Optuna has no intermediate values for several
    # objectives: the scores are a user attribute.
    assert t.intermediate_values == {} and t.user_attrs["search_scores"] == {"1": 29.0, "2": 35.0}
    a = t.user_attrs
    assert a["chosen_variant"] == "la_tau1.0" and (a["val_top1"], a["val_worst_class"]) == (44.0, 0.0)  # raw: max
    assert a["class_counts"] == [500, 50, 5]
    assert a["val_per_class_recall"] == recall["la_tau1.0"] and a["val_per_class_recall_raw"] == recall["max"]
    # test under the chosen variant, from metrics.json (an empty group, None, is left out)
    assert {k: v for k, v in a.items() if k.startswith("chosen/test_")} == {
        f"chosen/test_{k}": v for k, v in test_groups.items() if v is not None
    }
    study = optuna.load_study(study_name="mo", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"] and study.metric_names == [
        "val_top1",
        "val_worst_class",
    ]


def test_a_pruned_pareto_trial_has_no_values_and_tpe_goes_on(mo_spec, tmp_path, monkeypatch):
    """A trial ASHA stopped: PRUNED without values, its record kept; TPE past its start-up trials still proposes
    (it would fail on a pruned multi-objective trial with intermediate values)."""
    url = default_storage_url(tmp_path, "mo")
    monkeypatch.setenv(ENV, url)
    open_study(url, mo_spec)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=1)
    s = StudySearcher(mo_spec, storage_env=ENV, experiment=str(tmp_path / "mo"), sampler=sampler)
    scoring = TrialScoring(mo_spec.objectives)
    for tid, epoch in (("done", 2), ("p", 1)):
        s.suggest(tid)
        flat = {**flat_scalars(_line(epoch, READINGS, POSTHOC)), "epochs_total": 2}
        s.on_trial_result(tid, {**flat, **scoring.fields(flat)})
        s.on_trial_complete(tid, {**flat, **scoring.fields(flat)})
    assert 2 <= s.suggest("next")["u"] <= 30
    done, pruned, _ = optuna.load_study(study_name="mo", storage=url).trials
    assert done.state.name == "COMPLETE" and done.values == [38.0, 20.0]
    assert pruned.state.name == "PRUNED" and pruned.values is None and pruned.intermediate_values == {}
    assert pruned.user_attrs["search_scores"] == {"1": 29.0}
    assert (pruned.user_attrs["chosen_variant"], pruned.user_attrs["chosen/val_worst_class"]) == ("la_tau2.0", 20.0)


def test_study_of_other_objectives_is_refused(mo_spec, tmp_path):
    from rayjobs.search.study import SearchError

    url = default_storage_url(tmp_path, "mo")
    optuna.create_study(storage=url, study_name="mo", direction="maximize")
    with pytest.raises(
        SearchError, match=r"exists with direction maximize, but this search is objectives \['val_top1', 'val_worst_class'\]"
    ):
        open_study(url, mo_spec)
    url2 = default_storage_url(tmp_path, "mo2")
    optuna.create_study(storage=url2, study_name="mo", directions=["maximize", "maximize"]).set_user_attr(
        "objectives", ["val_top1", "val_few"]
    )
    with pytest.raises(SearchError, match=r"optimises \['val_top1', 'val_few'\], this search \['val_top1', 'val_worst_class'\]"):
        open_study(url2, mo_spec)
