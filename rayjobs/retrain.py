"""``--retrain-best``: the best configuration of a finished search, retrained on N seeds (mean +- std).

The search is found from its record (its ``--out`` folder or the record URL in object storage), the study from the
storage the record names, the best trial among those that trained all their epochs; the seeds run as parallel
Tune trials with the search's resources and data, in ``<storage path>/<study>-retrain-trial<N>-<K>seeds``, and the
report (``retrain.md``, ``retrain.json``) goes beside the search's report and into the local mirror.
"""

from __future__ import annotations

from pathlib import Path

from rayjobs import storage as store
from rayjobs.connect import connect, resolve
from rayjobs.report import select_best, write_retrain_report
from rayjobs.searcher import RECORDED
from rayjobs.study import SearchError, load_record, open_study, record_storage
from rayjobs.trial import TrialJob, run_seed, trial_dirname
from rayjobs.tuning import DEFAULT_MAX_FAILURES, check_resources, restore_or_new, run_config, trainable

__all__ = ["retrain_best"]


def retrain_best(
    where: str | Path,
    seeds: int = 3,
    *,
    storage_url: str | None = None,
    out: str | Path | None = None,
    address: str | None = None,
    restart_errored: bool = False,
    max_failures: int = DEFAULT_MAX_FAILURES,
    verbose: int = 1,
    num_cpus: int | None = None,
) -> tuple[str, str]:
    """Retrain the best trial of the search recorded at ``where`` (its ``--out`` folder or record URL) on ``seeds``
    seeds as parallel Tune trials, with the search's resources and data; write ``report/retrain.md`` and
    ``retrain.json`` (mean +- std) beside its report (and into ``out``) and return (report location, text)."""
    import ray

    if seeds < 1:
        raise SearchError(f"--seeds={seeds} must be >= 1")
    target = None if ray.is_initialized() else resolve(address)
    local = Path(where) if not store._is_object_store(str(where)) else None
    record = load_record(where)
    spec = record.spec
    ss = record_storage(record, storage_url, local)
    study = open_study(ss.url, spec, create=False)
    best, note = select_best(study, spec)
    if best is None:
        raise SearchError(f"the study {spec.study_name!r} in {ss.display} has no trial that trained all its epochs to retrain")
    root = record.experiment.rsplit("/", 1)[0]
    name = f"{spec.study_name}-retrain-trial{best.number}-{seeds}seeds"
    print(f"Retraining trial {best.number} ({note}) on seeds 0..{seeds - 1}: {dict(best.params)}", flush=True)
    plan = None
    if record.meta.get("data"):
        from rayjobs.dataplane import plan_dataset

        plan = plan_dataset(record.meta["data"], verify="size", skip_invalid=spec.base.data.skip_corrupt)

    started = connect(target, num_cpus=num_cpus) if target is not None else False
    try:
        from ray import tune

        check_resources(spec, started and target is not None and target.local, 0.0)
        service = None
        if plan is not None:
            from rayjobs.dataplane import start_service

            service = start_service(plan)
        job = TrialJob(spec=spec, experiment=store.join(root, name), plan=plan, service=service, params=dict(best.params))
        fn = trainable(run_seed, job)
        tuner, _ = restore_or_new(
            store.join(root, name),
            fn,
            restart_errored,
            lambda: tune.Tuner(
                fn,
                param_space={"seed": tune.grid_search(list(range(seeds)))},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.search.max_concurrent, trial_dirname_creator=trial_dirname
                ),
                run_config=run_config(name, root, max_failures, verbose),
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
    mirror = Path(out) if out is not None else local
    folder = mirror if mirror is not None else Path(store.join(str(Path.cwd()), f"{spec.study_name}-retrain"))
    md, text = write_retrain_report(folder, spec, {"trial": best.number, "params": dict(best.params)}, runs)
    if record.root != str(folder):
        store.upload_dir(md.parent, store.join(record.root, "report"), last="retrain.md")
    return store.join(record.root, "report", "retrain.md"), text
