"""Optuna's ask/tell behind Ray Tune's ``Searcher`` interface: the study records what really happened.

Ray's ``OptunaSearch`` records trials that ASHA stopped as COMPLETE, marks the trials of an interrupted driver
FAIL, and pickles its storage (URL and password) into ``tuner.pkl`` and the searcher state. This searcher uses
only Optuna's public API:

- ``suggest``: ``study.ask()``, the define-by-run space (:meth:`SearchSpec.suggest`), user attributes
  ``tune_trial_id`` / ``experiment`` (or a trial a killed driver asked for after its last snapshot, adopted);
- ``on_trial_result``: the trial's search score (:mod:`rayjobs.search.objectives`: its chosen variant's objective value, or
  the scalarised objectives of a Pareto search) as the intermediate value **at step = epoch** (only epochs that
  ran a validation pass carry it; a multi-objective study keeps them in the user attribute ``search_scores``,
  :func:`record_score`), plus the trial's ``data_uri`` / ``labels_uri`` once;
- ``on_trial_complete``: ``study.tell`` with the true state: COMPLETE (the trial trained all its epochs; its values
  are the chosen variant's objectives), PRUNED (stopped early by the scheduler; a one-objective study stores the
  last intermediate value as its value, so TPE ranks it correctly and optuna-dashboard shows it as pruned; a
  multi-objective study stores no values for it), FAIL (an error after the retry budget). User attributes: the
  raw validation metrics of the configured reading (``val_top1``, ...), the chosen variant (``chosen_variant``,
  ``chosen/val_*``), and from the trial's run folder the per-class validation recall of both
  (``val_per_class_recall``, ``val_per_class_recall_raw``), the training images per class (``class_counts``) and,
  for a finished trial, its test metrics under the chosen variant (``chosen/test_*``, reported, never compared).

While the driver is being interrupted (Ctrl-C / SIGTERM, :data:`INTERRUPTED`), nothing is told: the running trials
stay RUNNING in the study, Tune's last experiment snapshot has them as unfinished, and the rerun continues them
under the same Optuna trial numbers. :func:`reconcile` settles, from Tune's results, any trial the study still has
RUNNING once a search ends (e.g. a study snapshot older than Tune's).

Pickled state (``tuner.pkl``, ``searcher-state-*.pkl``) holds the Tune-id -> trial-number map, the sampler and the
*name* of the environment variable that holds the storage URL, never the URL.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ray.tune.search import Searcher

from rayjobs.data import storage as store
from rayjobs.search.objectives import ASHA_KEY, CHOICE_KEY, CHOSEN_PREFIX, SCORE_KEY, TrialScoring, scoring_for

__all__ = [
    "DB_TIMEOUT_S",
    "INTERRUPTED",
    "RECORDED",
    "DatabaseOutage",
    "StudySearcher",
    "fail_orphans",
    "outcome",
    "reconcile",
    "record_score",
    "run_attrs",
    "set_db_timeout",
    "tell",
]

log = logging.getLogger("rayjobs.search")

INTERRUPTED = threading.Event()  # set by the driver's signal handler: stop telling the study anything
# When this driver process began (Optuna stamps trials with naive local time). A RUNNING trial with no parameters
# and no tags that began before it, with a second to spare, was asked for by a driver killed between ``study.ask``
# and its first tag: no live driver leaves a trial in that state for a second.
_DRIVER_STARTED = datetime.datetime.now()
_ASK_WINDOW = datetime.timedelta(seconds=1)
# How long a searcher call waits for the study's database to answer again before the driver gives up (the default
# of rayjobs.search --db-timeout): a managed PostgreSQL's Multi-AZ failover takes one to two minutes, a restart or a
# minor-version upgrade several. Trials go on training meanwhile; their results wait in Tune's queue.
DB_TIMEOUT_S = 900.0
_db_timeout_s = DB_TIMEOUT_S


def set_db_timeout(seconds: float) -> None:
    """How long searcher calls in this process wait out an unreachable study database (``--db-timeout``)."""
    global _db_timeout_s
    if not seconds > 0:
        raise ValueError(f"--db-timeout {seconds:g} must be > 0 seconds")
    _db_timeout_s = float(seconds)


class DatabaseOutage(RuntimeError):
    """The study's database did not answer for the whole ``--db-timeout``."""


def _transient(exc: BaseException) -> bool:
    """A database error that a retry can cure: the connection was lost or refused (SQLAlchemy's OperationalError,
    or a DBAPI error that invalidated the connection), also behind Optuna's StorageInternalError."""
    import sqlalchemy.exc as sa_exc

    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain
        if seen is None:
            return False
        if isinstance(seen, sa_exc.OperationalError) or (isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _waits_for_database(method: Callable) -> Callable:
    """Retry a searcher call while the study's database is unreachable, for up to ``--db-timeout`` seconds
    (:func:`set_db_timeout`), saying so in one line when the wait starts and one when the database is back; then
    :class:`DatabaseOutage`. Each call may be repeated: attributes and values are set again to the same value, and
    ``suggest`` resumes the trial it asked."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        start, pause, waiting = time.monotonic(), 0.5, False
        while True:
            try:
                out = method(self, *args, **kwargs)
            except Exception as exc:
                if not _transient(exc):
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                if time.monotonic() + pause > start + _db_timeout_s:
                    raise DatabaseOutage(
                        f"the study's database did not answer for {_db_timeout_s:.0f} s (--db-timeout) ({first}); the "
                        "finished trials are in the study: run the same command once it is back to resume the search"
                    ) from exc
                if not waiting:
                    log.warning(
                        "the study's database did not answer (%s); waiting for it, up to %.0f s (--db-timeout)",
                        first,
                        _db_timeout_s,
                    )
                    waiting = True
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if waiting:
                log.warning("the study's database answered again after %.0f s; the search goes on", time.monotonic() - start)
            return out

    return call


# Per-trial facts copied into the study as user attributes (shown by optuna-dashboard, used by the report).
# test_* is recorded here only: the searcher and ASHA see `spec.metric` (val_*) alone.
RECORDED = (
    "epoch",
    "val_top1",
    "val_many",
    "val_medium",
    "val_few",
    "val_worst_class",
    "val_ece",
    "test_top1",
    "test_many",
    "test_medium",
    "test_few",
    "test_worst_class",
    "train_img_per_s",
    "run_dir",
    "data_uri",
    "labels_uri",
    "data_start_s",
    "node_decode_s",
    "time_total_s",
)
_ONCE = ("data_uri", "labels_uri", "run_dir")


def outcome(result: dict | None, metrics: Sequence[str], error: bool) -> tuple[str, list[float] | None]:
    """(Optuna state name, objective values) of a finished Tune trial from its last result."""
    if error:
        return "FAIL", None
    if not result:
        return "PRUNED", None
    # Not Tune's "done": it is also set on the last result of a trial the scheduler stopped.
    values = [result.get(CHOSEN_PREFIX + m) for m in metrics]
    epochs, total = result.get("epoch"), result.get("epochs_total")
    if epochs is not None and total is not None and int(epochs) >= int(total) and all(v is not None for v in values):
        return "COMPLETE", [float(v) for v in values]
    return "PRUNED", None


def _rounded(values: Sequence[float | None] | None) -> list[float | None] | None:
    return None if values is None else [None if v is None else round(float(v), 2) for v in values]


def run_attrs(run_dir: str, epoch: int, scoring: TrialScoring) -> dict[str, Any]:
    """What a trial's run folder adds to its record: the choice at its last validated epoch up to ``epoch`` (from
    ``history.jsonl``), the per-class validation recall of the chosen variant and of the raw reading, the class
    counts, and for a finished run the test metrics under the chosen variant (``metrics.json``). Empty when the
    folder cannot be read (the attributes of the Tune result stay)."""
    from rayjobs.train.reporting import flat_scalars

    try:
        text = store.read_bytes(store.join(run_dir, "history.jsonl")).decode()
        lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    except (OSError, ValueError, store.StorageError) as exc:
        log.info("no history in %s (%s): per-class attributes not recorded", run_dir, exc)
        return {}
    validated = [h for h in lines if "val_top1" in h and int(h.get("epoch", 0)) <= int(epoch)]
    if not validated:
        return {}
    line = validated[-1]
    fields = scoring.fields(flat_scalars(line))
    out: dict[str, Any] = {k: v for k, v in fields.items() if k not in (SCORE_KEY, ASHA_KEY)}
    variant = fields.get(CHOICE_KEY)
    per_class = line.get("val_per_class") or {}
    recall = per_class.get("recall") or {}
    if per_class.get("counts") is not None:
        out["class_counts"] = [int(c) for c in per_class["counts"]]
    if variant in recall:
        out["val_per_class_recall"] = _rounded(recall[variant])
    if scoring.default in recall:
        out["val_per_class_recall_raw"] = _rounded(recall[scoring.default])
    try:
        final = json.loads(store.read_bytes(store.join(run_dir, "metrics.json")))
    except (OSError, ValueError, store.StorageError):
        return out
    for k, v in scoring.variants(flat_scalars(final), "test").get(variant, {}).items():
        out[CHOSEN_PREFIX + k] = v
    return out


class StudySearcher(Searcher):
    """A Tune searcher over an Optuna study (see the module docstring)."""

    _asking: int | None = None  # the trial ``suggest`` asked for and has not handed to Tune yet

    def __init__(self, spec: Any, *, storage_env: str, experiment: str, sampler: Any):
        super().__init__(metric=SCORE_KEY, mode=spec.score_mode)
        self._spec = spec
        self._storage_env = storage_env
        self._experiment = experiment
        self._sampler = sampler
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._asking = None
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
        self._asking = None
        self._sampler = state["sampler"]
        self._live = {}

    # ---- the study ---------------------------------------------------------------------------------
    @property
    def study(self):
        if "study" not in self._live:
            from rayjobs.search.study import SearchError, open_storage, open_study

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

    @_waits_for_database
    def suggest(self, trial_id: str) -> dict | None:
        import optuna

        if INTERRUPTED.is_set():
            return None
        study = self.study
        orphan = self._orphan() if self._asking is None else None
        if orphan is not None and orphan.params:
            self._numbers[trial_id] = orphan.number
            self._set_attr(orphan.number, "tune_trial_id", trial_id)
            return dict(orphan.params)
        if self._asking is None:
            # an orphan asked for but never given parameters gets them now (define-by-run, from the same sampler)
            self._asking = orphan.number if orphan is not None else study.ask().number
        # Re-suggesting a parameter the trial already has returns its value: a repeated call (the database went
        # away half-way) completes the same trial.
        trial = optuna.trial.Trial(study, self._trial_id(self._asking))
        self._spec.suggest(trial)
        trial.set_user_attr("tune_trial_id", trial_id)
        trial.set_user_attr("experiment", self._experiment)
        self._numbers[trial_id] = trial.number
        self._asking = None
        return dict(trial.params)

    def _orphan(self) -> Any:
        """A trial a killed driver asked for after its last experiment snapshot: RUNNING in the study, unknown to
        the restored Tune state; either tagged with this experiment, or (killed between ``study.ask`` and the
        tagging) untagged, without parameters, begun before this driver. It is given to the next Tune trial
        instead of a new ask, so the crash leaves no FAIL behind and the trial numbers stay those the study handed
        out."""
        from optuna.trial import TrialState

        known = set(self._numbers.values())
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in known:
                continue
            if t.user_attrs.get("experiment") == self._experiment and t.params:
                return t
            asked = t.datetime_start is not None and t.datetime_start < _DRIVER_STARTED - _ASK_WINDOW
            if asked and not t.params and not t.user_attrs:
                return t
        return None

    @_waits_for_database
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
        """The search score of ``result`` at step = epoch: the trial's intermediate value, or in a multi-objective
        study its ``search_scores`` user attribute (:func:`record_score`)."""
        import optuna

        value, epoch = result.get(SCORE_KEY), result.get("epoch")
        if value is None or epoch is None:
            return
        try:
            record_score(self._live["storage"], self._trial_id(number), self._spec.multi, int(epoch), float(value))
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("Optuna trial #%d already finished in the study; keeping its record", number)

    @_waits_for_database
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
        params = self._live["storage"].get_trial(self._trial_id(number)).params
        tell(study, number, result, self._spec, error, lambda k, v: self._set_attr(number, k, v), params)
        if self.on_change is not None:
            self.on_change()


def tell(
    study: Any,
    number: int,
    result: dict | None,
    spec: Any,
    error: bool,
    set_attr: Callable[[str, Any], None],
    params: dict[str, Any],
) -> str:
    """Record the end of Optuna trial ``number`` (sampled ``params``) of search ``spec`` from Tune's last ``result``;
    returns the state told."""
    from optuna.trial import TrialState

    state, values = outcome(result, spec.metrics, error)
    result = result or {}
    for key in RECORDED:
        if result.get(key) is not None:
            set_attr("epochs" if key == "epoch" else key, result[key])
    for key, v in result.items():
        if key == CHOICE_KEY or key.startswith(CHOSEN_PREFIX):
            set_attr(key, v)
    if result.get("run_dir") and result.get("epoch") is not None and not error:
        try:
            scoring = scoring_for(spec, spec.trial_config(params))
        except ValueError as exc:  # parameters of another search space: keep what the result says
            log.info("trial #%d: %s", number, exc)
        else:
            for key, v in run_attrs(result["run_dir"], int(result["epoch"]), scoring).items():
                set_attr(key, v)
    if state == "COMPLETE":
        study.tell(number, values, skip_if_finished=True)
    else:
        # PRUNED: a one-objective study takes the last intermediate value (the score of the last validated epoch).
        study.tell(number, state=TrialState[state], skip_if_finished=True)
    return state


def record_score(storage: Any, trial_id: int, multi: bool, epoch: int, score: float) -> None:
    """Record a trial's search score at ``epoch``. One objective: its intermediate value (Optuna's learning curve,
    and the value of a PRUNED trial). Several: the user attribute ``search_scores`` ({epoch: score}), because Optuna
    has no intermediate values for multi-objective trials (``Trial.report`` refuses them; its TPE sampler reads a
    pruned trial's intermediate value as a one-objective score and fails on such a study)."""
    if not multi:
        storage.set_trial_intermediate_value(trial_id, epoch, score)
        return
    scores = dict(storage.get_trial(trial_id).user_attrs.get("search_scores") or {})
    scores[str(epoch)] = score
    storage.set_trial_user_attr(trial_id, "search_scores", dict(sorted(scores.items(), key=lambda kv: int(kv[0]))))


def reconcile(study: Any, storage: Any, experiment: str, results: Iterable[Any], spec: Any) -> int:
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
        epoch, value = m.get("epoch"), m.get(SCORE_KEY)
        seen = t.intermediate_values if not spec.multi else {int(k) for k in t.user_attrs.get("search_scores") or {}}
        if not error and epoch is not None and value is not None and int(epoch) not in seen:
            try:
                record_score(storage, tid, spec.multi, int(epoch), float(value))
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        tell(study, t.number, m, spec, error, lambda k, v, tid=tid: storage.set_trial_user_attr(tid, k, v), dict(t.params))
        n += 1
    return n


def fail_orphans(study: Any, experiment: str, started: datetime.datetime) -> int:
    """Mark FAIL the trials a killed driver left RUNNING that no Tune trial will ever continue; returns how many.

    Called once ``Tuner.fit`` returned normally and the study was reconciled with Tune's results: a RUNNING trial
    is then an orphan when it is tagged with this experiment, or has no tag and began before this driver (the
    driver was killed between Optuna's ``ask`` and the tagging). Trials of other experiments are left alone."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ours = t.user_attrs.get("experiment") == experiment
        untagged = "experiment" not in t.user_attrs and t.datetime_start is not None and t.datetime_start < started
        if ours or untagged:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n
