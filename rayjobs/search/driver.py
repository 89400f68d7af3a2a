"""Hyper-parameter search of twohead on Ray Tune: Optuna TPE + ASHA on validation objectives (the driver).

``python -m rayjobs.search --preset smoke --out runs/smoke-search`` (the README's main job) runs a Ray Tune
``Tuner`` whose trials (:mod:`rayjobs.search.trial`) each call the one training loop, :func:`twohead.loop.fit`. A
:class:`~rayjobs.search.searcher.StudySearcher` proposes configurations from the search space (Optuna TPE, seeded; one
objective or several: a Pareto search, :mod:`rayjobs.search.objectives`) and records every trial's true outcome in the
study; ``ASHAScheduler`` stops weak trials early on their search score, never before a deferred re-weighting
epoch. Both see only **validation** metrics; test metrics are recorded with each trial and reported, never used
for the choice. Each trial picks its K-to-C reading / post-hoc correction on validation (``posthoc: true``).

- ``--data URI`` (``s3://``, ``gs://``, ``file://`` or a folder prepared by ``rayjobs.prepare``): trials read the
  shards through the data plane of ``rayjobs.train`` (:mod:`rayjobs.data.plane`); the manifest is checked once,
  here, and the cluster labels of each (clustering, u, rounding, seed) are computed once, on the cluster.
  Without it trials build the dataset locally (``TWOHEAD_DATA``), the embedded default.
- ``--storage-path`` (a shared folder or ``s3://bucket/prefix``) holds everything the search produces: the Tune
  experiment with every trial's checkpoints and run folder, the search record, the report, retrain results and
  (default SQLite study) a snapshot of the study. ``--out`` is then a local mirror of the record and report.
- The study: a SQLite file in ``--out`` by default; ``--storage env:NAME`` reads a PostgreSQL (any RDB) URL from
  the environment so its password is never on a command line or in a file (:mod:`rayjobs.search.study`).
- Resume: run the same command again. The experiment is restored (``Tuner.restore``) with the same study;
  finished trials are kept, unfinished ones continue from their last checkpoint under their Optuna number.
- Extend: run it again with a larger ``--num-samples``: exactly the extra trials run, as a new Tune experiment
  ``<study>-extend<k>`` beside the first, in the same study (the sampler's history) with the sampler's state.
- ``--warm-start STUDY_OR_DIR``: a new search starts with the best configurations of a finished one (enqueued
  after the space's ``reference`` configuration, :mod:`rayjobs.search.seeding`).
- Ctrl-C / SIGTERM: Tune snapshots the experiment, running trials stay RUNNING in the study (continued by the
  rerun), the report is written and the command exits 130 / 143. A second signal stops at once.
- ``--address`` / ``RAY_ADDRESS`` are checked to answer before anything is written (:mod:`rayjobs.cluster.connect`);
  without them a local Ray is started (dashboard on: Tune + ASHA needs the State API, notes/ray-2.60.md).
- Spot nodes: a failed trial is retried ``--max-failures`` times (default 3) from its last checkpoint.
- ``--mlflow [URI]`` / ``--tensorboard`` (the ``twohead[tracking]`` extra): every trial is an MLflow run nested under
  the search's, tagged with its Optuna number and state and carrying the study's values; TensorBoard event files
  in every trial folder (:mod:`rayjobs.search.tracking`). A resumed search continues its runs.
- ``--retrain-best DIR_OR_URL --seeds N`` retrains the best configuration on N seeds and reports mean +- std.

(Over 400 lines on purpose: :func:`run_search` is the one sequence of a search -- check, record, study, segments,
Tune, reconcile, report -- and reads best in one place; Tune plumbing, trials, the searcher, warm starts and the
report are modules of their own.)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayjobs.cluster.connect import RayAddressError, connect, resolve
from rayjobs.data import storage as store
from rayjobs.search.lock import SearchLocked, hold, hold_study, releases_locks
from rayjobs.search.report import Report, dashboard_command, retrain_command, write_report
from rayjobs.search.retrain import retrain_best
from rayjobs.search.searcher import DB_TIMEOUT_S, DatabaseOutage, set_db_timeout
from rayjobs.search.seeding import DEFAULT_TOP, Segment, enqueue, finished, plan_segments, previous_sampler, resolve_warm_start
from rayjobs.search.space import SearchSpaceError, SearchSpec, load_search_space
from rayjobs.search.study import (
    SearchError,
    StudyStorage,
    fetch_sqlite,
    open_storage,
    open_study,
    publish_sqlite,
    save_record,
    study_storage,
    update_record,
)
from rayjobs.search.trial import TrialJob, run_trial
from rayjobs.search.tuning import (
    DEFAULT_MAX_FAILURES,
    check_resources,
    data_plan,
    interrupts,
    needs_thumbnails,
    new_sampler,
    new_tuner,
    restore_or_new,
    trainable,
)
from twohead.folders import check_writable

__all__ = ["DEFAULT_MAX_FAILURES", "SearchResult", "main", "retrain_best", "run_search"]

log = logging.getLogger("rayjobs.search")


# ----------------------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    spec: SearchSpec
    out: Path
    record: str  # where search.json and report/ live (the experiment URL with --storage-path)
    storage: StudyStorage
    experiment: str
    resumed: bool
    report: Report
    wall_s: float
    errors: int
    interrupted: int = 0  # the signal that stopped the driver, 0 when it ran to the end
    data_stats: dict | None = None
    segments: list[Segment] = field(default_factory=list)  # the search's Tune runs (an extension adds one)
    enqueued: list[dict] = field(default_factory=list)  # reference / warm-start trials enqueued by this run

    @property
    def dashboard(self) -> str:
        return dashboard_command(self.storage.display)


@releases_locks
def run_search(
    spec: SearchSpec,
    out: str | Path,
    *,
    storage_url: str | None = None,
    storage_path: str | None = None,
    data: str | None = None,
    verify: str = "size",
    stream: str = "auto",
    address: str | None = None,
    restart_errored: bool = False,
    max_failures: int = DEFAULT_MAX_FAILURES,
    verbose: int = 1,
    num_cpus: int | None = None,
    fail_at_epoch: int | None = None,
    warm_start: str | None = None,
    warm_start_top: int = DEFAULT_TOP,
    mlflow: str | None = None,
    tensorboard: bool = False,
) -> SearchResult:
    """Run, resume or extend the search described by ``spec``; write and return the report (module docstring).

    ``mlflow``: a resolved MLflow tracking URI (:func:`twohead.tracking.resolve_uri`) the trials are logged to;
    ``tensorboard``: event files in every trial folder (:mod:`rayjobs.search.tracking`)."""
    import ray

    t0, started_at = time.perf_counter(), datetime.datetime.now()  # Optuna stamps trials with naive local time
    out = check_writable(Path(out).resolve(), "--out")
    target = None if ray.is_initialized() else resolve(address)  # before anything is written
    warm = resolve_warm_start(warm_start, warm_start_top) if warm_start else None
    ss = study_storage(storage_url, out, spec.study_name)
    root = storage_path.rstrip("/") if storage_path else str(out)
    if storage_path:
        store.check_reachable(storage_path, "--storage-path")
    experiment = store.join(root, spec.study_name)
    record = experiment if storage_path else str(out)
    plan = None
    if data:
        spec, plan = data_plan(spec, data, verify, stream)
    meta = {"storage": ss.ref, "study_name": spec.study_name, "experiment": experiment, "data": plan.url if plan else None}
    if warm is not None:
        meta["warm_start"] = warm.shown
    before = save_record(record, spec, meta, mirror=out, check_only=True, extend=True)
    if plan is None and spec.base.data.download:
        # Fetch the dataset once, here, before any trial starts: trials that each downloaded it would race on the
        # same folder, and a machine without network access fails now with one line, not in every trial.
        from twohead.data import describe_counts

        describe_counts(spec.base.data)

    # A server URL that cannot be opened is refused before anything is written (SQLite lives in --out: opened below).
    study_store = open_storage(ss.url) if ss.sqlite_path is None else None
    out.mkdir(parents=True, exist_ok=True)
    hold(out)  # one driver per folder (its SQLite study, its record) until this call returns
    if study_store is not None:
        hold_study(ss.url, spec.study_name, ss.display)  # and one per study on a server (drivers on other machines)
    snapshot = None
    if ss.sqlite_path is not None and record != str(out):
        snapshot = store.join(experiment, ss.sqlite_path.name)
        if fetch_sqlite(snapshot, ss.sqlite_path):
            print(f"Study restored from its snapshot {snapshot}", flush=True)
        meta.update(sqlite_snapshot=snapshot)
    meta.update(sqlite_local=str(ss.sqlite_path) if ss.sqlite_path else None)
    study_store = study_store or open_storage(ss.url)
    study = open_study(ss.url, spec, create=True, storage=study_store)
    old_meta = _recorded_meta(record)
    if warm is not None and old_meta.get("warm_start") != warm.shown and study.get_trials(deepcopy=False):
        raise SearchError(
            f"--warm-start seeds a new search, but study {spec.study_name!r} in {ss.display} already has "
            f"{len(study.trials)} trials; use another --study-name (or storage)"
        )
    segments = plan_segments(old_meta, experiment, root, spec.study_name, before, spec.search.num_samples)
    meta["segments"] = [dataclasses.asdict(seg) for seg in segments]
    save_record(record, spec, meta, mirror=out, extend=True)
    enqueued = enqueue(study, spec, warm)
    if warm is not None and enqueued:
        update_record(record, {"warm_start_trials": [p["user_attrs"].get("warm_start") for p in warm.enqueued]}, mirror=out)

    parent_run = None
    if mlflow is not None:
        from rayjobs.search.tracking import open_parent

        parent_run = open_parent(mlflow, spec.study_name, experiment, _search_params(spec))
        print(f"MLflow: experiment {spec.study_name!r} at {mlflow} (parent run {parent_run})", flush=True)

    started = connect(target, num_cpus=num_cpus) if target is not None else False
    received: list[int] = []
    data_stats = None
    errors, resumed, runs = 0, False, []
    try:
        strict = started and target is not None and target.local
        check_resources(spec, strict, 1.0 if plan is not None and not plan.in_memory else 0.0)
        service = None
        if plan is not None:
            from rayjobs.data.plane import start_service

            service = start_service(plan)
            ray.get(service.warm.remote(needs_thumbnails(spec)))  # before trials hold the CPUs
        fault = {"at_epoch": int(fail_at_epoch), "mode": "kill"} if fail_at_epoch else None
        with interrupts() as received:
            for k, seg in enumerate(segments):
                if finished(study, seg):
                    continue
                job = TrialJob(spec=spec, experiment=seg.experiment, plan=plan, service=service, fault=fault)
                fn = trainable(run_trial, job)
                sampler = (previous_sampler(segments[k - 1].experiment) or new_sampler(spec, k)) if k else None

                from rayjobs.search.tracking import search_callbacks

                callbacks = search_callbacks(
                    mlflow_uri=mlflow,
                    tensorboard=tensorboard,
                    study_name=spec.study_name,
                    parent_run_id=parent_run,
                    storage_env=ss.env,
                    objectives=list(spec.metrics),
                )

                def new(seg: Segment = seg, fn: Any = fn, sampler: Any = sampler, callbacks: list = callbacks) -> Any:
                    return new_tuner(
                        spec,
                        fn,
                        ss,
                        seg.experiment,
                        root,
                        max_failures,
                        verbose,
                        name=seg.name,
                        num_samples=seg.num_samples,
                        sampler=sampler,
                        callbacks=callbacks,
                    )

                tuner, again = restore_or_new(seg.experiment, fn, restart_errored, new, callbacks)
                results = tuner.fit()
                resumed |= again
                errors += len(results.errors)
                runs.append((seg, results))
                if received:
                    break
        if service is not None:
            data_stats = ray.get(service.stats.remote())
    finally:
        if started:
            ray.shutdown()

    from rayjobs.search.searcher import fail_orphans, reconcile

    settled = orphans = 0
    if not received:
        for seg, results in runs:
            settled += reconcile(study, study_store, seg.experiment, results, spec)
            orphans += fail_orphans(study, seg.experiment, started_at)
    if parent_run is not None:
        from rayjobs.search.tracking import settle

        settle(mlflow, study, parent_run, list(spec.metrics), interrupted=bool(received))
    if snapshot is not None:
        publish_sqlite(ss.sqlite_path, snapshot)
    if data_stats is not None:
        update_record(record, {"labels": data_stats["labels"], "node_loads": len(data_stats["node_loads"])}, mirror=out)
    wall = time.perf_counter() - t0
    extra = [
        f"Tune experiment: `{experiment}`" + (" (resumed)" if resumed else ""),
        *[f"extended by {seg.num_samples} trials: Tune experiment `{seg.experiment}`" for seg in segments[1:]],
        f"driver wall time: {wall / 60:.1f} min" + (" (this run)" if resumed or len(segments) > 1 else ""),
    ]
    if plan is not None:
        extra.append(f"data: `{plan.url}` ({'in memory, one copy per node' if plan.in_memory else 'streamed with Ray Data'})")
    warm_note = (old_meta.get("warm_start") if warm is None else warm.shown) or None
    if warm_note:
        extra.append(f"warm-started from `{warm_note}` (its best configurations were enqueued first)")
    for p in enqueued:
        if p["dropped"]:
            extra.append(f"{p['user_attrs']}: parameters {p['dropped']} are not in this space's ranges and were sampled")
    if mlflow is not None:
        extra.append(
            f"MLflow: experiment `{spec.study_name}` at `{mlflow}`, one run per trial under the parent run `{parent_run}`"
        )
    if tensorboard:
        extra.append(f"TensorBoard: `tensorboard --logdir {experiment}`")
    if received:
        extra.append(
            f"interrupted by {signal.Signals(received[0]).name}: unfinished trials continue when the same command runs again"
        )
    if errors:
        extra.append(f"{errors} trial(s) raised an error: see `error.txt` in their folders under `{experiment}`")
    if settled:
        extra.append(f"{settled} trial(s) recorded from Tune's results (the study had them unfinished)")
    if orphans:
        extra.append(f"{orphans} trial(s) left RUNNING by an interrupted driver and never continued were marked FAIL")
    report = write_report(
        study,
        spec,
        out,
        storage_display=ss.display,
        retrain_command=retrain_command(record, None if ss.ref == "default" else ss.ref),
        extra_lines=extra,
        shown_folder=store.join(record, "report"),
    )
    if record != str(out):
        store.upload_dir(report.folder, store.join(record, "report"), last="report.md")
    interrupted = received[0] if received else 0
    return SearchResult(
        spec, out, record, ss, experiment, resumed, report, wall, errors, interrupted, data_stats, segments, enqueued
    )


def _search_params(spec: SearchSpec) -> dict[str, Any]:
    """The parent MLflow run's params: what the search is (space, objectives, budget) and its base config."""
    from twohead.config import flatten

    s = spec.search
    params = {
        "search.space": spec.source,
        "search.objectives": ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives),
        "search.num_samples": s.num_samples,
        "search.seed": s.seed,
        "search.parameters": ", ".join(p.name for p in spec.params),
    }
    base = {f"base.{k}": v for k, v in flatten(spec.base.to_dict()).items()}
    return params | base


def _recorded_meta(record: str) -> dict:
    """``search.json`` of the search recorded at ``record`` ({} for a new search)."""
    import json

    url = store.join(record, "search.json")
    return json.loads(store.read_bytes(url)) if store.exists(url) else {}


# ----------------------------------------------------------------------------------------------------- CLI
def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first exception of ``kind`` in its cause / context chain."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None or isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m rayjobs.search",
        description="Hyper-parameter search of twohead (Ray Tune + Optuna TPE + ASHA on validation objectives).",
        epilog="Resume: run the same command again; extend it: again with a larger --num-samples. "
        "Live view: optuna-dashboard <storage URL> (printed at the end).",
    )
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--preset",
        help="search space search_spaces/<NAME>.yaml (smoke, smoke-pareto, cifar10-lt, cifar10-lt-pareto, cifar100-lt, "
        "imagenet-lt)",
    )
    what.add_argument("--space", type=Path, help="a search-space YAML file")
    what.add_argument(
        "--retrain-best",
        metavar="DIR_OR_URL",
        help="retrain the best config of the search recorded there (its --out folder or record URL) on --seeds seeds",
    )
    ap.add_argument("--data", help="prepared dataset (rayjobs.prepare) the trials read: s3://, gs://, file:// or a folder")
    ap.add_argument("--verify", choices=("size", "full"), default="size", help="check --data shards by size or sha256")
    ap.add_argument("--stream", choices=("auto", "on", "off"), default="auto", help="as rayjobs.train --stream")
    ap.add_argument("--out", type=Path, help="local results folder / mirror (default runs/<study>-search)")
    ap.add_argument(
        "--storage",
        help="Optuna storage: a URL, or env:NAME to read it from $NAME (keeps a password off the command line); "
        "default sqlite:///<out>/<study>.db",
    )
    ap.add_argument("--storage-path", help="where everything the search produces lives: a shared folder or s3://bucket/prefix")
    ap.add_argument("--study-name", help="Optuna study / Tune experiment name (default: the space's name)")
    ap.add_argument("--address", help="Ray cluster to join (HOST:PORT, auto); default RAY_ADDRESS, else a local Ray")
    ap.add_argument(
        "--num-samples", type=int, help="number of trials (overrides search.num_samples); larger on a rerun: extend it"
    )
    ap.add_argument("--max-concurrent", type=int, help="trials running at once (overrides search.max_concurrent)")
    ap.add_argument("--seed", type=int, help="TPE sampler seed (overrides search.seed)")
    ap.add_argument(
        "--warm-start",
        metavar="STUDY_OR_DIR",
        help="start a new search with the best configurations of a finished one: its --out folder, record URL, "
        "or an Optuna storage URL / env:NAME (#STUDY to pick a study)",
    )
    ap.add_argument(
        "--warm-start-top",
        type=int,
        default=DEFAULT_TOP,
        help=f"with --warm-start: how many of its best configurations to enqueue (default {DEFAULT_TOP})",
    )
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
    ap.add_argument(
        "--max-failures",
        type=int,
        default=DEFAULT_MAX_FAILURES,
        help=f"retries of a failed trial from its last checkpoint (default {DEFAULT_MAX_FAILURES}: spot nodes)",
    )
    ap.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this command starts (default: all)")
    ap.add_argument(
        "--db-timeout",
        type=float,
        default=DB_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long the search waits out an unreachable study database (a failover, a restart) before it stops "
        f"(default {DB_TIMEOUT_S:.0f}); trials keep training meanwhile",
    )
    ap.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Tune progress output")
    ap.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log every trial to MLflow (experiment = the study, one run per trial under a parent run for the search): "
        "a tracking server (http://...) or sqlite:///FILE.db; without URI, $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here",
    )
    ap.add_argument("--tensorboard", action="store_true", help="TensorBoard event files in every trial folder of the experiment")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # Tune prints the trials; Optuna's per-trial INFO is noise
    if args.max_failures < 0:
        print(f"error: --max-failures {args.max_failures} must be >= 0", file=sys.stderr)
        return 2
    try:
        set_db_timeout(args.db_timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.retrain_best is not None:
            if args.mlflow is not None or args.tensorboard:
                raise SearchError("--mlflow / --tensorboard log a search's trials; drop them with --retrain-best")
            where, text = retrain_best(
                args.retrain_best,
                args.seeds,
                storage_url=args.storage,
                out=args.out,
                address=args.address,
                restart_errored=args.restart_errored,
                max_failures=args.max_failures,
                verbose=args.verbose,
                num_cpus=args.num_cpus,
            )
            print(text)
            print(f"Retrain report: {where}")
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
            data=args.data,
            verify=args.verify,
            stream=args.stream,
            address=args.address,
            restart_errored=args.restart_errored,
            max_failures=args.max_failures,
            verbose=args.verbose,
            num_cpus=args.num_cpus,
            fail_at_epoch=int(os.environ["TWOHEAD_FAIL_AT_EPOCH"]) if os.environ.get("TWOHEAD_FAIL_AT_EPOCH") else None,
            warm_start=args.warm_start,
            warm_start_top=args.warm_start_top,
            **_tracking(args, spec.study_name),
        )
    except (
        SearchSpaceError,
        SearchError,
        SearchLocked,
        RayAddressError,
        store.StorageError,
        store.DatasetError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # Tune re-raises a searcher's error wrapped in its own
        outage = _cause(exc, DatabaseOutage)
        if outage is None:
            raise
        print(f"error: {outage}", file=sys.stderr)
        return 1
    print(res.report.text)
    print(
        f"Report: {store.join(res.record, 'report', 'report.md')}"
        + (f" (mirror: {res.report.markdown})" if res.record != str(res.out) else "")
    )
    print(f"Dashboard: {res.dashboard}")
    if res.interrupted:
        return 128 + res.interrupted
    return 0 if res.report.best is not None else 1


def _tracking(args: argparse.Namespace, study_name: str) -> dict[str, Any]:
    """``--mlflow`` / ``--tensorboard`` checked (the extra installed, the store reachable) before anything runs."""
    from twohead.tracking import check_mlflow, require, resolve_uri

    if args.tensorboard:
        require("tensorboardX", "--tensorboard")
    uri = None
    if args.mlflow is not None:
        uri = resolve_uri(args.mlflow)
        check_mlflow(uri, study_name)
    return {"mlflow": uri, "tensorboard": args.tensorboard}


if __name__ == "__main__":
    raise SystemExit(main())
