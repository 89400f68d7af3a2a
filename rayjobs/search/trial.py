"""One trial of a search: a Ray Tune function trainable around :func:`twohead.loop.fit` (the trial side).

- **Data.** Without ``--data`` the trial builds its dataset as a local run does (``TWOHEAD_DATA``). With
  ``--data`` it reads the prepared shards through the data plane :mod:`rayjobs.data.plane`, exactly as a
  ``rayjobs.train`` worker does: the node's shared in-memory copy (small images) or the Ray Data stream (large
  images), cluster ids from the labels file of its (clustering, u, rounding, seed, embedding), computed once per
  key by the search's :class:`~rayjobs.data.plane.DataService`.
- **Files.** The loop writes its run folder (``config.yaml``, ``history.jsonl``, ``metrics.json``, plots) locally
  and the reporter publishes it to ``<experiment>/trial_<id>/run/`` after every epoch (directly there when the
  experiment is a local folder), so single- and multi-worker trials, finished or stopped by ASHA, all leave it in
  the search's storage.
- **Restarts.** Checkpoints go to Tune (``state.pt``); a trial that is retried (``--max-failures``, spot nodes) or
  continued by a resumed search restores the latest one. A trial whose run folder already holds its finished run
  (the driver died before recording it) reports that run again instead of retraining.
- **Multi-GPU trials** (``workers_per_trial > 1``) run a ``TorchTrainer`` named after the trial id (so a restarted
  trial resumes it) whose workers are ``rayjobs.train``'s, reporting through ``TuneReportCallback``.
- **Scores.** Every result a trial reports carries its scoring (:mod:`rayjobs.search.objectives`): the reading / post-hoc
  variant chosen on this epoch's validation, its objective values, the search score, and the ASHA metric from the
  trial's first comparable epoch on (after its deferred re-weighting epoch for DRW methods). The fields are added
  in the trial process, by the reporter of a single-worker trial or the ``TuneReportCallback`` of a multi-worker
  one, so the scheduler and the searcher read the same numbers as ``progress.csv``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from rayjobs.data import storage
from rayjobs.data.stream import PREFETCH_BATCHES
from rayjobs.search.objectives import TrialScoring, scoring_for
from rayjobs.train.reporting import TrainReporter, TuneReporter
from twohead.config import TrainConfig, apply_overrides

__all__ = ["RUN_SUBDIR", "TrialJob", "finished_run", "run_seed", "run_trial", "trial_dirname"]

RUN_SUBDIR = "run"  # the loop's files inside a trial folder


@dataclass
class TrialJob:
    """What every trial of one search shares (bound once with ``tune.with_parameters``)."""

    spec: Any  # SearchSpec
    experiment: str  # the Tune experiment URL (trial folders live under it)
    plan: Any = None  # DataPlan with --data
    service: Any = None  # the search's DataService actor with --data
    fault: dict | None = None  # fault drill: {"at_epoch": k, "mode": "kill" | "raise"}
    params: dict = field(default_factory=dict)  # --retrain-best: the best trial's parameters


class ScoredTuneReporter(TuneReporter):
    """A single-worker trial's reporter: each result also carries the trial's scoring fields."""

    def __init__(self, *args: Any, scoring: TrialScoring, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.scoring = scoring

    def _report(self, metrics: dict, checkpoint: Any = None) -> None:
        super()._report({**metrics, **self.scoring.fields(metrics)}, checkpoint)


def _scored_callback(scoring: TrialScoring) -> Any:
    """``TuneReportCallback`` of a multi-worker trial that adds the scoring fields to rank 0's metrics."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ScoredTuneReportCallback(TuneReportCallback):
        def __init__(self, scoring: TrialScoring):
            super().__init__()
            self.scoring = scoring

        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if metrics:
                metrics = [{**metrics[0], **self.scoring.fields(metrics[0])}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ScoredTuneReportCallback(scoring)


def trial_dirname(trial: Any) -> str:
    """Short, parameter-free trial folder names (the default embeds every parameter and a timestamp)."""
    return f"trial_{trial.trial_id}"


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """Tune function trainable of the search: ``config`` holds the sampled parameters (Optuna names)."""
    _fit_in_trial(job.spec.trial_config(config), job)


def run_seed(config: dict[str, Any], job: TrialJob) -> None:
    """Tune function trainable of ``--retrain-best``: the best parameters, ``config["seed"]`` as optim.seed."""
    _fit_in_trial(apply_overrides(job.spec.trial_config(job.params), {"optim.seed": int(config["seed"])}), job)


def finished_run(run_url: str, cfg: TrainConfig) -> dict | None:
    """The last epoch's metrics of a run of ``cfg`` that already finished in ``run_url``, else None.

    A driver killed right after a trial finished may have snapshotted the experiment before Tune saw the trial
    terminate; the restored trial then restarts from an older checkpoint. Its run folder already holds the
    finished run, so it is reported again instead of being retrained.
    """
    import yaml

    names = ("config.yaml", "history.jsonl", "metrics.json")
    try:
        if not all(storage.exists(storage.join(run_url, n)) for n in names):
            return None
        if yaml.safe_load(storage.read_bytes(storage.join(run_url, names[0]))) != cfg.to_dict():
            return None
        lines = [ln for ln in storage.read_bytes(storage.join(run_url, names[1])).decode().splitlines() if ln.strip()]
        last = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return last if int(last.get("epoch", 0)) >= cfg.optim.epochs else None


def _local_run_dir(experiment: str, trial_id: str) -> Path:
    """This node's working copy of a trial's run folder when the experiment is in object storage."""
    tag = hashlib.sha256(experiment.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "twohead-trials" / tag / trial_id / RUN_SUBDIR


def _fit_in_trial(cfg: TrainConfig, job: TrialJob) -> None:
    from twohead.loop import fit

    cfg = apply_overrides(cfg, {"run.progress": False})  # no progress bars inside actors: they interleave
    trial_id = tune.get_context().get_trial_id()
    trial_url = storage.join(job.experiment, f"trial_{trial_id}")
    run_url = storage.join(trial_url, RUN_SUBDIR)
    remote = storage.is_object_store(run_url)
    run_dir = _local_run_dir(job.experiment, trial_id) if remote else Path(storage.resolve(run_url)[1])
    extra: dict[str, Any] = {"epochs_total": cfg.optim.epochs}
    fault = None
    if job.fault:
        k = int(job.fault["at_epoch"])
        fault = {**job.fault, "marker": storage.join(trial_url, f"_fault-injected-epoch{k}")}

    labels_url = None
    if job.plan is not None:
        from rayjobs.data.plane import request_labels

        labels_url = request_labels(job.service, cfg)
        extra.update(data_uri=job.plan.url, **({"labels_uri": labels_url} if labels_url else {}))

    scoring = scoring_for(job.spec, cfg)
    done = finished_run(run_url, cfg)
    if done is not None:  # nothing to upload: it is there
        ScoredTuneReporter(None, upload_url=run_url, extra=extra, scoring=scoring).report(done, None)
        return
    res = job.spec.resources
    if res.workers_per_trial == 1:
        source = None
        t0 = time.perf_counter()
        if job.plan is not None:
            from rayjobs.data.plane import worker_inputs

            data, source, timing = worker_inputs(job.plan, job.service, cfg, labels_url=labels_url)
            extra.update(timing)
        else:
            from twohead.data import build_data

            data = build_data(cfg.data)  # what the loop would do itself; timed for the data start-up figure
            extra["data_start_s"] = time.perf_counter() - t0
        reporter = ScoredTuneReporter(run_dir, upload_url=run_url, extra=extra, fault=fault, scoring=scoring)
        fit(cfg, out_dir=run_dir, data=data, train_source=source, reporter=reporter)
        return
    _torch_trainer(cfg, job, run_url, labels_url, extra, fault, scoring).fit()


def _torch_trainer(
    cfg: TrainConfig,
    job: TrialJob,
    run_url: str,
    labels_url: str | None,
    extra: dict,
    fault: dict | None,
    scoring: TrialScoring,
):
    """The DDP TorchTrainer of a multi-GPU trial (named after the trial, in the trial's storage folder)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    res = job.spec.resources
    ctx = tune.get_context()
    trial_storage = ctx.get_storage()
    per_worker = {"CPU": res.cpus_per_trial, **({"GPU": res.gpus_per_trial} if res.gpus_per_trial else {})}
    datasets = None
    if job.plan is not None:
        from rayjobs.train.job import train_loop_per_worker

        fn = train_loop_per_worker
        loop_config: dict[str, Any] = {
            "cfg": cfg.to_dict(),
            "plan": job.plan,
            "service": job.service,
            "labels_url": labels_url,
            "results_url": run_url,
            "counter": None,
            "prefetch_batches": PREFETCH_BATCHES,
            "fault": fault,
            "extra": extra,
        }
        if not job.plan.in_memory:
            from rayjobs.data.labels import load_lookup
            from rayjobs.data.stream import train_dataset

            lookup = load_lookup(labels_url)[0] if labels_url else None
            manifest = job.plan.manifest_obj
            datasets = {"train": train_dataset(manifest, lookup=lookup, skip_invalid=job.plan.skip_invalid, seed=cfg.optim.seed)}
    else:
        fn = _train_worker
        loop_config = {"cfg": cfg.to_dict(), "run_url": run_url, "extra": extra, "fault": fault}
    return TorchTrainer(
        fn,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=res.gpus_per_trial > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train_{ctx.get_trial_id()}",
            storage_path=trial_storage.trial_fs_path,
            storage_filesystem=trial_storage.storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_scored_callback(scoring)],
        ),
        datasets=datasets,
    )


def _train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker of a multi-GPU trial without ``--data``: the same loop, DDP set up by TorchTrainer."""
    import ray.train

    from twohead.loop import fit

    cfg = TrainConfig.from_dict(config["cfg"])
    run_url = config["run_url"]
    remote = storage.is_object_store(run_url)
    rank = ray.train.get_context().get_world_rank()
    run_dir = Path(tempfile.mkdtemp(prefix="twohead-trial-")) if remote or rank != 0 else Path(storage.resolve(run_url)[1])
    reporter = TrainReporter(run_dir, upload_url=run_url, extra=config.get("extra"), fault=config.get("fault"))
    fit(cfg, out_dir=run_dir, reporter=reporter)
