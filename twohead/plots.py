"""PNG figures in the style of the paper: Fig. 3 (per-class counts / recall / weight norms) and Fig. 4 left (u).

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas instead of ``pyplot``:
nothing here touches matplotlib's global backend or pyplot's figure registry, so it is safe in Ray workers,
threads and headless CI, and importing :mod:`twohead` never imports matplotlib (it is imported inside the
functions). Every file is written to a temporary name in the target folder and renamed into place, so a
crash mid-save never leaves a truncated PNG where a good one was.

All per-class panels order the classes by decreasing number of training images (stable, so ties keep class
index order), as the x-axis of the paper's Fig. 3, and mark the many / medium / few boundaries
(> 100 / 20..100 / < 20 training images, Sec. 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twohead import atomic
from twohead.metrics import FEW_THRESHOLD, MANY_THRESHOLD

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_run", "plot_history", "plot_comparison", "plot_u_sensitivity", "DPI"]

DPI = 100  # PNG pixel size = figsize (inches) * DPI; no bbox_inches="tight", so sizes are predictable
RUN_PANEL_SIZE = (7.0, 3.5)
HISTORY_SIZE = (13.0, 3.5)
COMPARISON_PANEL_SIZE = (6.5, 3.5)  # per panel; the comparison figure is 2 rows x max(2, runs) columns
U_SENSITIVITY_SIZE = (5.0, 4.0)
_RECALL_TOP = 115  # headroom above 100 % for the many/medium/few labels


# ----------------------------------------------------------------------------------------------- helpers


def _new_figure(size: tuple[float, float], dpi: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # per-figure Agg canvas: no global backend switch, no pyplot state
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to ``path`` as PNG atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return path


def _counts(class_counts: Any) -> np.ndarray:
    counts = np.asarray(class_counts.detach().cpu() if hasattr(class_counts, "detach") else class_counts)
    if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.number):
        raise ValueError(f"class_counts must be a non-empty 1-D sequence of numbers, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError(f"class_counts must be >= 0; class {int(np.flatnonzero(counts < 0)[0])} is negative")
    return counts.astype(np.int64)


def _per_class(values: Sequence[float | None] | None, num_classes: int, what: str) -> np.ndarray:
    """Per-class values as float array (``None`` -> NaN, drawn as a gap), length-checked."""
    if values is None:
        raise ValueError(f"{what} is missing")
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if arr.shape != (num_classes,):
        raise ValueError(f"{what} has {arr.size} entries but class_counts has {num_classes} classes")
    return arr


def _order(counts: np.ndarray) -> np.ndarray:
    return np.argsort(-counts, kind="stable")


def _mark_groups(ax: Axes, sorted_counts: np.ndarray) -> None:
    """Dashed lines between the many / medium / few blocks of a count-sorted class axis, labelled on top."""
    n = sorted_counts.size
    n_many = int(np.sum(sorted_counts > MANY_THRESHOLD))
    n_few = int(np.sum(sorted_counts < FEW_THRESHOLD))
    spans = [("many", 0, n_many), ("medium", n_many, n - n_few), ("few", n - n_few, n)]
    for name, lo, hi in spans:
        if hi <= lo:
            continue
        if lo > 0:
            ax.axvline(lo - 0.5, color="0.4", linestyle="--", linewidth=0.8)
        # x in data coordinates, y in axes coordinates: label sits just under the top edge
        ax.text((lo + hi - 1) / 2, 0.97, name, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8, color="0.3")


def _bars(ax: Axes, values: np.ndarray, sorted_counts: np.ndarray, ylabel: str, title: str, color: str) -> None:
    # one filled step patch instead of C bar patches: same look, ~10x faster at ImageNet-LT's 1000 classes
    ax.stairs(np.nan_to_num(values, nan=0.0), np.arange(values.size + 1) - 0.5, fill=True, color=color, linewidth=0)
    ax.set_xlim(-0.5, values.size - 0.5)
    ax.set_ymargin(0.12)  # headroom for the group labels; bars stay glued to 0 (sticky edge)
    ax.set_xlabel("class (sorted by decreasing #training images)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _mark_groups(ax, sorted_counts)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.1f}"


def _recall_title(name: str, metrics: Mapping[str, Any]) -> str:
    return (
        f"{name}top-1 {_fmt(metrics.get('top1'))}% | many {_fmt(metrics.get('many'))} · "
        f"medium {_fmt(metrics.get('medium'))} · few {_fmt(metrics.get('few'))}"
    )


# ----------------------------------------------------------------------------------------------- figures


def plot_run(
    metrics: Mapping[str, Any],
    class_counts: Sequence[int] | np.ndarray,
    out_dir: str | Path,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    dpi: int = DPI,
) -> list[Path]:
    """Fig. 3-style panels for one run, one PNG each, in ``out_dir``.

    Writes ``train_counts.png`` (training images per class), ``per_class_recall.png`` (from
    ``metrics["per_class_recall"]``, percent), ``weight_norms.png`` when ``metrics["weight_norms"]`` is present
    (per-class classifier norms; with a CDH the mean norm of the class's clusters, see
    :func:`twohead.metrics.weight_norms`) and
    ``history.png`` when ``history`` (the per-epoch dicts of ``history.jsonl``) is given.

    Returns:
        The written paths, in that order.
    """
    counts = _counts(class_counts)
    c = counts.size
    order = _order(counts)
    out_dir = Path(out_dir)
    written: list[Path] = []

    fig = _new_figure(RUN_PANEL_SIZE, dpi)
    ax = fig.add_subplot()
    _bars(
        ax, counts[order].astype(float), counts[order], "#training images", f"training images per class ({c} classes)", "tab:gray"
    )
    if counts.max() / max(int(counts[counts > 0].min(initial=1)), 1) >= 20:
        ax.set_yscale("log")  # ImageNet-LT spans 1280..5 images: linear hides the tail
    written.append(_save(fig, out_dir / "train_counts.png"))

    recall = _per_class(metrics.get("per_class_recall"), c, 'metrics["per_class_recall"]')
    fig = _new_figure(RUN_PANEL_SIZE, dpi)
    ax = fig.add_subplot()
    _bars(ax, recall[order], counts[order], "recall (%)", _recall_title("", metrics), "tab:blue")
    ax.set_ylim(0, _RECALL_TOP)
    written.append(_save(fig, out_dir / "per_class_recall.png"))

    if metrics.get("weight_norms") is not None:
        norms = _per_class(metrics["weight_norms"], c, 'metrics["weight_norms"]')
        fig = _new_figure(RUN_PANEL_SIZE, dpi)
        ax = fig.add_subplot()
        _bars(
            ax,
            norms[order],
            counts[order],
            "weight norm",
            "classifier weight norm per class (mean over a class's clusters)",
            "tab:orange",
        )
        written.append(_save(fig, out_dir / "weight_norms.png"))

    if history:
        written.append(plot_history(history, out_dir, dpi=dpi))
    return written


def plot_history(history: Sequence[Mapping[str, Any]], out_dir: str | Path, *, dpi: int = DPI) -> Path:
    """``history.png``: training loss, learning rate and validation top-1 (+ many/medium/few) per epoch.

    ``history`` is the list of per-epoch dicts the training loop reports (keys ``epoch``, ``train_loss``,
    ``lr``, ``val_top1``, ``val_many`` ...; missing keys are simply not drawn). ``test_top1`` of the last epoch,
    when present, is drawn as a star on the accuracy panel.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    for i, row in enumerate(history):
        if not isinstance(row, Mapping):
            raise ValueError(f"history[{i}] must be a dict of epoch metrics, got {type(row).__name__}")

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if row.get(key) is None else float(row[key]) for row in history], dtype=np.float64)

    epochs = np.array([row.get("epoch", i + 1) for i, row in enumerate(history)], dtype=np.float64)
    fig = _new_figure(HISTORY_SIZE, dpi)
    ax_loss, ax_lr, ax_acc = fig.subplots(1, 3)

    ax_loss.plot(epochs, series("train_loss"), marker=".", color="tab:red")
    ax_loss.set_title("training loss", fontsize=10)

    lr = series("lr")
    ax_lr.plot(epochs, lr, marker=".", color="tab:purple")
    ax_lr.set_title("learning rate", fontsize=10)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    drawn = False
    for key, style in (("val_top1", "-"), ("val_many", ":"), ("val_medium", ":"), ("val_few", ":")):
        s = series(key)
        if np.isfinite(s).any():
            ax_acc.plot(epochs, s, linestyle=style, marker="." if key == "val_top1" else None, label=key)
            drawn = True
    test_top1 = history[-1].get("test_top1")
    if test_top1 is not None:
        ax_acc.plot(
            [epochs[-1]],
            [float(test_top1)],
            marker="*",
            markersize=12,
            linestyle="none",
            color="k",
            label=f"test_top1 {float(test_top1):.1f}",
        )
        drawn = True
    if drawn:
        ax_acc.legend(fontsize=7, loc="lower right")
    else:
        ax_acc.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set_title("accuracy (%)", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_lr, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _save(fig, Path(out_dir) / "history.png")


def plot_comparison(
    runs: Mapping[str, Mapping[str, Any]],
    class_counts: Sequence[int] | np.ndarray,
    out_path: str | Path,
    *,
    dpi: int = DPI,
) -> Path:
    """The paper's Fig. 3 for several runs (e.g. ``{"CE": ce_metrics, "two-head": th_metrics}``).

    Row 1: training images per class (left) and the per-class recall of every run overlaid (right).
    Row 2: the per-class classifier weight norms of each run that has ``weight_norms``, side by side with a
    shared y-axis so the norm imbalance is comparable (CE left, ours right with two runs, as in the paper).
    The figure is ``2 x max(2, #runs with norms)`` panels; without any weight norms only row 1 is drawn.
    """
    if not runs:
        raise ValueError("runs is empty: need at least one {name: metrics} entry")
    counts = _counts(class_counts)
    c = counts.size
    order = _order(counts)
    recalls = {name: _per_class(m.get("per_class_recall"), c, f'runs["{name}"]["per_class_recall"]') for name, m in runs.items()}
    norms = {
        name: _per_class(m["weight_norms"], c, f'runs["{name}"]["weight_norms"]')
        for name, m in runs.items()
        if m.get("weight_norms") is not None
    }

    cols = max(2, len(norms))
    rows = 2 if norms else 1
    fig = _new_figure((COMPARISON_PANEL_SIZE[0] * cols, COMPARISON_PANEL_SIZE[1] * rows), dpi)
    top, *bottom = fig.subfigures(rows, 1, squeeze=False)[:, 0]
    ax_counts, ax_recall = top.subplots(1, 2)

    _bars(ax_counts, counts[order].astype(float), counts[order], "#training images", "training images per class", "tab:gray")
    if counts.max() / max(int(counts[counts > 0].min(initial=1)), 1) >= 20:
        ax_counts.set_yscale("log")

    edges = np.arange(c + 1) - 0.5
    for name, rec in recalls.items():
        # step outlines rather than bars so overlapping runs stay readable at 100-1000 classes
        ax_recall.stairs(rec[order], edges, label=f"{name} ({_fmt(runs[name].get('top1'))}%)", linewidth=1.2)
    ax_recall.set_xlim(edges[0], edges[-1])
    ax_recall.set_ylim(0, _RECALL_TOP)
    ax_recall.set_xlabel("class (sorted by decreasing #training images)")
    ax_recall.set_ylabel("recall (%)")
    ax_recall.set_title("per-class recall", fontsize=10)
    ax_recall.legend(fontsize=8, loc="lower left")
    _mark_groups(ax_recall, counts[order])

    if norms:
        axes = bottom[0].subplots(1, cols, sharey=True, squeeze=False)[0]
        for ax, (name, nrm) in zip(axes, norms.items()):
            _bars(ax, nrm[order], counts[order], "weight norm", f"{name}: classifier weight norm", "tab:orange")
        for ax in axes[len(norms) :]:
            ax.set_axis_off()  # one run with norms: keep the 2 x 2 layout, leave the slot empty
    return _save(fig, out_path)


def plot_u_sensitivity(
    values: Sequence[tuple[float, float]],
    out_path: str | Path,
    baseline: float | None = None,
    *,
    baseline_label: str = "CE baseline",
    label: str = "two-head",
    title: str | None = None,
    dpi: int = DPI,
) -> Path:
    """Top-1 accuracy versus the cluster number ``u`` (paper Fig. 4 left).

    ``u`` is the number of clusters the largest class is divided into (Eq. 3).

    ``values`` holds ``(u, top1)`` pairs in any order. When several trials share a ``u`` (a search that
    varied other parameters too) every trial is drawn as a dot and the line goes through the per-``u`` mean.
    ``baseline`` (e.g. the CE top-1) is drawn as a dashed horizontal line.
    """
    if not values:
        raise ValueError("values is empty: need at least one (u, top1) pair")
    try:
        arr = np.array([(float(u), float(t)) for u, t in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be (u, top1) number pairs: {exc}") from exc
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise ValueError(f"values[{int(bad[0])}] = {tuple(values[int(bad[0])])} is not finite")
    us = np.unique(arr[:, 0])
    means = np.array([arr[arr[:, 0] == u, 1].mean() for u in us])

    fig = _new_figure(U_SENSITIVITY_SIZE, dpi)
    ax = fig.add_subplot()
    if len(us) < len(arr):
        ax.scatter(arr[:, 0], arr[:, 1], s=12, alpha=0.4, color="tab:blue", label="trials")
        label = f"{label} (mean per u)"
    ax.plot(us, means, marker="o", color="tab:blue", label=label)
    if baseline is not None:
        ax.axhline(float(baseline), color="tab:red", linestyle="--", label=f"{baseline_label} ({float(baseline):.1f})")
    ax.set_xlabel("cluster number u (clusters of the largest class)")
    ax.set_ylabel("top-1 accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)
