"""rayjobs.search.searcher: the study records what happened to each Tune trial (real Optuna studies, no Ray cluster).

Tune's calls are replayed in the order Tune makes them (suggest, on_trial_result per reported epoch, then
on_trial_complete with the last result; a trial stopped by ASHA gets only on_trial_complete for its last epoch).
"""

from __future__ import annotations

import types

import optuna
import pytest
import ray.cloudpickle
import yaml
from optuna.trial import TrialState

from rayjobs.search.objectives import Objective, TrialScoring
from rayjobs.search.report import select_best
from rayjobs.search.searcher import INTERRUPTED, StudySearcher, outcome, reconcile
from rayjobs.search.space import load_search_space
from rayjobs.search.study import default_storage_url, open_storage, open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
ENV = "TWOHEAD_TEST_SEARCHER_STORAGE"


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "base": {"preset": "smoke", "set": {"optim.epochs": 3, "optim.milestones": []}},
                "params": {
                    "u": {"type": "int", "low": 2, "high": 30},
                    "clustering": {"type": "categorical", "choices": ["random", "kmeans"]},
                },
                "search": {"num_samples": 4, "seed": 0, "n_startup_trials": 2},
            }
        )
    )
    return load_search_space(p)


@pytest.fixture
def url(tmp_path, spec, monkeypatch):
    # The folder name stands in for a secret: it must never reach a pickle.
    folder = tmp_path / "secret-4b1d"
    folder.mkdir()
    u = default_storage_url(folder, spec.study_name)
    monkeypatch.setenv(ENV, u)
    open_study(u, spec)
    return u


# What a trial of a one-objective (val_top1) search adds to each result (rayjobs.search.trial): the results below are
# made the way trials make them.
SCORING = TrialScoring((Objective("val_top1", "max"),), default="max")


def _r(epoch: int, val: float | None = None, **extra) -> dict:
    """A Tune result of epoch ``epoch`` (of 3), validated when ``val`` is given, with the trial's scoring fields."""
    r = {"epoch": epoch, "epochs_total": 3, **({"val_top1": val} if val is not None else {}), **extra}
    return {**r, **SCORING.fields(r)}


def _searcher(spec) -> StudySearcher:
    return StudySearcher(spec, storage_env=ENV, experiment="s3://b/search/s", sampler=optuna.samplers.TPESampler(seed=0))


def test_outcome_of_a_last_result():
    assert outcome(_r(3, 40.0), ["val_top1"], False) == ("COMPLETE", [40.0])
    # Tune sets done=True on the last result of a trial the scheduler stopped: that is not a finished trial.
    assert outcome(_r(1, 40.0, done=True), ["val_top1"], False) == ("PRUNED", None)
    assert outcome(_r(3), ["val_top1"], True) == ("FAIL", None)
    assert outcome(None, ["val_top1"], False) == ("PRUNED", None)
    # The study's values are the chosen variant's: a raw value alone (no scoring fields) is not a finished trial.
    assert outcome({"epoch": 3, "epochs_total": 3, "val_top1": 40.0}, ["val_top1"], False) == ("PRUNED", None)
    two = {"epoch": 3, "epochs_total": 3, "chosen/val_top1": 40.0, "chosen/val_worst_class": 12.5}
    assert outcome(two, ["val_top1", "val_worst_class"], False) == ("COMPLETE", [40.0, 12.5])


def test_each_trial_is_recorded_with_its_true_state(spec, url):
    s = _searcher(spec)
    params = {tid: s.suggest(tid) for tid in ("full", "asha", "error", "cut")}
    for e, v in ((1, 20.0), (2, 30.0)):
        s.on_trial_result("full", _r(e, v, data_uri="s3://b/d", labels_uri="s3://b/d/l"))
    s.on_trial_result("full", _r(3))  # an epoch without validation (run.eval_every > 1)
    s.on_trial_complete("full", _r(3, 35.0, test_top1=33.0))
    s.on_trial_complete("asha", _r(1, 52.5, done=True))
    s.on_trial_result("error", _r(1, 10.0))
    s.on_trial_complete("error", error=True)
    s.on_trial_result("cut", _r(1, 15.0))
    INTERRUPTED.set()
    try:
        s.on_trial_complete("cut", _r(1, 15.0))
        assert s.suggest("late") is None  # an interrupted driver starts no new trial
    finally:
        INTERRUPTED.clear()

    by_tune = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(study_name=spec.study_name, storage=url).trials}
    assert {k: t.state for k, t in by_tune.items()} == {
        "full": TrialState.COMPLETE,
        "asha": TrialState.PRUNED,
        "error": TrialState.FAIL,
        "cut": TrialState.RUNNING,
    }
    full, asha = by_tune["full"], by_tune["asha"]
    assert full.value == 35.0 and full.intermediate_values == {1: 20.0, 2: 30.0, 3: 35.0}
    assert full.user_attrs["epochs"] == 3 and full.user_attrs["test_top1"] == 33.0
    assert (full.user_attrs["chosen_variant"], full.user_attrs["chosen/val_top1"], full.user_attrs["val_top1"]) == (
        "max",
        35.0,
        35.0,
    )
    assert (full.user_attrs["data_uri"], full.user_attrs["labels_uri"]) == ("s3://b/d", "s3://b/d/l")
    assert asha.value == 52.5 and asha.intermediate_values == {1: 52.5}  # Optuna: last intermediate value
    assert by_tune["cut"].intermediate_values == {1: 15.0}
    assert {k: dict(t.params) for k, t in by_tune.items()} == params
    assert all(t.user_attrs["experiment"] == "s3://b/search/s" for t in by_tune.values())

    # The report chooses among trials that trained all their epochs: the pruned trial's 52.5 is not comparable.
    best, note = select_best(optuna.load_study(study_name=spec.study_name, storage=url), spec)
    assert best.number == full.number and note == "among the 1 trials that trained all their epochs"


def test_pickles_hold_no_storage_url_and_a_restored_searcher_continues(spec, url, tmp_path):
    s = _searcher(spec)
    s.suggest("a")
    s.on_trial_result("a", _r(1, 20.0))
    blob = ray.cloudpickle.dumps(s)  # what Tune writes into tuner.pkl
    s.save(str(tmp_path / "searcher-state.pkl"))  # what Tune writes into the experiment folder
    for data in (blob, (tmp_path / "searcher-state.pkl").read_bytes()):
        assert b"secret-4b1d" not in data and b"sqlite" not in data

    restored = ray.cloudpickle.loads(blob)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    restored.on_trial_result("a", _r(2, 25.0))
    restored.on_trial_complete("a", _r(3, 27.5))
    (t,) = optuna.load_study(study_name=spec.study_name, storage=url).trials
    assert t.state == TrialState.COMPLETE and t.value == 27.5 and t.intermediate_values == {1: 20.0, 2: 25.0, 3: 27.5}


def test_reconcile_settles_running_trials_from_tunes_results(spec, url):
    s = _searcher(spec)
    for tid in ("done", "stopped", "broken", "unknown"):
        s.suggest(tid)
    other = optuna.load_study(study_name=spec.study_name, storage=url).ask()  # another experiment's live trial
    other.set_user_attr("experiment", "s3://b/search/other")
    results = [
        types.SimpleNamespace(metrics=_r(3, 41.0, trial_id="done"), error=None),
        types.SimpleNamespace(metrics=_r(1, 9.0, trial_id="stopped"), error=None),
        types.SimpleNamespace(metrics=_r(2, trial_id="broken"), error=RuntimeError("x")),
    ]
    study = optuna.load_study(study_name=spec.study_name, storage=url)
    assert reconcile(study, open_storage(url), "s3://b/search/s", results, spec) == 3
    states = {t.user_attrs.get("tune_trial_id", "other"): (t.state.name, t.value) for t in study.trials}
    assert states == {
        "done": ("COMPLETE", 41.0),
        "stopped": ("PRUNED", 9.0),
        "broken": ("FAIL", None),
        "unknown": ("RUNNING", None),  # no Tune result: left to the orphan rule
        "other": ("RUNNING", None),
    }


def test_a_trial_asked_by_a_killed_driver_is_adopted_not_failed(spec, url, tmp_path):
    first = _searcher(spec)
    first.suggest("a")
    first.save(str(tmp_path / "snapshot.pkl"))  # the last experiment snapshot before the crash
    lost = first.suggest("b")  # asked, then the driver died before Tune recorded trial b
    second = _searcher(spec)
    second.restore(str(tmp_path / "snapshot.pkl"))
    assert second.suggest("c") == lost  # trial c continues the study's trial #1 with its parameters
    second.on_trial_complete("c", _r(3, 30.0))
    second.suggest("d")  # the next one is a new ask
    trials = optuna.load_study(study_name=spec.study_name, storage=url).trials
    assert [(t.number, t.state.name, t.user_attrs["tune_trial_id"]) for t in trials] == [
        (0, "RUNNING", "a"),
        (1, "COMPLETE", "c"),
        (2, "RUNNING", "d"),
    ]


def test_a_trial_asked_but_never_given_parameters_is_adopted(spec, url, monkeypatch):
    """A driver killed between ``study.ask`` and its first tag leaves a RUNNING trial with no parameters and no
    attributes. A later driver gives it parameters and runs it under its number; a trial asked less than a second
    before that driver began (a live driver's ask in progress) is left alone."""
    import datetime
    import time

    from rayjobs.search import searcher

    study = optuna.load_study(study_name=spec.study_name, storage=url)
    study.ask()  # the killed driver's trial #0, asked 1.5 s before the new driver began
    time.sleep(1.2)
    study.ask()  # trial #1, asked 0.3 s before it: within the one-second window, so not adopted
    monkeypatch.setattr(searcher, "_DRIVER_STARTED", datetime.datetime.now() + datetime.timedelta(seconds=0.3))
    s = _searcher(spec)
    params = s.suggest("c")
    assert 2 <= params["u"] <= 30 and params["clustering"] in ("random", "kmeans")
    s.suggest("d")
    trials = optuna.load_study(study_name=spec.study_name, storage=url).trials
    assert [(t.number, t.params, t.user_attrs.get("tune_trial_id")) for t in trials[:1]] == [(0, params, "c")]
    assert trials[1].params == {} and trials[1].user_attrs == {}  # left alone
    assert trials[2].user_attrs["tune_trial_id"] == "d"  # a new ask


def _drops_once(storage, method: str, monkeypatch) -> list[str]:
    """Make ``storage.<method>`` fail once as a lost database connection does, then work; returns the call log."""
    import sqlalchemy.exc

    real, calls = getattr(storage, method), []

    def flaky(*args, **kwargs):
        calls.append(method)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("UPDATE ...", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, method, flaky)
    return calls


def test_a_call_that_loses_the_database_is_repeated(spec, url, monkeypatch, caplog):
    """The study's database goes away during a searcher call (a restart, a failover): the call is repeated until
    it answers, and repeating it records nothing twice; ``suggest`` completes the trial it had asked for."""
    from rayjobs.search import searcher

    monkeypatch.setattr(searcher.time, "sleep", lambda s: None)
    s = _searcher(spec)
    s.study  # noqa: B018 - opens the storage
    storage = s._live["storage"]
    calls = _drops_once(storage, "set_trial_user_attr", monkeypatch)  # fails after study.ask(), before the tags
    params = s.suggest("a")
    assert len(calls) >= 2 and "the study's database did not answer" in caplog.text
    calls = _drops_once(storage, "set_trial_intermediate_value", monkeypatch)
    s.on_trial_result("a", _r(1, 30.0))
    s.on_trial_complete("a", _r(3, 40.0))
    (t,) = optuna.load_study(study_name=spec.study_name, storage=url).trials  # one trial, not one per attempt
    assert t.params == params and t.user_attrs["tune_trial_id"] == "a" and t.state.name == "COMPLETE"
    assert t.intermediate_values == {1: 30.0, 3: 40.0} and calls[:2] == ["set_trial_intermediate_value"] * 2


def test_an_error_that_a_retry_cannot_cure_is_raised_at_once(spec, url, monkeypatch):
    from rayjobs.search import searcher

    slept = []
    monkeypatch.setattr(searcher.time, "sleep", slept.append)
    s = _searcher(spec)
    s.study  # noqa: B018
    monkeypatch.setattr(s._live["storage"], "set_trial_user_attr", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):
        s.suggest("a")
    assert slept == []


class _Clock:
    """A monotonic clock that ``sleep`` advances: a long outage in no time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _down_for(storage, method: str, seconds: float, clock: _Clock, monkeypatch) -> list[float]:
    """``storage.<method>`` refuses connections for ``seconds`` of ``clock``, then works; returns the call times."""
    import sqlalchemy.exc

    real, calls, until = getattr(storage, method), [], clock.now + seconds

    def down(*args, **kwargs):
        calls.append(clock.now)
        if clock.now < until:
            raise sqlalchemy.exc.OperationalError("SELECT ...", {}, Exception("connection refused"))
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, method, down)
    return calls


def test_a_database_outage_is_waited_out_as_long_as_db_timeout_says(spec, url, monkeypatch, caplog):
    """A 20-minute outage (longer than the default) is waited out under --db-timeout 1800, with one line when the
    wait starts and one when the database is back; the trial is recorded once."""
    import logging

    from rayjobs.search import searcher

    clock = _Clock()
    monkeypatch.setattr(searcher, "time", clock)
    monkeypatch.setattr(searcher, "_db_timeout_s", searcher.DB_TIMEOUT_S)
    searcher.set_db_timeout(1800)
    s = _searcher(spec)
    s.study  # noqa: B018 - opens the storage
    calls = _down_for(s._live["storage"], "set_trial_user_attr", 1200.0, clock, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="rayjobs.search"):
        params = s.suggest("a")
    said = [r.getMessage() for r in caplog.records if r.name == "rayjobs.search"]
    assert len(said) == 2, said
    assert said[0].startswith("the study's database did not answer") and "up to 1800 s (--db-timeout)" in said[0]
    assert said[1].startswith("the study's database answered again after 12") and said[1].endswith("the search goes on")
    assert calls[-1] - calls[0] >= 1200 and max(b - a for a, b in zip(calls, calls[1:])) <= 10.0  # polls every <=10 s
    (t,) = optuna.load_study(study_name=spec.study_name, storage=url).trials
    assert t.params == params and t.user_attrs["tune_trial_id"] == "a"


def test_an_outage_longer_than_db_timeout_stops_with_one_line(spec, url, monkeypatch, tmp_path):
    """Past --db-timeout the call raises DatabaseOutage (the driver prints it as one line, exit 1); a bad
    --db-timeout is refused."""
    from rayjobs.search import searcher

    clock = _Clock()
    monkeypatch.setattr(searcher, "time", clock)
    monkeypatch.setattr(searcher, "_db_timeout_s", searcher.DB_TIMEOUT_S)
    searcher.set_db_timeout(60)
    s = _searcher(spec)
    s.study  # noqa: B018
    start = clock.now
    _down_for(s._live["storage"], "set_trial_user_attr", 3600.0, clock, monkeypatch)
    with pytest.raises(searcher.DatabaseOutage, match=r"did not answer for 60 s \(--db-timeout\) \(.*connection refused"):
        s.suggest("a")
    assert 50 <= clock.now - start <= 60
    for bad in (0, -5):
        with pytest.raises(ValueError, match=rf"--db-timeout {bad} must be > 0 seconds"):
            searcher.set_db_timeout(bad)
