"""Optuna's ask/tell behind Ray Tune's ``Searcher`` interface: the study records what really happened.

Ray's ``OptunaSearch`` records trials that ASHA stopped as COMPLETE, marks the trials of an interrupted driver
FAIL, and pickles its storage (URL and password) into ``tuner.pkl`` and the searcher state. This searcher uses
only Optuna's public API:

- ``suggest``: ``study.ask()``, the define-by-run space (:meth:`SearchSpec.suggest`), user attributes
  ``tune_trial_id`` / ``experiment`` (or a trial a killed driver asked for after its last snapshot, adopted);
- ``on_trial_result``: the validation metric as the intermediate value **at step = epoch** (only epochs that ran a
  validation pass carry it), plus the trial's ``data_uri`` / ``labels_uri`` once;
- ``on_trial_complete``: ``study.tell`` with the true state: COMPLETE (the trial trained all its epochs), PRUNED
  (stopped early by the scheduler; Optuna stores the last intermediate value as its value, so TPE ranks it
  correctly and optuna-dashboard shows it as pruned), FAIL (an error after the retry budget).

While the driver is being interrupted (Ctrl-C / SIGTERM, :data:`INTERRUPTED`), nothing is told: the running trials
stay RUNNING in the study, Tune's last experiment snapshot has them as unfinished, and the rerun continues them
under the same Optuna trial numbers. :func:`reconcile` settles, from Tune's results, any trial the study still has
RUNNING once a search ends (e.g. a study snapshot older than Tune's).

Pickled state (``tuner.pkl``, ``searcher-state-*.pkl``) holds the Tune-id -> trial-number map, the sampler and the
*name* of the environment variable that holds the storage URL, never the URL.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ray.tune.search import Searcher

__all__ = ["INTERRUPTED", "RECORDED", "StudySearcher", "outcome", "reconcile"]

log = logging.getLogger("rayjobs.search")

INTERRUPTED = threading.Event()  # set by the driver's signal handler: stop telling the study anything

# Per-trial facts copied into the study as user attributes (shown by optuna-dashboard, used by the report).
# test_* is recorded here only: the searcher and ASHA see `spec.metric` (val_*) alone.
RECORDED = (
    "epoch",
    "val_top1",
    "val_many",
    "val_medium",
    "val_few",
    "test_top1",
    "test_many",
    "test_medium",
    "test_few",
    "train_img_per_s",
    "run_dir",
    "data_uri",
    "labels_uri",
    "data_start_s",
    "node_decode_s",
    "time_total_s",
)
_ONCE = ("data_uri", "labels_uri", "run_dir")


def outcome(result: dict | None, metric: str, error: bool) -> tuple[str, float | None]:
    """(Optuna state name, value) of a finished Tune trial from its last result."""
    if error:
        return "FAIL", None
    if not result:
        return "PRUNED", None
    # Not Tune's "done": it is also set on the last result of a trial the scheduler stopped.
    value = result.get(metric)
    epochs, total = result.get("epoch"), result.get("epochs_total")
    if epochs is not None and total is not None and int(epochs) >= int(total) and value is not None:
        return "COMPLETE", float(value)
    return "PRUNED", None


class StudySearcher(Searcher):
    """A Tune searcher over an Optuna study (see the module docstring)."""

    def __init__(self, spec: Any, *, storage_env: str, experiment: str, sampler: Any):
        super().__init__(metric=spec.metric, mode=spec.mode)
        self._spec = spec
        self._storage_env = storage_env
        self._experiment = experiment
        self._sampler = sampler
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._live: dict[str, Any] = {}  # not pickled: study, storage, ids, recorded attrs, callback
        self.on_change: Callable[[], None] | None = None

    # ---- pickling: never the storage ------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_live"] = {}
        state["on_change"] = None
        return state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"numbers": self._numbers, "sampler": self._sampler}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self._numbers = dict(state["numbers"])
        self._sampler = state["sampler"]
        self._live = {}

    # ---- the study ---------------------------------------------------------------------------------
    @property
    def study(self):
        if "study" not in self._live:
            from rayjobs.study import SearchError, open_storage, open_study

            url = os.environ.get(self._storage_env)
            if not url:
                raise SearchError(f"the searcher's storage variable {self._storage_env} is not set in this process")
            storage = open_storage(url)
            self._live.update(
                storage=storage,
                study=open_study(url, self._spec, create=False, storage=storage, sampler=self._sampler),
                ids={},
                recorded=set(),
            )
        return self._live["study"]

    def _trial_id(self, number: int) -> int:
        ids = self._live.setdefault("ids", {})
        if number not in ids:
            storage = self._live["storage"]
            study_id = storage.get_study_id_from_name(self._spec.study_name)
            ids[number] = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return ids[number]

    def _set_attr(self, number: int, key: str, value: Any) -> None:
        import optuna

        try:
            self._live["storage"].set_trial_user_attr(self._trial_id(number), key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished by an earlier driver: its record is final

    # ---- Searcher ----------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric and mode come from the search space

    def suggest(self, trial_id: str) -> dict | None:
        if INTERRUPTED.is_set():
            return None
        study = self.study
        orphan = self._orphan()
        if orphan is not None:
            self._numbers[trial_id] = orphan.number
            self._set_attr(orphan.number, "tune_trial_id", trial_id)
            return dict(orphan.params)
        trial = study.ask()
        self._spec.suggest(trial)
        trial.set_user_attr("tune_trial_id", trial_id)
        trial.set_user_attr("experiment", self._experiment)
        self._numbers[trial_id] = trial.number
        return dict(trial.params)

    def _orphan(self) -> Any:
        """A trial of this experiment that a killed driver asked for after its last experiment snapshot: RUNNING
        in the study, unknown to the restored Tune state. It is given to the next Tune trial instead of a new ask,
        so the crash leaves no FAIL behind and the trial numbers stay those the study handed out."""
        from optuna.trial import TrialState

        known = set(self._numbers.values())
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("experiment") == self._experiment and t.number not in known and t.params:
                return t
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        number = self._numbers.get(trial_id)
        if number is None:
            return
        self.study  # noqa: B018 - opens the storage after a restore
        recorded = self._live.setdefault("recorded", set())
        for key in _ONCE:
            if result.get(key) is not None and (trial_id, key) not in recorded:
                self._set_attr(number, key, result[key])
                recorded.add((trial_id, key))
        self._intermediate(number, result)

    def _intermediate(self, number: int, result: dict) -> None:
        """The validation metric of ``result`` as the trial's intermediate value at step = epoch."""
        import optuna

        value, epoch = result.get(self.metric), result.get("epoch")
        if value is None or epoch is None:
            return
        try:
            self._live["storage"].set_trial_intermediate_value(self._trial_id(number), int(epoch), float(value))
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("Optuna trial #%d already finished in the study; keeping its record", number)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if INTERRUPTED.is_set():
            return  # an interrupted driver's trials continue on the rerun: they stay RUNNING
        number = self._numbers.get(trial_id)
        if number is None:
            return
        study = self.study
        if result and not error:
            # The last result of a trial reaches the searcher here only (not through on_trial_result).
            self._intermediate(number, result)
        tell(study, number, result, self.metric, error, set_attr=lambda k, v: self._set_attr(number, k, v))
        if self.on_change is not None:
            self.on_change()


def tell(study: Any, number: int, result: dict | None, metric: str, error: bool, set_attr: Callable[[str, Any], None]) -> str:
    """Record the end of Optuna trial ``number`` from Tune's last ``result``; returns the state told."""
    from optuna.trial import TrialState

    state, value = outcome(result, metric, error)
    for key in RECORDED:
        if result and result.get(key) is not None:
            set_attr("epochs" if key == "epoch" else key, result[key])
    if state == "COMPLETE":
        study.tell(number, value, skip_if_finished=True)
    else:
        # PRUNED: Optuna takes the last intermediate value (the validation metric of the last validated epoch).
        study.tell(number, state=TrialState[state], skip_if_finished=True)
    return state


def reconcile(study: Any, storage: Any, experiment: str, results: Iterable[Any], metric: str) -> int:
    """Tell the study how the trials it still has RUNNING ended, from Tune's ``results`` (a ResultGrid); returns
    how many were settled. Trials of other experiments are left alone."""
    import optuna
    from optuna.trial import TrialState

    by_id = {}
    for r in results:
        m = r.metrics or {}
        if m.get("trial_id"):
            by_id[m["trial_id"]] = r
    study_id = storage.get_study_id_from_name(study.study_name)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("experiment") != experiment:
            continue
        r = by_id.get(t.user_attrs.get("tune_trial_id"))
        if r is None:
            continue
        m, error = dict(r.metrics or {}), r.error is not None
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        epoch, value = m.get("epoch"), m.get(metric)
        if not error and epoch is not None and value is not None and int(epoch) not in t.intermediate_values:
            try:
                storage.set_trial_intermediate_value(tid, int(epoch), float(value))
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        tell(study, t.number, m, metric, error, set_attr=lambda k, v, tid=tid: storage.set_trial_user_attr(tid, k, v))
        n += 1
    return n
