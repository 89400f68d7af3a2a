"""``--retrain-best``: the best configuration of a finished search, retrained on N seeds (mean +- std).

The search is found from its record (its ``--out`` folder or the record URL in object storage), the study from the
storage the record names, the best trial among those that trained all their epochs (the knee of a Pareto search's
front); each seed is also read with the reading / post-hoc variant the search chose for it (``chosen/*``, mean +- std
beside the raw ones); the seeds run as parallel
Tune trials with the search's resources and data, in ``<storage path>/<study>-retrain-trial<N>-<K>seeds``, and the
report (``retrain.md``, ``retrain.json``) goes beside the search's report and into the local mirror.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayjobs.cluster.connect import connect, resolve
from rayjobs.data import storage as store
from rayjobs.search.objectives import CHOICE_KEY, CHOSEN_PREFIX, TrialScoring, scoring_for
from rayjobs.search.report import REPORT_DIR, TEST_KEYS, VAL_KEYS, fmt, md_table, select_best
from rayjobs.search.searcher import RECORDED
from rayjobs.search.space import SearchSpec
from rayjobs.search.study import SearchError, load_record, open_study, record_storage
from rayjobs.search.trial import TrialJob, run_seed, trial_dirname
from rayjobs.search.tuning import DEFAULT_MAX_FAILURES, check_resources, restore_or_new, run_config, trainable
from twohead import atomic

__all__ = ["retrain_best", "write_retrain_report"]


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
    local = Path(where) if not store.is_object_store(str(where)) else None
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
        from rayjobs.data.plane import plan_dataset

        plan = plan_dataset(record.meta["data"], verify="size", skip_invalid=spec.base.data.skip_corrupt)

    started = connect(target, num_cpus=num_cpus) if target is not None else False
    try:
        from ray import tune

        check_resources(spec, started and target is not None and target.local, 0.0)
        service = None
        if plan is not None:
            from rayjobs.data.plane import start_service

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
    variant = best.user_attrs.get(CHOICE_KEY)
    scoring = scoring_for(spec, spec.trial_config(best.params))
    runs = []
    for r in sorted(results, key=lambda r: r.config["seed"]):
        m = r.metrics or {}
        runs.append(
            {
                "seed": r.config["seed"],
                "state": "ERROR" if r.error else "DONE",
                "epochs": m.get("epoch"),
                **{k: m.get(k) for k in RECORDED if k.startswith(("val_", "test_"))},
                **_under(variant, scoring, m),
                "run_dir": m.get("run_dir"),
            }
        )
    mirror = Path(out) if out is not None else local
    folder = mirror if mirror is not None else Path(store.join(str(Path.cwd()), f"{spec.study_name}-retrain"))
    md, text = write_retrain_report(folder, spec, {"trial": best.number, "params": dict(best.params)}, runs)
    if record.root != str(folder):
        store.upload_dir(md.parent, store.join(record.root, "report"), last="retrain.md")
    return store.join(record.root, "report", "retrain.md"), text


def _under(variant: str | None, scoring: TrialScoring, result: dict) -> dict[str, float]:
    """A seed's validation and test metrics under the variant the search chose for this configuration
    (``chosen/val_top1``, ``chosen/test_top1``, ...), from its last result and its ``metrics.json``."""
    if not variant or variant == scoring.default:
        return {}
    out = {CHOSEN_PREFIX + k: v for k, v in scoring.variants(result).get(variant, {}).items()}
    if result.get("run_dir"):
        from rayjobs.train.reporting import flat_scalars

        try:
            final = json.loads(store.read_bytes(store.join(result["run_dir"], "metrics.json")))
        except (OSError, ValueError, store.StorageError):
            return out
        out.update({CHOSEN_PREFIX + k: v for k, v in scoring.variants(flat_scalars(final), "test").get(variant, {}).items()})
    return out


def write_retrain_report(
    out_dir: str | Path, spec: SearchSpec, best: dict[str, Any], runs: list[dict[str, Any]]
) -> tuple[Path, str]:
    """``report/retrain.md`` + ``retrain.json``: per-seed metrics of the best config and their mean +- std."""
    import numpy as np

    folder = Path(out_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [CHOSEN_PREFIX + k for k in VAL_KEYS + TEST_KEYS]
    keys = [k for k in VAL_KEYS + TEST_KEYS + tuple(chosen) if any(r.get(k) is not None for r in runs)]
    summary: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = np.array([r[k] for r in runs if r.get(k) is not None], dtype=np.float64)
        # sample std (ddof=1) over seeds, as papers report mean +- std; 0 for a single seed
        summary[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n": int(len(vals))}
    payload = {"trial": best.get("trial"), "params": best.get("params"), "runs": runs, "summary": summary}
    atomic.write_text(folder / "retrain.json", json.dumps(payload, indent=1))
    lines = [
        f"# Best config of {spec.study_name}, retrained on {len(runs)} seeds",
        "",
        f"Search trial {best.get('trial')}: " + ", ".join(f"{k}={fmt(v)}" for k, v in (best.get("params") or {}).items()),
        "",
        md_table(runs, ["seed", "state", "epochs", *keys]),
        "",
        "| metric | mean +- std |",
        "|---|---|",
        *[f"| {k} | {v['mean']:.2f} +- {v['std']:.2f} (n={v['n']}) |" for k, v in summary.items()],
        "",
    ]
    text = "\n".join(lines)
    atomic.write_text(folder / "retrain.md", text)
    return folder / "retrain.md", text
