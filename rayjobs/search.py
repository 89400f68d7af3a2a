"""Hyper-parameter search of twohead on Ray Tune: Optuna TPE + ASHA on the validation metric, study in an RDB.

``python -m rayjobs.search --preset smoke --out runs/smoke-search`` (the README's main job) runs a Ray Tune
``Tuner`` whose trials each call the one training loop, :func:`twohead.loop.fit`, with a :class:`TuneReporter`
that forwards the per-epoch metrics to Tune and stores checkpoints through it. ``OptunaSearch`` (TPE, seeded)
proposes configurations from the search space (:mod:`rayjobs.search_space`, ``search_spaces/*.yaml``) and
``ASHAScheduler`` stops weak trials early, both on the **validation** metric; test metrics are recorded with
each trial and written into the report, never used for the choice.

- The study lives in an RDB: a SQLite file in the results folder by default, a PostgreSQL URL
  (``--storage postgresql+psycopg2://...``) on clusters. ``optuna-dashboard <URL>`` shows it live.
- A search killed half-way resumes with the same command: the Tune experiment under ``--out`` (or
  ``--storage-path``) is restored with ``Tuner.restore`` and the same study; finished trials are kept and not
  rerun, unfinished ones continue from their last checkpoint.
- Trials request fractional GPUs (``--gpus-per-trial 0.16``: six trials share a card); with
  ``workers_per_trial > 1`` each trial is a ``TorchTrainer`` (DDP) whose metrics reach Tune through
  ``TuneReportCallback``.
- Without ``--address`` / ``RAY_ADDRESS`` it starts a small local Ray with the dashboard on (Tune + ASHA needs
  the State API to clean up stopped trials, notes/ray-2.60.md); with them it joins the cluster, which is what
  ``ray job submit`` gives.
- ``--retrain-best DIR --seeds N`` retrains the best configuration of a finished search on N seeds and
  reports mean +- std.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from rayjobs.report import (
    Report,
    SearchError,
    dashboard_command,
    default_storage_url,
    display_url,
    load_search_folder,
    open_storage,
    open_study,
    retrain_command,
    save_search_folder,
    select_best,
    write_report,
    write_retrain_report,
)
from rayjobs.reporting import STATE_FILE, TrainReporter, TuneReporter  # noqa: F401 (re-exported)
from rayjobs.search_space import SearchSpaceError, SearchSpec, load_search_space
from twohead.config import TrainConfig, apply_overrides

__all__ = [
    "TuneReporter",
    "TrainReporter",
    "RecordingOptunaSearch",
    "SearchResult",
    "run_search",
    "retrain_best",
    "connect_ray",
    "main",
]

log = logging.getLogger("rayjobs.search")

RUN_SUBDIR = "run"  # the loop's out_dir inside a trial folder (config.yaml, history.jsonl, metrics.json, PNGs)
# Per-trial facts copied into the Optuna study as user attributes (shown by optuna-dashboard, used by the
# report). test_* is recorded here only: the searcher and ASHA see `spec.metric` (val_*) alone.
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
    "time_total_s",
)


# -------------------------------------------------------------------------------------------------- trials
def _trial_run_dir() -> Path:
    """Where the loop of this trial writes: the trial's folder in storage when that is a local (or shared)
    filesystem, so a restored trial finds its files again; otherwise the working directory, which Tune uploads
    with ``SyncConfig(sync_artifacts=True)``."""
    import pyarrow.fs

    storage = tune.get_context().get_storage()
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return Path(storage.trial_fs_path) / RUN_SUBDIR
    return Path.cwd() / RUN_SUBDIR


def _finished_run(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """The last epoch's metrics of a run of ``cfg`` that already finished in ``run_dir``, else None.

    A driver killed right after a trial finished may have snapshotted the experiment before Tune saw the trial
    terminate (snapshots are at least 10 s apart); the restored trial then restarts from an older checkpoint.
    Its run folder already holds the finished run, so it is reported again instead of being retrained.
    """
    import json

    import yaml

    files = [run_dir / n for n in ("config.yaml", "history.jsonl", "metrics.json")]
    if not all(f.is_file() for f in files):
        return None
    try:
        if yaml.safe_load(files[0].read_text()) != cfg.to_dict():
            return None
        lines = [ln for ln in files[1].read_text().splitlines() if ln.strip()]
        last = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return last if int(last.get("epoch", 0)) >= cfg.optim.epochs else None


def _fit_in_trial(cfg: TrainConfig, spec: SearchSpec) -> None:
    from twohead.loop import fit

    # No progress bars inside Ray actors: they interleave in the driver's log.
    cfg = apply_overrides(cfg, {"run.progress": False})
    run_dir = _trial_run_dir()
    done = _finished_run(run_dir, cfg)
    if done is not None:
        TuneReporter(run_dir).report(done, None)
        return
    res = spec.resources
    if res.workers_per_trial == 1:
        fit(cfg, out_dir=run_dir, reporter=TuneReporter(run_dir))
        return

    # Multi-GPU trial: one TorchTrainer (DDP) per trial; its reports reach Tune through TuneReportCallback.
    # Named after the trial id (no timestamp) in the trial's storage folder, so a restored trial resumes it.
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    ctx = tune.get_context()
    storage = ctx.get_storage()
    per_worker = {"CPU": res.cpus_per_trial, **({"GPU": res.gpus_per_trial} if res.gpus_per_trial else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=res.gpus_per_trial > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train_{ctx.get_trial_id()}",
            storage_path=storage.trial_fs_path,
            storage_filesystem=storage.storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _train_worker(config: Mapping[str, Any]) -> None:
    """Ray Train worker of a multi-GPU trial: the same loop, DDP set up by TorchTrainer."""
    from twohead.loop import fit

    cfg = TrainConfig.from_dict(config["cfg"])
    fit(cfg, out_dir=config["run_dir"], reporter=TrainReporter(config["run_dir"]))


def run_trial(config: dict[str, Any], spec: SearchSpec) -> None:
    """Tune function trainable of the search: ``config`` holds the sampled parameters (Optuna names)."""
    _fit_in_trial(spec.trial_config(config), spec)


def run_seed(config: dict[str, Any], spec: SearchSpec, params: dict[str, Any]) -> None:
    """Tune function trainable of ``--retrain-best``: the best parameters, ``config["seed"]`` as optim.seed."""
    cfg = apply_overrides(spec.trial_config(params), {"optim.seed": int(config["seed"])})
    _fit_in_trial(cfg, spec)


def trial_dirname(trial: Any) -> str:
    """Short, parameter-free trial folder names (the default embeds every parameter and a timestamp)."""
    return f"trial_{trial.trial_id}"


# ------------------------------------------------------------------------------------------------ searcher
class RecordingOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that also records, per Optuna trial, the Tune trial id, the epochs trained, the last
    validation and the final test metrics and the run folder as user attributes.

    They make the study self-contained (the dashboard and the report read them) and let a resumed driver tell
    its own orphans (trials left RUNNING by a killed driver) from another driver's live trials. The value Optuna
    optimises is untouched: ``spec.metric``, reported by OptunaSearch itself.
    """

    def __init__(self, *args: Any, experiment: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._experiment = experiment

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        ot = self._ot_trials.get(trial_id)
        if params is not None and ot is not None:
            ot.set_user_attr("tune_trial_id", trial_id)
            ot.set_user_attr("experiment", self._experiment)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # A trial an earlier (killed) driver already finished, restored from an older experiment snapshot:
            # its Optuna record is final and stays as it is.
            log.info("trial %s already finished in the study; keeping its recorded value", trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot = self._ot_trials.get(trial_id)
        if ot is not None and result and trial_id not in self._completed_trials:
            for key in RECORDED:
                if result.get(key) is not None:
                    try:
                        ot.set_user_attr("epochs" if key == "epoch" else key, result[key])
                    except Exception as exc:  # noqa: BLE001 - e.g. already finished by an earlier driver
                        log.debug("could not record %s on trial %s: %s", key, trial_id, exc)
        super().on_trial_complete(trial_id, result=result, error=error)


# ---------------------------------------------------------------------------------------------------- Ray
def connect_ray(address: str | None = None, *, num_cpus: int | None = None, object_store_mb: int = 256) -> bool:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start a small local Ray with the dashboard.

    Returns True when this call started Ray (the caller shuts it down). An already connected driver (tests,
    notebooks) is used as is.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    # "local" forces a fresh instance even when a `ray start` cluster is running here: joining one is explicit
    # (--address auto). Dashboard on: Tune + ASHA needs the State API to release stopped trials' resources.
    ctx = ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        object_store_memory=object_store_mb * 2**20,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
    )
    if getattr(ctx, "dashboard_url", None):
        print(f"Ray dashboard (while this search runs): http://{ctx.dashboard_url}", flush=True)
    return True


def _check_resources(spec: SearchSpec, strict: bool) -> None:
    """A trial asking for more than the cluster has would wait forever: say so before the search starts."""
    have = ray.cluster_resources()
    r = spec.resources
    need = {"CPU": r.cpus_per_trial * r.workers_per_trial, "GPU": r.gpus_per_trial * r.workers_per_trial}
    if r.workers_per_trial > 1:
        need["CPU"] += 1  # the trial's own driver process (Tune default)
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if not short:
        return
    msg = "; ".join(f"a trial needs {need_v:g} {k}, the Ray cluster has {have_v:g}" for k, (need_v, have_v) in short.items())
    hint = " (use --gpus-per-trial 0 on a CPU machine)" if "GPU" in short else " (lower --cpus-per-trial)"
    if strict:
        raise SearchError(msg + hint)
    log.warning("%s%s; waiting for the autoscaler to add nodes", msg, hint)


def _trainable(fn: Callable, spec: SearchSpec, **bound: Any) -> Any:
    r = spec.resources
    if r.workers_per_trial == 1:
        resources: dict[str, float] = {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial}
    else:
        resources = {"cpu": 1}  # the trial only drives a TorchTrainer; its workers ask for the real resources
    return tune.with_resources(tune.with_parameters(fn, spec=spec, **bound), resources)


def _run_config(name: str, storage_path: str, max_failures: int, verbose: int) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        # Two, not one: with num_to_keep=1 every checkpoint forces an experiment snapshot (Tune warns about it).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=max_failures),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=verbose,
    )


def _restore_or_new(path: str, trainable: Any, restart_errored: bool, new: Callable[[], tune.Tuner]) -> tuple[tune.Tuner, bool]:
    if tune.Tuner.can_restore(path):
        print(f"Resuming the search in {path} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=not restart_errored, restart_errored=restart_errored
        )
        return tuner, True
    return new(), False


# ----------------------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    spec: SearchSpec
    out: Path
    storage_url: str
    experiment: str
    resumed: bool
    report: Report
    wall_s: float
    errors: int

    @property
    def dashboard(self) -> str:
        return dashboard_command(display_url(self.storage_url))


def _fail_orphans(study: Any, experiment: str, started: datetime.datetime) -> int:
    """Mark FAIL the trials a killed driver left RUNNING; returns how many.

    Once ``Tuner.fit`` returned, no trial of this experiment runs any more. A RUNNING trial is an orphan when it
    is tagged with this experiment, or when it has no tag at all and began before this driver did (the driver
    was killed between Optuna's ``ask`` and the tagging). Trials of other experiments are left alone.
    """
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ours = t.user_attrs.get("experiment") == experiment
        untagged = "experiment" not in t.user_attrs and t.datetime_start is not None and t.datetime_start < started
        if ours or untagged:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


def run_search(
    spec: SearchSpec,
    out: str | Path,
    *,
    storage_url: str | None = None,
    storage_path: str | None = None,
    address: str | None = None,
    restart_errored: bool = False,
    max_failures: int = 0,
    verbose: int = 1,
    num_cpus: int | None = None,
) -> SearchResult:
    """Run (or resume) the search described by ``spec``; write and return the report.

    ``out`` holds the search record, the SQLite study (unless ``storage_url``), the report and (unless
    ``storage_path``, e.g. ``s3://bucket/prefix``) the Tune experiment with the trial folders and checkpoints.
    """
    t0, started_at = time.perf_counter(), datetime.datetime.now()  # Optuna stamps trials with naive local time
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url or default_storage_url(out, spec.study_name)
    storage_root = storage_path or str(out)
    experiment = f"{storage_root.rstrip('/')}/{spec.study_name}"

    # Everything that can be wrong is checked before Ray starts or any trial runs.
    storage = open_storage(url)
    study = open_study(url, spec, create=True, storage=storage)
    save_search_folder(out, spec, url, experiment)

    started = connect_ray(address, num_cpus=num_cpus)
    try:
        _check_resources(spec, strict=started and not (address or os.environ.get("RAY_ADDRESS")))
        trainable = _trainable(run_trial, spec)

        def new() -> tune.Tuner:
            import optuna

            searcher = RecordingOptunaSearch(
                space=spec,  # define-by-run (conditional parameters); SearchSpec is a picklable callable
                metric=spec.metric,
                mode=spec.mode,  # explicit: without it a define-by-run study is silently created as maximize
                sampler=optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=spec.search.n_startup_trials),
                study_name=spec.study_name,
                storage=storage,
                experiment=experiment,
            )
            a = spec.search.asha
            scheduler = (
                None
                if a is None
                else ASHAScheduler(
                    time_attr="epoch",
                    metric=spec.metric,
                    mode=spec.mode,
                    max_t=spec.max_epochs,
                    grace_period=a.grace_period,
                    reduction_factor=a.reduction_factor,
                )
            )
            return tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=spec.search.num_samples,
                    max_concurrent_trials=spec.search.max_concurrent,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=_run_config(spec.study_name, storage_root, max_failures, verbose),
            )

        tuner, resumed = _restore_or_new(experiment, trainable, restart_errored, new)
        results = tuner.fit()
        errors = len(results.errors)
    finally:
        if started:
            ray.shutdown()

    study = open_study(url, spec, create=False, storage=storage)
    orphans = _fail_orphans(study, experiment, started_at)
    wall = time.perf_counter() - t0
    extra = [
        f"Tune experiment: `{experiment}`" + (" (resumed)" if resumed else ""),
        f"driver wall time: {wall / 60:.1f} min" + (" (this run)" if resumed else ""),
    ]
    if errors:
        extra.append(f"{errors} trial(s) raised an error: see `error.txt` in their folders under `{experiment}`")
    if orphans:
        extra.append(f"{orphans} trial(s) left RUNNING by an interrupted driver were marked FAIL")
    report = write_report(
        study, spec, out, storage_display=display_url(url), retrain_command=retrain_command(out, storage_url), extra_lines=extra
    )
    return SearchResult(spec, out, url, experiment, resumed, report, wall, errors)


def retrain_best(
    out: str | Path,
    seeds: int = 3,
    *,
    storage_url: str | None = None,
    address: str | None = None,
    restart_errored: bool = False,
    max_failures: int = 0,
    verbose: int = 1,
    num_cpus: int | None = None,
) -> tuple[Path, str]:
    """Retrain the best trial of the search in ``out`` on ``seeds`` seeds (0..seeds-1) as parallel Tune trials,
    with the search's resources; write ``report/retrain.md`` and ``retrain.json`` (mean +- std) and return them."""
    if seeds < 1:
        raise SearchError(f"--seeds={seeds} must be >= 1")
    out = Path(out).resolve()
    spec, url, _ = load_search_folder(out, storage_url)
    study = open_study(url, spec, create=False)
    best, note = select_best(study, spec)
    if best is None:
        raise SearchError(f"the study {spec.study_name!r} in {display_url(url)} has no completed trial to retrain")
    import json

    meta = json.loads((out / "search.json").read_text())
    root = meta["experiment"].rsplit("/", 1)[0]
    name = f"{spec.study_name}-retrain-trial{best.number}-{seeds}seeds"
    path = f"{root}/{name}"
    print(f"Retraining trial {best.number} ({note}) on seeds 0..{seeds - 1}: {dict(best.params)}", flush=True)

    started = connect_ray(address, num_cpus=num_cpus)
    try:
        _check_resources(spec, strict=started and not (address or os.environ.get("RAY_ADDRESS")))
        trainable = _trainable(run_seed, spec, params=dict(best.params))
        tuner, _ = _restore_or_new(
            path,
            trainable,
            restart_errored,
            lambda: tune.Tuner(
                trainable,
                param_space={"seed": tune.grid_search(list(range(seeds)))},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.search.max_concurrent, trial_dirname_creator=trial_dirname
                ),
                run_config=_run_config(name, root, max_failures, verbose),
            ),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    runs = []
    for r in sorted(results, key=lambda r: r.config["seed"]):
        m = r.metrics or {}
        runs.append(
            {
                "seed": r.config["seed"],
                "state": "ERROR" if r.error else "DONE",
                "epochs": m.get("epoch"),
                **{k: m.get(k) for k in RECORDED if k.startswith(("val_", "test_"))},
                "run_dir": m.get("run_dir"),
            }
        )
    best_info = {"trial": best.number, "params": dict(best.params)}
    return write_retrain_report(out, spec, best_info, runs)


# ----------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m rayjobs.search",
        description="Hyper-parameter search of twohead (Ray Tune + Optuna TPE + ASHA on the validation metric).",
        epilog="Resume: run the same command again. Live view: optuna-dashboard <storage URL> (printed at the end).",
    )
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", help="search space search_spaces/<NAME>.yaml (smoke, cifar10-lt, cifar100-lt, imagenet-lt)")
    what.add_argument("--space", type=Path, help="a search-space YAML file")
    what.add_argument(
        "--retrain-best", type=Path, metavar="DIR", help="retrain the best config of the search in DIR on --seeds seeds"
    )
    ap.add_argument("--out", type=Path, help="results folder (default runs/<study>-search)")
    ap.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/<study>.db; PostgreSQL on clusters)")
    ap.add_argument("--storage-path", help="Tune experiment storage: local folder or s3://bucket/prefix (default: --out)")
    ap.add_argument("--study-name", help="Optuna study / Tune experiment name (default: the space's name)")
    ap.add_argument("--address", help="Ray cluster to join (auto, host:port); default RAY_ADDRESS, else a local Ray")
    ap.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    ap.add_argument("--max-concurrent", type=int, help="trials running at once (overrides search.max_concurrent)")
    ap.add_argument("--seed", type=int, help="TPE sampler seed (overrides search.seed)")
    ap.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (per worker with --workers-per-trial)")
    ap.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack trials on one GPU (0.16 -> 6 per card)")
    ap.add_argument("--workers-per-trial", type=int, help="> 1: each trial is a DDP TorchTrainer with this many workers")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base TrainConfig (repeatable)")
    ap.add_argument("--seeds", type=int, default=3, help="with --retrain-best: number of seeds (0..N-1)")
    ap.add_argument(
        "--restart-errored",
        action="store_true",
        help="on resume, rerun errored trials from scratch (default: from their checkpoint)",
    )
    ap.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial from its last checkpoint")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this command starts (default: all)")
    ap.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Tune progress output")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # Tune prints the trials; Optuna's per-trial INFO is noise
    try:
        if args.retrain_best is not None:
            md, text = retrain_best(
                args.retrain_best,
                args.seeds,
                storage_url=args.storage,
                address=args.address,
                restart_errored=args.restart_errored,
                max_failures=args.max_failures,
                verbose=args.verbose,
                num_cpus=args.num_cpus,
            )
            print(text)
            print(f"Retrain report: {md}")
            return 0
        spec = load_search_space(args.space if args.space is not None else args.preset)
        spec = spec.replace(
            num_samples=args.num_samples,
            max_concurrent=args.max_concurrent,
            seed=args.seed,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            workers_per_trial=args.workers_per_trial,
            study_name=args.study_name,
            set=args.set,
        )
        out = args.out or Path("runs") / f"{spec.study_name}-search"
        res = run_search(
            spec,
            out,
            storage_url=args.storage,
            storage_path=args.storage_path,
            address=args.address,
            restart_errored=args.restart_errored,
            max_failures=args.max_failures,
            verbose=args.verbose,
            num_cpus=args.num_cpus,
        )
    except (SearchSpaceError, SearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(res.report.text)
    print(f"Report: {res.report.markdown}")
    print(f"Dashboard: {res.dashboard}")
    if res.report.best is None:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
