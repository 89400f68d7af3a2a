"""The report a search leaves behind: best config, Pareto front, post-hoc choice, all trials (Markdown + CSV),
plots (Ray-free).

Everything is read back from the Optuna study (the RDB is the source of truth: it outlives drivers, holds the
trials of a resumed search and is what ``optuna-dashboard`` shows). Per-trial extras that Optuna does not
optimise are user attributes recorded by the search's searcher: ``epochs`` trained, the last ``val_*`` metrics,
the final ``test_*`` metrics, the trial's ``run_dir`` and, with ``--data``, its ``data_uri`` and ``labels_uri``.

The configuration is **chosen on validation only**, among the COMPLETE trials (those that trained all their
epochs): the best value of the one objective, or for a Pareto search the knee of the front (:mod:`rayjobs.search.pareto`:
also the best trial per objective, and the space's reference configuration marked); test metrics are printed next
to it and never compared. Values are those of each trial's chosen reading / post-hoc variant; the report says
which variants won. Trials that ASHA stopped early are PRUNED in the study: listed and plotted, never chosen.

``python -m rayjobs.report WHERE`` rebuilds the report of the search recorded at ``WHERE``: its ``--out`` folder,
or the record URL in object storage (``s3://.../<study>``), where the report is written back.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayjobs.search import pareto
from rayjobs.search.objectives import CHOICE_KEY, CHOSEN_PREFIX, describe_variant
from rayjobs.search.report_plots import draw_plots
from twohead import atomic

if TYPE_CHECKING:  # optuna is imported lazily: `import rayjobs.report` stays cheap
    import optuna
    from optuna.trial import FrozenTrial

    from rayjobs.search.space import SearchSpec

__all__ = [
    "Report",
    "dashboard_command",
    "main",
    "retrain_command",
    "select_best",
    "trial_rows",
    "write_report",
]

REPORT_DIR = "report"
TEST_KEYS = ("test_top1", "test_many", "test_medium", "test_few", "test_worst_class")
VAL_KEYS = ("val_top1", "val_many", "val_medium", "val_few", "val_worst_class")


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
def select_best(study: optuna.Study, spec: SearchSpec) -> tuple[FrozenTrial | None, str]:
    """The configuration to retrain, and a sentence saying how it was chosen: the best COMPLETE trial by the
    validation objective, or for a Pareto search the knee of the front (:mod:`rayjobs.search.pareto`)."""
    done = pareto.complete(study.get_trials(deepcopy=False))
    if not done:
        return None, "no trial trained all its epochs"
    if spec.multi:
        pts = pareto.front(study)
        return pareto.knee(pts, spec.objectives), (
            f"as the knee of the Pareto front ({len(pts)} of the {len(done)} trials that trained all their epochs)"
        )
    pick = max if spec.mode == "max" else min
    return pick(done, key=lambda t: t.value), f"among the {len(done)} trials that trained all their epochs"


def trial_rows(study: optuna.Study, spec: SearchSpec) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state, objective values (of the chosen variant: the study's values), the
    chosen variant, params, epochs, the raw val / test metrics of the configured reading, run folder."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i, m in enumerate(spec.metrics):
            row[m] = t.values[i] if t.values is not None and len(t.values) == len(spec.metrics) else None
        row["chosen variant"] = t.user_attrs.get(CHOICE_KEY)
        for p in spec.params:
            row[p.name] = t.params.get(p.name)
        row["epochs"] = t.user_attrs.get("epochs")
        for k in VAL_KEYS:
            row[f"raw {k}"] = t.user_attrs.get(k)
        for k in TEST_KEYS:
            row[k] = t.user_attrs.get(k)
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else None
        row["run_dir"] = t.user_attrs.get("run_dir")
        rows.append(row)
    return rows


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    return str(v).replace("|", "\\|")


def md_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate([[fmt(r.get(c)) for c in columns] for r in rows], headers=list(columns), tablefmt="github")


def _atomic_text(path: Path, text: str) -> Path:
    return atomic.write_text(path, text)


def _objective_line(spec: SearchSpec) -> str:
    objs = ", ".join(f"**{o.metric}** ({o.mode})" for o in spec.objectives)
    a = spec.search.asha
    return (
        f"- objective{'s (Pareto search)' if spec.multi else ''}: {objs}, TPE seed {spec.search.seed}"
        + (
            f", ASHA (grace {a.grace_period}, reduction {a.reduction_factor:g}) on epochs"
            + (", comparing the mean of the objectives" if spec.multi else "")
            if a
            else ""
        )
        + (
            "; each trial's K-to-C reading / post-hoc correction chosen on validation"
            if spec.posthoc
            else "; the configured reading only"
        )
    )


def _pareto_section(study: optuna.Study, spec: SearchSpec, folder: Path, shown: str, files: list[Path]) -> list[str]:
    """The Pareto front as a table and ``pareto_front.csv``, with the picks (knee, best per objective, reference)."""
    rows = pareto.front_rows(study, spec)
    if not rows:
        return ["## Pareto front", "", "No trial trained all its epochs yet.", ""]
    import pandas as pd

    files.append(_atomic_text(folder / "pareto_front.csv", pd.DataFrame(rows).to_csv(index=False)))
    lines = [
        "## Pareto front",
        "",
        f"{len(rows)} Pareto-optimal trial(s): no other finished trial is better on every objective. Objective values are "
        "those of each trial's chosen variant; `raw` is the configured reading. The knee is where the front bends most "
        "(objectives scaled to [0, 1] over the front, largest sum); it is what `best.json` and `--retrain-best` use. "
        f"CSV: `{shown}/pareto_front.csv`",
        "",
        md_table(rows, list(rows[0])),
        "",
    ]
    trials = study.get_trials(deepcopy=False)
    ref = pareto.reference_trial(trials)
    if ref is not None:
        where = "on the front" if any(r["trial"] == ref.number for r in rows) else "dominated"
        vals = ", ".join(f"{m}={fmt(v)}" for m, v in zip(spec.metrics, ref.values or ())) or ref.state.name.lower()
        lines += [f"Reference {ref.user_attrs['reference']}: trial {ref.number} ({vals}; {where}).", ""]
    return lines


def _posthoc_section(study: optuna.Study, spec: SearchSpec, best: FrozenTrial | None) -> list[str]:
    """Which reading / post-hoc variant the trials chose on validation, and the winner's."""
    if not spec.posthoc:
        return []
    done = pareto.complete(study.get_trials(deepcopy=False))
    tally = pareto.posthoc_tally(done)
    if not tally:
        return []
    default = spec.base.model.inference
    lines = ["## Post-hoc choice", ""]
    if best is not None and best.user_attrs.get(CHOICE_KEY):
        lines.append(
            f"The chosen configuration (trial {best.number}) is read with **{describe_variant(best.user_attrs[CHOICE_KEY], default)}**."
        )
    lines += [
        "Chosen on validation by the trials that trained all their epochs: "
        + ", ".join(f"{describe_variant(v, default)} x{n}" for v, n in tally)
        + ".",
        "",
    ]
    return lines


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
    """Write ``out_dir/report/`` (report.md, trials.csv, best.json, best_config.yaml, PNG plots; for a Pareto search
    pareto_front.csv and the front / per-class plots).

    ``shown_folder``: where the report is published (named in its text), when not ``out_dir/report``."""
    from optuna.trial import TrialState

    folder = Path(out_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    shown = shown_folder or str(folder)
    best, note = select_best(study, spec)
    files, skipped = draw_plots(study, spec, folder)

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
        _objective_line(spec),
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
        values = dict(zip(spec.metrics, best.values))
        best_info = {
            "trial": best.number,
            "metric": spec.metric,
            "mode": spec.mode,
            "value": best.values[0],
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in spec.objectives],
            "values": values,
            "chosen_variant": best.user_attrs.get(CHOICE_KEY),
            "params": dict(best.params),
            "overrides": spec.overrides(best.params),
            "epochs": best.user_attrs.get("epochs"),
            "val": {k: best.user_attrs.get(k) for k in VAL_KEYS},
            "test": {k: best.user_attrs.get(k) for k in TEST_KEYS},
            "test_chosen_variant": {
                k[len(CHOSEN_PREFIX) :]: v for k, v in best.user_attrs.items() if k.startswith(CHOSEN_PREFIX + "test_")
            },
            "run_dir": best.user_attrs.get("run_dir"),
            "chosen": note,
        }
        cfg = spec.trial_config(best.params)
        files.append(_atomic_text(folder / "best_config.yaml", cfg.to_yaml()))
        files.append(_atomic_text(folder / "best.json", json.dumps(best_info, indent=1)))
        test = {k: v for k, v in best_info["test"].items() if v is not None}
        test_chosen = {
            k: best_info["test_chosen_variant"][k] for k in TEST_KEYS if best_info["test_chosen_variant"].get(k) is not None
        }
        chosen_on = " and ".join(f"{m} = {v:.2f}" for m, v in values.items())
        variant = best_info["chosen_variant"]
        lines += [
            f"Trial {best.number}, chosen on **{chosen_on}** {note}"
            + (f", read with {describe_variant(variant, cfg.model.inference)}" if variant else "")
            + ".",
            "",
            md_table(
                [
                    {"parameter": p.name, "config key": p.key, "value": best.params[p.name]}
                    for p in spec.params
                    if p.name in best.params
                ],
                ["parameter", "config key", "value"],
            ),
            "",
            "Validation (last epoch, configured reading): "
            + ", ".join(f"{k}={fmt(v)}" for k, v in best_info["val"].items() if v is not None),
            "",
            (
                "Test (reported, never used for the choice): "
                + ", ".join(f"{k}={fmt(v)}" for k, v in test.items())
                + (f"; read with {variant}: " + ", ".join(f"{k}={fmt(v)}" for k, v in test_chosen.items()) if test_chosen else "")
            )
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
    if spec.multi:
        lines += _pareto_section(study, spec, folder, shown, files)
    lines += _posthoc_section(study, spec, best)
    lines += [
        "## All trials",
        "",
        f"CSV: `{shown}/trials.csv`",
        "",
        md_table(rows, [c for c in rows[0] if c != "run_dir"]) if rows else "(none)",
        "",
    ]
    lines += ["## Plots", ""]
    lines += [f"![{f.stem}]({f.name})" for f in files if f.suffix == ".png"]
    lines += [f"- {name}: not drawn ({why})" for name, why in skipped.items()]
    lines += ["", "## Live dashboard", "", "```bash", dashboard_command(storage_display), "```", ""]
    text = "\n".join(lines)
    md = _atomic_text(folder / "report.md", text)
    return Report(folder=folder, markdown=md, text=text, best=best_info, files=[md, *files], skipped=skipped)


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
    from rayjobs.data import storage as store
    from rayjobs.search.study import SearchError, load_record, open_study, record_storage

    ap = argparse.ArgumentParser(prog="python -m rayjobs.report", description=main.__doc__)
    ap.add_argument("where", help="search folder (--out of the search) or its record URL (s3://bucket/prefix/<study>)")
    ap.add_argument("--storage", default=None, help="Optuna storage URL or env:NAME (default: the one the search recorded)")
    ap.add_argument("--out", type=Path, default=None, help="local folder for the report (default: WHERE when it is local)")
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    remote = store.is_object_store(args.where)
    local = None if remote else Path(args.where)
    try:
        record = load_record(args.where)
        ss = record_storage(record, args.storage, args.out if remote else local)
        study = open_study(ss.url, record.spec, create=False)
    except (SearchError, store.StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from twohead.folders import OutputFolderError, check_writable

    try:
        if args.out is not None:
            check_writable(args.out, "--out")
        elif local is not None:
            check_writable(local, "the search folder (give --out for the report)")
    except OutputFolderError as exc:
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
