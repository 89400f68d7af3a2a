"""The study of a search and the report it leaves behind: best config, all trials (Markdown + CSV), plots.

Everything is read back from the Optuna study (the RDB is the source of truth: it outlives drivers, holds the
trials of a resumed search and is what ``optuna-dashboard`` shows). Per-trial extras that Optuna does not
optimise are user attributes recorded by the search driver: ``epochs`` trained, the last ``val_*`` metrics,
the final ``test_*`` metrics and the trial's ``run_dir``.

The configuration is **chosen on the validation metric only**; test metrics are printed next to it and never
compared. Trials that ASHA stopped early appear in Optuna as COMPLETE with the validation value of their last
epoch (notes/ray-2.60.md), which is not comparable to a fully trained trial's: the best is therefore picked
among trials that trained every epoch, and only when none did, among all completed ones.

The study side lives here too, so that it can be used without Ray: opening the storage (an ``RDBStorage``:
SQLite file by default, PostgreSQL on clusters) with a clear error when it cannot be opened, refusing a study of
the other direction before any trial, and the search record in the results folder (``search_space.yaml``,
``search.json``) that makes a re-run a resume and lets ``--retrain-best`` find the search.

Ray-free (Optuna, pandas, matplotlib): ``python -m rayjobs.report DIR`` rebuilds a report from a search folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # optuna is imported lazily: `import rayjobs.report` stays cheap
    import optuna
    from optuna.trial import FrozenTrial

    from rayjobs.search_space import SearchSpec

__all__ = [
    "Report",
    "SearchError",
    "select_best",
    "trial_rows",
    "write_report",
    "write_retrain_report",
    "dashboard_command",
    "default_storage_url",
    "display_url",
    "open_storage",
    "open_study",
    "save_search_folder",
    "load_search_folder",
    "retrain_command",
    "main",
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
    """The shell command that serves the study live (optuna-dashboard takes the storage URL)."""
    import shlex

    return f"optuna-dashboard {shlex.quote(storage_url)}"


# ------------------------------------------------------------------------------------------------ trials
def _complete(study: optuna.Study) -> list[FrozenTrial]:
    from optuna.trial import TrialState

    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]


def _fully_trained(trials: Sequence[FrozenTrial], max_epochs: int) -> list[FrozenTrial]:
    return [t for t in trials if int(t.user_attrs.get("epochs", -1)) >= max_epochs]


def select_best(study: optuna.Study, spec: SearchSpec) -> tuple[FrozenTrial | None, str]:
    """The best trial by the validation metric, and a sentence saying which trials it was chosen among."""
    done = _complete(study)
    if not done:
        return None, "no trial completed"
    full = _fully_trained(done, spec.max_epochs)
    pool, note = (
        (full, f"among the {len(full)} trials that trained all {spec.max_epochs} epochs")
        if full
        else (
            done,
            f"among all {len(done)} completed trials (none trained all {spec.max_epochs} epochs; ASHA stopped them early)",
        )
    )
    pick = max if spec.mode == "max" else min
    return pick(pool, key=lambda t: t.value), note


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
def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_text(path: Path, text: str) -> Path:
    """Write to a temp name in the same folder, then rename: a crash never leaves a truncated file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _save_axes(ax: Any, path: Path) -> Path:
    """Save the figure of an Optuna matplotlib plot atomically and release it (pyplot keeps figures alive)."""
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
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
) -> Report:
    """Write ``out_dir/report/`` (report.md, trials.csv, best.json, best_config.yaml, PNG plots)."""
    from optuna.trial import TrialState

    folder = Path(out_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    best, note = select_best(study, spec)
    done = _complete(study)
    pool = _fully_trained(done, spec.max_epochs) or done
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
        lines += ["No trial completed: nothing to report (see the trial errors in the Tune experiment folder).", ""]
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
            f"Full config: `{folder / 'best_config.yaml'}`"
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
        f"CSV: `{folder / 'trials.csv'}`",
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


# ------------------------------------------------------------------------------------ study and storage
class SearchError(RuntimeError):
    """The study storage cannot be used as asked (unreachable URL, conflicting study, different search)."""


SPACE_FILE = "search_space.yaml"  # the resolved search space, in the YAML form load_search_space reads
META_FILE = "search.json"  # storage URL (password hidden), experiment path


def default_storage_url(out_dir: str | Path, study_name: str) -> str:
    """Embedded default: a SQLite file in the results folder (``sqlite:////abs/out/<study>.db``)."""
    return f"sqlite:///{(Path(out_dir) / f'{study_name}.db').resolve()}"


def display_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print and to write into the results folder)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: the error is reported when it is opened
        return url


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    import optuna

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:  # noqa: BLE001
            # Two processes creating the schema of a new database at once (a driver and a dashboard, two
            # drivers): one of them sees "table ... already exists". The schema is there now: try again.
            if "already exists" in str(exc) and attempt < 2:
                time.sleep(0.5)
                continue
            raise
    raise AssertionError("unreachable")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An ``RDBStorage`` (an object, not a URL string: Ray's OptunaSearch requires it), or SearchError."""
    shown = display_url(url)
    try:
        return _rdb_storage(url)
    except ModuleNotFoundError as exc:
        raise SearchError(
            f"cannot open Optuna storage {shown}: its database driver {exc.name!r} is not installed "
            "(PostgreSQL: pip install psycopg2-binary)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types; all mean "cannot open"
        raise SearchError(f"cannot open Optuna storage {shown}: {type(exc).__name__}: {exc}".strip()) from exc


def open_study(url: str, spec: SearchSpec, *, create: bool = True, storage: Any = None) -> optuna.Study:
    """Load or create the study named ``spec.study_name``; refuse one made for another direction or metric.

    The check runs before any trial: Optuna's ``load_if_exists`` would otherwise silently reuse a study whose
    direction is the opposite of ``spec.mode`` and mix the two searches.
    """
    import optuna
    from optuna.study import StudyDirection

    storage = storage or open_storage(url)
    want = StudyDirection.MAXIMIZE if spec.mode == "max" else StudyDirection.MINIMIZE
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as exc:  # noqa: BLE001
        raise SearchError(f"cannot read studies from {display_url(url)}: {type(exc).__name__}: {exc}") from exc
    found = existing.get(spec.study_name)
    if found is not None:
        if list(found.directions) != [want]:
            have = "/".join(d.name.lower() for d in found.directions)
            raise SearchError(
                f"study {spec.study_name!r} in {display_url(url)} exists with direction {have}, but this search is "
                f"mode={spec.mode} ({want.name.lower()}); use another --study-name or storage"
            )
        metric = found.user_attrs.get("metric")
        if metric is not None and metric != spec.metric:
            raise SearchError(
                f"study {spec.study_name!r} in {display_url(url)} optimises {metric!r}, this search {spec.metric!r}; "
                "use another --study-name or storage"
            )
    elif not create:
        raise SearchError(f"study {spec.study_name!r} not found in {display_url(url)}; it holds {sorted(existing) or 'no study'}")
    study = optuna.create_study(storage=storage, study_name=spec.study_name, direction=want.name.lower(), load_if_exists=True)
    if found is None:
        study.set_user_attr("metric", spec.metric)
    return study


def space_dict(spec: SearchSpec) -> dict[str, Any]:
    """The spec in the YAML form :func:`rayjobs.search_space.load_search_space` reads, base fully resolved."""
    d = spec.to_dict()
    flat = {f"{section}.{k}": v for section, values in d["base"].items() for k, v in values.items()}
    return {
        "study_name": d["study_name"],
        "base": {"set": flat},
        "metric": d["metric"],
        "mode": d["mode"],
        "params": d["params"],
        "search": d["search"],
        "resources": d["resources"],
    }


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_search_folder(out_dir: Path, spec: SearchSpec, storage_url: str, experiment: str) -> None:
    """Record the search in ``out_dir`` (first run), or check that a re-run is the same search (resume).

    Resources may change between runs (they only affect scheduling); anything else that differs would mix two
    searches in one study and one Tune experiment, so it is refused with the differing keys.
    """
    import yaml

    from rayjobs.search_space import load_search_space

    out_dir.mkdir(parents=True, exist_ok=True)
    new = space_dict(spec)
    path = out_dir / SPACE_FILE
    if path.is_file():
        old = _flatten(space_dict(load_search_space(path)))
        cur = _flatten(new)
        diff = [k for k in sorted(set(old) | set(cur)) if not k.startswith("resources.") and old.get(k) != cur.get(k)]
        if diff:
            detail = "; ".join(f"{k.replace('base.set.', 'base ')}: {old.get(k)!r} -> {cur.get(k)!r}" for k in diff)
            raise SearchError(
                f"{out_dir} holds a different search ({path}); a resumed search must use the same space and options "
                f"(only resources may change). Differences: {detail}. Use another --out for a new search."
            )
    else:
        _atomic_text(path, yaml.safe_dump(new, sort_keys=False))
    meta_path = out_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("storage") not in (None, display_url(storage_url)):
        raise SearchError(
            f"{out_dir} was searched with storage {meta['storage']}, now {display_url(storage_url)}; pass the same --storage to resume"
        )
    meta.update(storage=display_url(storage_url), study_name=spec.study_name, experiment=experiment)
    _atomic_text(meta_path, json.dumps(meta, indent=1))


def load_search_folder(out_dir: Path, storage_url: str | None = None) -> tuple[SearchSpec, str, str]:
    """(spec, storage URL, URL for display) of a finished or running search folder."""
    from rayjobs.search_space import load_search_space

    path = out_dir / SPACE_FILE
    if not path.is_file():
        raise SearchError(
            f"{out_dir} is not a search folder: {path} is missing (run python -m rayjobs.search --out {out_dir} first)"
        )
    spec = load_search_space(path)
    meta = json.loads((out_dir / META_FILE).read_text()) if (out_dir / META_FILE).is_file() else {}
    url = storage_url or meta.get("storage") or default_storage_url(out_dir, spec.study_name)
    if "***" in url:
        raise SearchError(f"the storage of {out_dir} has a password ({url}); pass the full URL with --storage")
    return spec, url, display_url(url)


def retrain_command(out_dir: Path, storage_url: str | None = None, seeds: int = 3) -> str:
    """The command that retrains the best config of a search on several seeds (mean +- std)."""
    import shlex

    cmd = f"python -m rayjobs.search --retrain-best {shlex.quote(str(out_dir))} --seeds {seeds}"
    if storage_url and not storage_url.startswith("sqlite:"):
        cmd += f" --storage {shlex.quote(display_url(storage_url))}"
    return cmd


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rayjobs.report DIR [--storage URL]``: rebuild DIR/report from the study (no Ray needed)."""
    ap = argparse.ArgumentParser(prog="python -m rayjobs.report", description=main.__doc__)
    ap.add_argument("out", type=Path, help="search folder (holds search_space.yaml)")
    ap.add_argument("--storage", default=None, help="Optuna storage URL (default: the one the search recorded)")
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        spec, url, shown = load_search_folder(args.out, args.storage)
        study = open_study(url, spec, create=False)
    except (SearchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rep = write_report(study, spec, args.out, storage_display=shown, retrain_command=retrain_command(args.out, args.storage))
    print(rep.text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
