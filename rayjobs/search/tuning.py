"""Ray Tune plumbing of a search and of its retraining: resources, data plan, run config, restore, the tuner, signals.

- Resources: a single-worker trial holds ``cpus_per_trial`` / ``gpus_per_trial`` (fractions pack trials on a GPU);
  one that streams large images with Ray Data reserves one more CPU bundle in its placement group for decoding;
  a multi-worker trial's own process holds :data:`TRIAL_DRIVER_CPUS` and its TorchTrainer the real resources.
- The experiment lives at ``<storage path>/<name>`` (a folder or ``s3://``), restored with ``Tuner.restore`` when it
  exists (its snapshot first checked against the checkpoints the trials kept, :mod:`rayjobs.search.tune_state`); epochs
  without a validation pass report no metric (``TUNE_DISABLE_STRICT_METRIC_CHECKING``), ASHA and the searcher skip
  them, and ASHA also skips a trial's epochs before its deferred re-weighting starts.
- Tracking (``--mlflow``, ``--tensorboard``): Tune callbacks of :mod:`rayjobs.search.tracking`, set again on a
  restored tuner (its snapshot pickled the previous run's).
- :func:`interrupts`: SIGINT / SIGTERM end ``Tuner.fit`` through Tune's own graceful path (SIGUSR1: a last
  experiment snapshot, then stop) and are remembered so the driver exits non-zero; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

from rayjobs.data import storage as store
from rayjobs.search.objectives import ASHA_KEY
from rayjobs.search.searcher import INTERRUPTED
from rayjobs.search.space import SearchSpaceError, SearchSpec
from rayjobs.search.study import SearchError, StudyStorage
from rayjobs.search.trial import TrialJob, trial_dirname

__all__ = [
    "DEFAULT_MAX_FAILURES",
    "TRIAL_DRIVER_CPUS",
    "asha_scheduler",
    "check_resources",
    "data_plan",
    "interrupts",
    "needs_thumbnails",
    "new_sampler",
    "new_tuner",
    "restore_or_new",
    "run_config",
    "trainable",
]

log = logging.getLogger("rayjobs.search")

DEFAULT_MAX_FAILURES = 3  # retries of a failed trial from its last checkpoint (a preempted spot node)
TRIAL_DRIVER_CPUS = 0.5  # a multi-worker trial's own process: it only drives its TorchTrainer


def check_resources(spec: SearchSpec, strict: bool, data_cpus: float) -> None:
    """A trial asking for more than the cluster has would wait forever: say so before the search starts."""
    import ray

    have = ray.cluster_resources()
    r = spec.resources
    need = {"CPU": r.cpus_per_trial * r.workers_per_trial + data_cpus, "GPU": r.gpus_per_trial * r.workers_per_trial}
    if r.workers_per_trial > 1:
        need["CPU"] += TRIAL_DRIVER_CPUS  # the trial's own driver process
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if not short:
        return
    msg = "; ".join(f"a trial needs {need_v:g} {k}, the Ray cluster has {have_v:g}" for k, (need_v, have_v) in short.items())
    hint = " (use --gpus-per-trial 0 on a CPU machine)" if "GPU" in short else " (lower --cpus-per-trial)"
    if strict:
        raise SearchError(msg + hint)
    log.warning("%s%s; waiting for the autoscaler to add nodes", msg, hint)


def trainable(fn: Any, job: TrialJob) -> Any:
    from ray import tune

    r = job.spec.resources
    bound = tune.with_parameters(fn, job=job)
    if r.workers_per_trial > 1:
        # The trial process only drives a TorchTrainer (whose workers hold the real resources) and waits.
        return tune.with_resources(bound, {"cpu": TRIAL_DRIVER_CPUS})
    head = {"CPU": r.cpus_per_trial, **({"GPU": r.gpus_per_trial} if r.gpus_per_trial else {})}
    if job.plan is not None and not job.plan.in_memory:
        # Ray Data tasks started by a trial run in the trial's placement group: reserve a CPU for decoding.
        return tune.with_resources(bound, tune.PlacementGroupFactory([head, {"CPU": 1}]))
    return tune.with_resources(bound, {k.lower(): v for k, v in head.items()})


def run_config(name: str, storage_path: str, max_failures: int, verbose: int, callbacks: list | None = None) -> Any:
    from ray import tune

    fs, path = store.ray_storage(storage_path)
    return tune.RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=fs,
        # Two, not one: with num_to_keep=1 every checkpoint forces an experiment snapshot (Tune warns about it).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=max_failures),
        verbose=verbose,
        callbacks=callbacks or None,
    )


def restore_or_new(path: str, trainable: Any, restart_errored: bool, new: Any, callbacks: list | None = None) -> tuple[Any, bool]:
    """``Tuner.restore`` of the experiment at ``path`` when there is one, else ``new()``. ``callbacks`` (not None)
    replace the ones the experiment snapshot pickled: a rerun's tracking flags are the ones that apply."""
    from ray import tune

    # Epochs without a validation pass (run.eval_every > 1) report no metric; ASHA and the searcher skip them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    fs, fs_path = store.ray_storage(path)
    if tune.Tuner.can_restore(fs_path, storage_filesystem=fs):
        print(f"Resuming the search in {path} (finished trials are kept)", flush=True)
        from rayjobs.search.tune_state import repoint_missing_checkpoints, resolve_former_module_paths

        resolve_former_module_paths()  # an experiment saved before rayjobs/ was split into packages
        for line in repoint_missing_checkpoints(fs, fs_path):  # a driver killed between rotation and snapshot
            print(f"Trial {line}", flush=True)
        tuner = tune.Tuner.restore(
            fs_path,
            trainable,
            resume_unfinished=True,
            resume_errored=not restart_errored,
            restart_errored=restart_errored,
            storage_filesystem=fs,
        )
        if callbacks is not None and tuner._local_tuner is not None:
            tuner._local_tuner.get_run_config().callbacks = list(callbacks) or None  # Tune has no public setter
        return tuner, True
    return new(), False


@contextlib.contextmanager
def interrupts() -> Iterator[list[int]]:
    """SIGINT / SIGTERM end the Tune run gracefully (Tune's own SIGUSR1 path: snapshot, then stop) and are
    remembered; a second signal, or one outside ``tuner.fit``, stops at once (KeyboardInterrupt)."""
    received: list[int] = []
    INTERRUPTED.clear()

    def handler(signum: int, frame: Any) -> None:
        if received or not callable(signal.getsignal(signal.SIGUSR1)):
            raise KeyboardInterrupt
        received.append(signum)
        INTERRUPTED.set()
        print(f"\n{signal.Signals(signum).name}: stopping the search; run the same command to resume it", flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # our handler decides; Tune keeps its SIGUSR1 handler
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def new_tuner(
    spec: SearchSpec,
    trainable: Any,
    ss: StudyStorage,
    experiment: str,
    root: str,
    max_failures: int,
    verbose: int,
    *,
    name: str | None = None,
    num_samples: int | None = None,
    sampler: Any = None,
    callbacks: list | None = None,
) -> Any:
    """A new Tune run of ``num_samples`` trials (default: the space's) named ``name`` (default: the study) under
    ``root``, proposed by a :class:`~rayjobs.search.searcher.StudySearcher` over the study with ``sampler`` (default: a
    seeded TPE sampler, one- or multi-objective) and stopped early by ASHA on the trials' ASHA metric
    (:data:`rayjobs.search.objectives.ASHA_KEY`: the search score, only from each trial's first comparable epoch)."""
    from ray import tune

    from rayjobs.search.searcher import StudySearcher

    searcher = StudySearcher(spec, storage_env=ss.env, experiment=experiment, sampler=sampler or new_sampler(spec))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=asha_scheduler(spec),
            num_samples=num_samples or spec.search.num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(name or spec.study_name, root, max_failures, verbose, callbacks),
    )


def asha_scheduler(spec: SearchSpec) -> Any:
    """ASHA over completed epochs on the trials' ASHA metric (:data:`rayjobs.search.objectives.ASHA_KEY`), or None."""
    from ray.tune.schedulers import ASHAScheduler

    a = spec.search.asha
    if a is None:
        return None
    return ASHAScheduler(
        time_attr="epoch",
        metric=ASHA_KEY,
        mode=spec.score_mode,
        max_t=spec.max_epochs,
        grace_period=a.grace_period,
        reduction_factor=a.reduction_factor,
    )


def new_sampler(spec: SearchSpec, seed_offset: int = 0) -> Any:
    """Optuna's TPE sampler, seeded: one objective, or several (multi-objective TPE, Ozaki et al. 2020/2022)."""
    import optuna

    return optuna.samplers.TPESampler(seed=spec.search.seed + seed_offset, n_startup_trials=spec.search.n_startup_trials)


def data_plan(spec: SearchSpec, data: str, verify: str, stream: str) -> tuple[SearchSpec, Any]:
    """Check the dataset once; the base config's data section becomes the dataset's (a search may not vary it)."""
    from rayjobs.data.plane import apply_manifest, manifest_keys, plan_dataset

    plan = plan_dataset(data, verify=verify, stream=stream, skip_invalid=spec.base.data.skip_corrupt)
    fixed = manifest_keys(plan.manifest_obj, spec.base)
    bad = [p.name for p in spec.params if p.key in fixed]
    if bad:
        raise SearchSpaceError(
            f"{spec.source}: parameters {bad} change the dataset, which --data {plan.url} fixes; "
            "prepare one dataset per value instead"
        )
    return dataclasses.replace(spec, base=apply_manifest(spec.base, plan.manifest_obj)), plan


def needs_thumbnails(spec: SearchSpec) -> bool:
    """Can a trial of this search ask for k-means / hierarchical labels on the pixel embedding?"""
    methods, embeddings = {spec.base.method.clustering}, {spec.base.method.embedding}
    for p in spec.params:
        if p.key == "method.clustering":
            methods |= set(p.choices)
        elif p.key == "method.embedding":
            embeddings |= set(p.choices)
    return bool(methods - {"random"}) and bool(embeddings & {"pca", "pixels"})
