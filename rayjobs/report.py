"""The report a search leaves behind: best config, all trials (Markdown + CSV), plots (Ray-free).

Everything is read back from the Optuna study (the RDB is the source of truth: it outlives drivers, holds the
trials of a resumed search and is what ``optuna-dashboard`` shows). Per-trial extras that Optuna does not
optimise are user attributes recorded by the search's searcher: ``epochs`` trained, the last ``val_*`` metrics,
the final ``test_*`` metrics, the trial's ``run_dir`` and, with ``--data``, its ``data_uri`` and ``labels_uri``.

The configuration is **chosen on the validation metric only**, among the COMPLETE trials (those that trained all
their epochs); test metrics are printed next to it and never compared. Trials that ASHA stopped early are PRUNED
in the study, with the validation value of their last validated epoch: they are listed and plotted, never chosen.

``python -m rayjobs.report WHERE`` rebuilds the report of the search recorded at ``WHERE``: its ``--out`` folder,
or the record URL in object storage (``s3://.../<study>``), where the report is written back.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twohead import atomic

if TYPE_CHECKING:  # optuna is imported lazily: `import rayjobs.report` stays cheap
    import optuna
    from optuna.trial import FrozenTrial

    from rayjobs.search_space import SearchSpec

__all__ = [
    "Report",
    "dashboard_command",
    "main",
    "retrain_command",
    "select_best",
    "trial_rows",
    "write_report",
    "write_retrain_report",
]

REPORT_DIR = "report"
TEST_KEYS = ("test_top1", "test_many", "test_medium", "test_few")
VAL_KEYS = ("val_top1", "val_many", "val_medium", "val_few")


@dataclass
class Report:
    """What :func:`write_report` wrote, and the best trial it found."""

    folder: Path
    markdown: Path
    text: str
    best: dict[str, Any] | None
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # plot -> why it was not drawn


def dashboard_command(storage_url: str) -> str:
    """The shell command that serves the study live (optuna-dashboard takes the storage URL; ``env:NAME`` is
    passed as ``"$NAME"`` so the password stays in the environment)."""
    import shlex

    if storage_url.startswith("env:"):
        return f'optuna-dashboard "${storage_url[4:]}"'
    return f"optuna-dashboard {shlex.quote(storage_url)}"


# ------------------------------------------------------------------------------------------------ trials
def _complete(study: optuna.Study) -> list[FrozenTrial]:
    from optuna.trial import TrialState

    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]


def select_best(study: optuna.Study, spec: SearchSpec) -> tuple[FrozenTrial | None, str]:
    """The best COMPLETE trial by the validation metric, and a sentence saying which trials it was chosen among."""
    done = _complete(study)
    if not done:
        return None, "no trial trained all its epochs"
    pick = max if spec.mode == "max" else min
    return pick(done, key=lambda t: t.value), f"among the {len(done)} trials that trained all their epochs"


def trial_rows(study: optuna.Study, spec: SearchSpec) -> list[dict[str, Any]]:
    """One plain dict per trial (number, state, metric value, params, epochs, val/test metrics, run folder)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, spec.metric: t.value}
        for p in spec.params:
            row[p.name] = t.params.get(p.name)
        row["epochs"] = t.user_attrs.get("epochs")
        for k in VAL_KEYS + TEST_KEYS:
            if k != spec.metric:
                row[k] = t.user_attrs.get(k)
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else None
        row["run_dir"] = t.user_attrs.get("run_dir")
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    return str(v).replace("|", "\\|")


def _md_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- files
def _atomic_text(path: Path, text: str) -> Path:
    return atomic.write_text(path, text)


def _save_axes(ax: Any, path: Path) -> Path:
    """Save the figure of an Optuna matplotlib plot atomically and release it (pyplot keeps figures alive)."""
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    try:
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def _plots(
    study: optuna.Study, spec: SearchSpec, folder: Path, best_pool: list[FrozenTrial]
) -> tuple[list[Path], dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless driver; a no-op when the backend is already Agg
    from optuna.visualization import matplotlib as ovm

    files: list[Path] = []
    skipped: dict[str, str] = {}
    done = _complete(study)
    # Optuna's plots switch pyplot to its "ggplot" style globally and warn (experimental API, equal
    # importances on tiny studies): keep both local to these two figures.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")
        if done:
            try:
                files.append(
                    _save_axes(ovm.plot_optimization_history(study, target_name=spec.metric), folder / "optimization_history.png")
                )
            except Exception as exc:  # noqa: BLE001 - one failed plot must not lose the report
                skipped["optimization_history.png"] = f"{type(exc).__name__}: {exc}"
        else:
            skipped["optimization_history.png"] = "no completed trial"
        if len(done) >= 2:
            try:
                files.append(
                    _save_axes(ovm.plot_param_importances(study, target_name=spec.metric), folder / "param_importances.png")
                )
            except Exception as exc:  # noqa: BLE001 - e.g. every trial has the same parameters
                skipped["param_importances.png"] = f"{type(exc).__name__}: {exc}"
        else:
            skipped["param_importances.png"] = f"needs >= 2 completed trials, have {len(done)}"

    # Paper Fig. 4 (left): accuracy vs u, on the validation metric of the same trials the best was chosen among.
    pairs = [(t.params["u"], t.value) for t in best_pool if "u" in t.params]
    if pairs:
        from twohead.plots import plot_u_sensitivity

        try:
            files.append(
                plot_u_sensitivity(
                    pairs, folder / "u_sensitivity.png", title=f"{spec.study_name}: {spec.metric} vs u ({len(pairs)} trials)"
                )
            )
        except Exception as exc:  # noqa: BLE001
            skipped["u_sensitivity.png"] = f"{type(exc).__name__}: {exc}"
    else:
        skipped["u_sensitivity.png"] = "u is not searched" if all(p.name != "u" for p in spec.params) else "no completed trial"
    return files, skipped


def write_report(
    study: optuna.Study,
    spec: SearchSpec,
    out_dir: str | Path,
    *,
    storage_display: str,
    retrain_command: str,
    extra_lines: Sequence[str] = (),
    shown_folder: str | None = None,
) -> Report:
    """Write ``out_dir/report/`` (report.md, trials.csv, best.json, best_config.yaml, PNG plots).

    ``shown_folder``: where the report is published (named in its text), when not ``out_dir/report``."""
    from optuna.trial import TrialState

    folder = Path(out_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    shown = shown_folder or str(folder)
    best, note = select_best(study, spec)
    pool = _complete(study)
    files, skipped = _plots(study, spec, folder, pool)

    rows = trial_rows(study, spec)
    df = study.trials_dataframe()
    files.append(folder / "trials.csv")
    _atomic_text(folder / "trials.csv", df.to_csv(index=False))

    counts = {s.name: 0 for s in TrialState}
    for r in rows:
        counts[r["state"]] += 1
    lines = [
        f"# Search report: {spec.study_name}",
        "",
        f"- search space: `{spec.source}`; base: {spec.base.data.dataset} (imbalance {spec.base.data.imbalance:g}), "
        f"{spec.base.model.backbone}, method {spec.base.method.name}, {spec.base.optim.epochs} epochs",
        f"- objective: **{spec.metric}** ({spec.mode}), TPE seed {spec.search.seed}"
        + (
            f", ASHA (grace {spec.search.asha.grace_period}, reduction {spec.search.asha.reduction_factor:g}) on epochs"
            if spec.search.asha
            else ""
        ),
        f"- trials: {len(rows)} ({', '.join(f'{n} {k.lower()}' for k, n in counts.items() if n)})",
        f"- study: `{storage_display}` (study name `{spec.study_name}`)",
        *[f"- {line}" for line in extra_lines],
        "",
        "## Best configuration",
        "",
    ]
    best_info: dict[str, Any] | None = None
    if best is None:
        lines += [
            "No trial trained all its epochs yet: nothing to choose (pruned, failed or unfinished trials are listed below).",
            "",
        ]
    else:
        overrides = spec.overrides(best.params)
        best_info = {
            "trial": best.number,
            "metric": spec.metric,
            "mode": spec.mode,
            "value": best.value,
            "params": dict(best.params),
            "overrides": overrides,
            "epochs": best.user_attrs.get("epochs"),
            "val": {k: best.user_attrs.get(k) for k in VAL_KEYS},
            "test": {k: best.user_attrs.get(k) for k in TEST_KEYS},
            "run_dir": best.user_attrs.get("run_dir"),
            "chosen": note,
        }
        cfg = spec.trial_config(best.params)
        files.append(_atomic_text(folder / "best_config.yaml", cfg.to_yaml()))
        files.append(_atomic_text(folder / "best.json", json.dumps(best_info, indent=1)))
        test = {k: v for k, v in best_info["test"].items() if v is not None}
        lines += [
            f"Trial {best.number}, chosen on **{spec.metric} = {best.value:.2f}** {note}.",
            "",
            "| parameter | config key | value |",
            "|---|---|---|",
            *[f"| {p.name} | {p.key} | {_fmt(best.params[p.name])} |" for p in spec.params if p.name in best.params],
            "",
            "Validation (last epoch): " + ", ".join(f"{k}={_fmt(v)}" for k, v in best_info["val"].items() if v is not None),
            "",
            ("Test (reported, never used for the choice): " + ", ".join(f"{k}={_fmt(v)}" for k, v in test.items()))
            if test
            else "Test: not reported (the trial did not reach its last epoch).",
            "",
            f"Full config: `{shown}/best_config.yaml`"
            + (f"; run folder: `{best_info['run_dir']}`" if best_info["run_dir"] else ""),
            "",
            "Retrain it on several seeds (mean +- std of the validation and test metrics):",
            "",
            "```bash",
            retrain_command,
            "```",
            "",
        ]
    lines += [
        "## All trials",
        "",
        f"CSV: `{shown}/trials.csv`",
        "",
        _md_table(rows, [c for c in rows[0] if c != "run_dir"]) if rows else "(none)",
        "",
    ]
    lines += ["## Plots", ""]
    lines += [f"![{f.stem}]({f.name})" for f in files if f.suffix == ".png"]
    lines += [f"- {name}: not drawn ({why})" for name, why in skipped.items()]
    lines += ["", "## Live dashboard", "", "```bash", dashboard_command(storage_display), "```", ""]
    text = "\n".join(lines)
    md = _atomic_text(folder / "report.md", text)
    return Report(folder=folder, markdown=md, text=text, best=best_info, files=[md, *files], skipped=skipped)


def write_retrain_report(
    out_dir: str | Path, spec: SearchSpec, best: dict[str, Any], runs: list[dict[str, Any]]
) -> tuple[Path, str]:
    """``report/retrain.md`` + ``retrain.json``: per-seed metrics of the best config and their mean +- std."""
    import numpy as np

    folder = Path(out_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    keys = [k for k in VAL_KEYS + TEST_KEYS if any(r.get(k) is not None for r in runs)]
    summary: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = np.array([r[k] for r in runs if r.get(k) is not None], dtype=np.float64)
        # sample std (ddof=1) over seeds, as papers report mean +- std; 0 for a single seed
        summary[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n": int(len(vals))}
    payload = {"trial": best.get("trial"), "params": best.get("params"), "runs": runs, "summary": summary}
    _atomic_text(folder / "retrain.json", json.dumps(payload, indent=1))
    lines = [
        f"# Best config of {spec.study_name}, retrained on {len(runs)} seeds",
        "",
        f"Search trial {best.get('trial')}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in (best.get("params") or {}).items()),
        "",
        _md_table(runs, ["seed", "state", "epochs", *keys]),
        "",
        "| metric | mean +- std |",
        "|---|---|",
        *[f"| {k} | {v['mean']:.2f} +- {v['std']:.2f} (n={v['n']}) |" for k, v in summary.items()],
        "",
    ]
    text = "\n".join(lines)
    _atomic_text(folder / "retrain.md", text)
    return folder / "retrain.md", text


def retrain_command(where: str | Path, storage_ref: str | None = None, seeds: int = 3) -> str:
    """The command that retrains the best config of a search on several seeds (mean +- std)."""
    import shlex

    cmd = f"python -m rayjobs.search --retrain-best {shlex.quote(str(where))} --seeds {seeds}"
    if storage_ref and not storage_ref.startswith("sqlite:"):
        cmd += f" --storage {shlex.quote(storage_ref)}"
    return cmd


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rayjobs.report WHERE [--storage URL] [--out DIR]``: rebuild the report of the search recorded at
    WHERE (a search folder, or the record URL in object storage, where the report is written back; no Ray)."""
    from rayjobs import storage as store
    from rayjobs.study import SearchError, load_record, open_study, record_storage

    ap = argparse.ArgumentParser(prog="python -m rayjobs.report", description=main.__doc__)
    ap.add_argument("where", help="search folder (--out of the search) or its record URL (s3://bucket/prefix/<study>)")
    ap.add_argument("--storage", default=None, help="Optuna storage URL or env:NAME (default: the one the search recorded)")
    ap.add_argument("--out", type=Path, default=None, help="local folder for the report (default: WHERE when it is local)")
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    remote = store._is_object_store(args.where)
    local = None if remote else Path(args.where)
    try:
        record = load_record(args.where)
        ss = record_storage(record, args.storage, args.out if remote else local)
        study = open_study(ss.url, record.spec, create=False)
    except (SearchError, store.StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or local or Path(tempfile.mkdtemp(prefix="twohead-report-"))
    root = record.root if remote else str(out)
    rep = write_report(
        study,
        record.spec,
        out,
        storage_display=ss.display,
        retrain_command=retrain_command(args.where, None if ss.ref == "default" else ss.ref),
        shown_folder=store.join(root, REPORT_DIR),
    )
    if remote:
        store.upload_dir(rep.folder, store.join(record.root, REPORT_DIR), last="report.md")
    print(rep.text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
