"""A search in MLflow and TensorBoard (``rayjobs.search --mlflow [URI] --tensorboard``, the ``twohead[tracking]`` extra).

MLflow: one experiment named after the study; one parent run for the search (tag ``twohead.search``: its Tune
experiment URL; params: the search space and the base config) and, nested under it (``mlflow.parentRunId``), one
run per trial logged from the driver by Ray's :class:`~ray.air.integrations.mlflow.MLflowLoggerCallback`: the
trial's sampled parameters, every reported epoch at step = training iteration, and the end status. On top of it,
:class:`StudyMLflowCallback`

- continues a trial's MLflow run when a resumed search continues the trial (found by the tags ``trial_name`` and
  ``mlflow.parentRunId``), so a resume never duplicates runs, and continues the parent run likewise;
- tags each run with its Optuna trial number and state (``optuna.trial_number``, ``optuna.state``: COMPLETE /
  PRUNED / FAIL / RUNNING) and logs the values the study recorded (``optuna/value``, or one per objective of a
  Pareto search), read from the study itself, so MLflow shows the study's numbers;
- sends each result as one ``log_batch`` request (the stock callback sends one request per metric) and leaves out
  Tune's bookkeeping (``config/...``, timestamps).

:func:`settle` re-reads the study once the search ends (every trial's final state and values; trials an
interrupted driver left running are KILLED in MLflow until the rerun continues them) and ends the parent run.

TensorBoard: Ray Tune's ``TBXLoggerCallback`` writes event files into every trial folder of the experiment
(``tensorboard --logdir <experiment>`` compares the trials).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from twohead.tracking import experiment_id, finite_numbers, flat_scalars, log_batch, store_client

__all__ = ["SEARCH_TAG", "StudyMLflowCallback", "open_parent", "search_callbacks", "settle"]

log = logging.getLogger("rayjobs.search")

SEARCH_TAG = "twohead.search"  # the parent run's key: the search's Tune experiment URL
# Tune's bookkeeping in every result: not metrics of the model.
_SKIP_PREFIXES = ("config/",)
_SKIP_KEYS = {"timestamp", "time_since_restore", "time_total_s", "iterations_since_restore", "pid", "done"}


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"


def open_parent(uri: str, study_name: str, experiment_url: str, params: dict[str, Any]) -> str:
    """The search's parent run (created once, continued by a resumed or extended search): its run id."""
    client = store_client(uri)
    exp_id = experiment_id(client, study_name, uri)
    found = client.search_runs([exp_id], filter_string=f"tags.`{SEARCH_TAG}` = {_quoted(experiment_url)}", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(
        exp_id, run_name=f"{study_name} (search)", tags={SEARCH_TAG: experiment_url, "twohead.study": study_name}
    )
    log_batch(client, run.info.run_id, params=params)
    return run.info.run_id


class StudyMLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow logger callback, with the study's trial numbers, states and values (module docstring)."""

    def __init__(self, tracking_uri: str, *, study_name: str, parent_run_id: str, storage_env: str, objectives: list[str]):
        super().__init__(
            tracking_uri,
            experiment_name=study_name,
            tags={"mlflow.parentRunId": parent_run_id, "twohead.study": study_name},
            save_artifact=False,  # trial folders may be in object storage; metrics and tags are what compares trials
        )
        self._parent = parent_run_id
        self._storage_env = storage_env  # the NAME of the variable holding the study URL, never the URL
        self._study_name = study_name
        self._objectives = list(objectives)
        self._live: dict[str, Any] = {}

    def __getstate__(self) -> dict:  # the tuner's snapshot: no client, no study
        state = self.__dict__.copy()
        state["_live"] = {}
        return state

    def _client(self) -> Any:
        if "client" not in self._live:
            self._live["client"] = store_client(self.tracking_uri)
        return self._live["client"]

    # ---- the study (read only) -----------------------------------------------------------------------
    def _optuna_trial(self, trial_id: str) -> Any:
        from rayjobs.search.study import open_storage

        url = os.environ.get(self._storage_env)
        if not url:
            return None
        if "storage" not in self._live:
            self._live["storage"] = open_storage(url)
        storage = self._live["storage"]
        study_id = storage.get_study_id_from_name(self._study_name)
        return next(
            (t for t in storage.get_all_trials(study_id, deepcopy=False) if t.user_attrs.get("tune_trial_id") == trial_id), None
        )

    def _tag(self, trial: Any) -> None:
        """Optuna number, state and recorded values of ``trial``'s run (nothing when the study has no such trial)."""
        try:
            t = self._optuna_trial(trial.trial_id)
        except Exception as e:  # noqa: BLE001 - a study database hiccup must not stop the search; settle() redoes it
            log.warning("MLflow: could not read the study for trial %s (%s)", trial.trial_id, e)
            return
        if t is not None:
            tag_run(self._client(), self._trial_runs[trial], t, self._objectives)

    # ---- LoggerCallback ------------------------------------------------------------------------------
    def on_trial_start(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().on_trial_start, "a trial's start", *args, **kwargs)

    def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().on_trial_result, "a result", *args, **kwargs)

    def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().on_trial_complete, "a trial's end", *args, **kwargs)

    def on_trial_error(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().on_trial_error, "a trial's error", *args, **kwargs)

    def _guarded(self, fn: Any, what: str, *args: Any, **kwargs: Any) -> None:
        """A tracking server that stops answering costs a warning, never the search (the study has every number;
        :func:`settle` re-tags the runs at the end)."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - HTTP errors, a locked store: the trials go on
            log.warning("MLflow: could not log %s (%s: %s); the search goes on", what, type(e).__name__, e)

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:  # a resumed search continues the trial's run
            client = self._client()
            found = client.search_runs(
                [experiment_id(client, self._study_name, self.tracking_uri)],
                filter_string=f"tags.trial_name = {_quoted(str(trial))} and tags.`mlflow.parentRunId` = {_quoted(self._parent)}",
                max_results=1,
            )
            if found:
                self._trial_runs[trial] = found[0].info.run_id
                client.update_run(found[0].info.run_id, status="RUNNING")
        super().log_trial_start(trial)
        self._client().set_tag(self._trial_runs[trial], "ray.trial_id", trial.trial_id)
        self._tag(trial)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        step = int(result.get("training_iteration") or iteration)
        flat = {k: v for k, v in flat_scalars(result).items() if not k.startswith(_SKIP_PREFIXES) and k not in _SKIP_KEYS}
        log_batch(self._client(), self._trial_runs[trial], metrics=finite_numbers(flat), step=step)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        super().log_trial_end(trial, failed)  # FINISHED / FAILED
        self._tag(trial)  # Tune told the searcher (the study) first: the state is final here


def tag_run(client: Any, run_id: str, t: Any, objectives: list[str]) -> None:
    """Tags ``optuna.trial_number`` / ``optuna.state`` and the recorded values (metrics ``optuna/...``) of one run."""
    values = {}
    if t.values is not None:
        names = (
            ["value"]
            if len(t.values) == 1
            else [f"values/{n}" for n in objectives] or [f"values/{i}" for i in range(len(t.values))]
        )
        values = finite_numbers({f"optuna/{n}": v for n, v in zip(names, t.values)})
    log_batch(client, run_id, metrics=values, tags={"optuna.trial_number": t.number, "optuna.state": t.state.name})


def settle(uri: str, study: Any, parent_run_id: str, objectives: list[str], interrupted: bool) -> int:
    """Once the search ends: every trial run gets the study's final state and values; the parent run ends (KILLED
    when interrupted). Returns how many trial runs were tagged."""
    client = store_client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = {_quoted(parent_run_id)}", max_results=50000
    )
    by_tune_id = {r.data.tags.get("ray.trial_id"): r for r in runs}
    tagged = 0
    for t in study.get_trials(deepcopy=False):
        run = by_tune_id.get(t.user_attrs.get("tune_trial_id"))
        if run is None:
            continue
        tag_run(client, run.info.run_id, t, objectives)
        if t.state.name == "RUNNING":  # not finished in the study, whatever Tune told the callback at shutdown
            client.set_terminated(run.info.run_id, "KILLED")  # the rerun continues it (and sets it RUNNING again)
        tagged += 1
    client.set_terminated(parent_run_id, "KILLED" if interrupted else "FINISHED")
    return tagged


def search_callbacks(
    *,
    mlflow_uri: str | None,
    tensorboard: bool,
    study_name: str,
    parent_run_id: str | None,
    storage_env: str,
    objectives: list[str],
) -> list[Any]:
    """The Tune callbacks of a search's tracking flags (empty without them)."""
    callbacks: list[Any] = []
    if mlflow_uri is not None and parent_run_id is not None:
        callbacks.append(
            StudyMLflowCallback(
                mlflow_uri, study_name=study_name, parent_run_id=parent_run_id, storage_env=storage_env, objectives=objectives
            )
        )
    if tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    return callbacks
