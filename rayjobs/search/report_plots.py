"""The figures of a search report (Ray-free): Optuna's history and importances, accuracy vs u (paper Fig. 4 left),
and for a Pareto search the front and the per-class accuracy against class frequency.

Every figure is optional: one that cannot be drawn (too few trials, one objective) is listed with the reason,
and a failed plot never loses the report. Files are written atomically.

- ``pareto_front.png``: every trial that trained all its epochs on the first two objectives (grey), the
  Pareto-optimal ones (blue, joined in order of the first objective), the knee point (red diamond), the best trial
  of each objective (labelled) and the space's reference configuration (black star, e.g. the paper's).
- ``per_class_vs_frequency.png``: for the Pareto-optimal trials (at most :data:`MAX_CURVES`: the knee, the best per
  objective, then by trial number) and the reference, the validation recall of each class (under the trial's
  chosen variant) against its number of training images, log scale: where the head and the tail classes land.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from rayjobs.search import pareto
from rayjobs.search.objectives import CHOICE_KEY, scalarise
from twohead import atomic

__all__ = ["MAX_CURVES", "draw_plots"]

MAX_CURVES = 8  # per-class curves beyond this many overlap into noise
SIZE = (7.0, 4.5)


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # per-figure canvas: no pyplot state, no global backend switch
    return fig


def _save(fig: Any, path: Path) -> Path:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return path


def _save_axes(ax: Any, path: Path) -> Path:
    """Save the figure of an Optuna matplotlib plot atomically and release it (pyplot keeps figures alive)."""
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(*SIZE)
    fig.tight_layout()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def _try(files: list[Path], skipped: dict[str, str], name: str, draw: Any) -> None:
    try:
        files.append(draw())
    except Exception as exc:  # noqa: BLE001 - one failed plot must not lose the report
        skipped[name] = f"{type(exc).__name__}: {exc}"


def draw_plots(study: Any, spec: Any, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Draw the report's figures into ``folder``; returns (files written, {figure: why it was not drawn})."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless driver; a no-op when the backend is already Agg
    from optuna.visualization import matplotlib as ovm

    files: list[Path] = []
    skipped: dict[str, str] = {}
    done = pareto.complete(study.get_trials(deepcopy=False))
    objs = list(spec.objectives)
    # A Pareto study's history and importances follow the search score (the scalarised objectives).
    target = None if not spec.multi else (lambda t: scalarise(dict(zip(spec.metrics, t.values)), objs))
    name = spec.metric if not spec.multi else "search score (mean of the objectives)"
    # Optuna's plots switch pyplot to its "ggplot" style globally and warn (experimental API, equal
    # importances on tiny studies): keep both local to these figures.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")
        if done:
            _try(
                files,
                skipped,
                "optimization_history.png",
                lambda: _save_axes(
                    ovm.plot_optimization_history(study, target=target, target_name=name), folder / "optimization_history.png"
                ),
            )
        else:
            skipped["optimization_history.png"] = "no completed trial"
        if len(done) >= 2:
            _try(
                files,
                skipped,
                "param_importances.png",
                lambda: _save_axes(
                    ovm.plot_param_importances(study, target=target, target_name=name), folder / "param_importances.png"
                ),
            )
        else:
            skipped["param_importances.png"] = f"needs >= 2 completed trials, have {len(done)}"

    # Paper Fig. 4 (left): the first objective vs u, over the trials that trained all their epochs.
    pairs = [(t.params["u"], t.values[0]) for t in done if "u" in t.params]
    if pairs:
        from twohead.plots import plot_u_sensitivity

        title = f"{spec.study_name}: {spec.metric} vs u ({len(pairs)} trials)"
        _try(files, skipped, "u_sensitivity.png", lambda: plot_u_sensitivity(pairs, folder / "u_sensitivity.png", title=title))
    else:
        skipped["u_sensitivity.png"] = "u is not searched" if all(p.name != "u" for p in spec.params) else "no completed trial"

    if not spec.multi:
        return files, skipped
    pts = pareto.front(study)
    if not pts:
        skipped["pareto_front.png"] = skipped["per_class_vs_frequency.png"] = "no completed trial"
        return files, skipped
    _try(files, skipped, "pareto_front.png", lambda: plot_front(study, spec, folder / "pareto_front.png"))
    _try(files, skipped, "per_class_vs_frequency.png", lambda: plot_per_class(study, spec, folder / "per_class_vs_frequency.png"))
    return files, skipped


def plot_front(study: Any, spec: Any, path: Path) -> Path:
    """``pareto_front.png`` (module docstring)."""
    trials = study.get_trials(deepcopy=False)
    objs = list(spec.objectives)
    done, pts = pareto.complete(trials), pareto.front(study)
    k, best, ref = pareto.knee(pts, objs), pareto.best_per_objective(trials, objs), pareto.reference_trial(trials)
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter([t.values[0] for t in done], [t.values[1] for t in done], s=22, color="0.7", label="trials (all epochs)")
    line = sorted(pts, key=lambda t: (t.values[0], t.values[1]))
    ax.plot([t.values[0] for t in line], [t.values[1] for t in line], "o-", color="tab:blue", label=f"Pareto front ({len(pts)})")
    if k is not None:
        ax.scatter([k.values[0]], [k.values[1]], s=130, marker="D", color="tab:red", zorder=3, label=f"knee: trial {k.number}")
    labels: dict[int, list[str]] = {}
    for metric, t in best.items():
        labels.setdefault(t.number, []).append(metric)
    for n, metrics in labels.items():
        t = best[metrics[0]]
        text = f"trial {n}: best {', '.join(metrics)}"
        ax.annotate(text, (t.values[0], t.values[1]), fontsize=7, xytext=(6, -14), textcoords="offset points")
    if ref is not None and any(t.number == ref.number for t in done):
        ax.scatter(
            [ref.values[0]], [ref.values[1]], s=220, marker="*", color="black", zorder=4, label=str(ref.user_attrs["reference"])
        )
    ax.set_xlabel(f"{objs[0].metric} ({objs[0].mode}, validation)")
    ax.set_ylabel(f"{objs[1].metric} ({objs[1].mode}, validation)")
    extra = f"; objectives 3+ not drawn: {[o.metric for o in objs[2:]]}" if len(objs) > 2 else ""
    ax.set_title(f"{spec.study_name}: Pareto front of {len(done)} finished trials{extra}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_per_class(study: Any, spec: Any, path: Path) -> Path:
    """``per_class_vs_frequency.png`` (module docstring)."""
    import numpy as np

    trials = study.get_trials(deepcopy=False)
    objs = list(spec.objectives)
    pts = pareto.front(study)
    k, best = pareto.knee(pts, objs), pareto.best_per_objective(trials, objs)
    first = [t for t in [k, *best.values()] if t is not None]
    order = list(dict.fromkeys([t.number for t in first] + [t.number for t in pts]))[:MAX_CURVES]
    by_number = {t.number: t for t in trials}
    ref = pareto.reference_trial(trials)
    fig = _figure()
    ax = fig.add_subplot()
    drawn = 0
    for n in order + ([ref.number] if ref is not None and ref.number not in order else []):
        t = by_number[n]
        counts, recall = t.user_attrs.get("class_counts"), t.user_attrs.get("val_per_class_recall")
        if not counts or not recall or len(counts) != len(recall):
            continue
        c = np.asarray(counts, dtype=float)
        r = np.asarray([np.nan if v is None else v for v in recall], dtype=float)
        idx = np.argsort(c, kind="stable")
        is_ref = ref is not None and n == ref.number
        label = f"trial {n} ({t.user_attrs.get(CHOICE_KEY, '?')})" + (", knee" if k is not None and n == k.number else "")
        if is_ref:
            label += f": {t.user_attrs['reference']}"
        ax.plot(
            c[idx], r[idx], "o--" if is_ref else "o-", color="black" if is_ref else None, markersize=3, linewidth=1.2, label=label
        )
        drawn += 1
    if not drawn:
        raise ValueError("no Pareto-optimal trial has per-class recall and class counts in its user attributes")
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("validation recall of the class (%)")
    ax.set_title(f"{spec.study_name}: per-class accuracy vs class frequency (Pareto-optimal trials)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
