"""The reproduced tables as Markdown beside the paper's numbers, the paper's Fig. 3, and the results archive.

Every cell is the mean +- sample std over seeds of the **final-epoch** test top-1 (the headline), beside the paper's
number and the difference; Table 1 adds the best-over-epochs test top-1 in its own column, labelled as the
baselines' protocol. The notes name every hyperparameter the paper does not state, with its value and source.
"""

from __future__ import annotations

import logging
import math
import statistics
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rayjobs import paper
from twohead import atomic
from twohead.config import METHODS

from .plan import METHOD_LABELS, TABLES, RunSpec, TableSpec, changes_results, of_table
from .run import RunStatus

log = logging.getLogger("rayjobs.reproduce")

__all__ = ["render_table", "write_report", "fig3", "READING_COLUMNS", "POSTHOC_COLUMNS"]

READING_COLUMNS = ("max", "sum", "fuse", "fbh")
POSTHOC_COLUMNS = ("la_tau1.0", "taunorm1.0")


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "—"
    m, s = _mean_std(values)
    return f"{m:.2f} ± {s:.2f} ({len(values)})" if s is not None else f"{m:.2f} (1)"


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _missing(states: Sequence[RunStatus]) -> str:
    if not states:
        return "—"
    kinds = sorted({st.state for st in states if st.state != "done"})
    return (
        "—"
        if not kinds
        else {"failed": "failed", "skipped": "not run", "pending": "not run", "interrupted": "cut", "running": "running"}.get(
            kinds[0], kinds[0]
        )
    )


def _group(
    status: Mapping[str, RunStatus], table: TableSpec, specs: Sequence[RunSpec]
) -> dict[tuple[str, float], list[RunStatus]]:
    cells: dict[tuple[str, float], list[RunStatus]] = {}
    for sp in of_table(table, specs):
        st = status.get(sp.name)
        if st is not None:
            cells.setdefault((sp.method, sp.imbalance), []).append(st)
    return cells


def _top1s(states: Sequence[RunStatus]) -> list[float]:
    return [float(st.result["top1"]) for st in states if st.state == "done" and st.result is not None]


def _fmt_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _notes(table: TableSpec, specs: Sequence[RunSpec], status: Mapping[str, RunStatus], work: Path) -> list[str]:
    methods = sorted({sp.method for sp in specs}, key=lambda m: (table.methods + tuple(METHODS)).index(m))
    cfgs = {m: next(sp for sp in specs if sp.method == m).config(work) for m in methods}
    done = [st for st in status.values() if st.state == "done" and st.result]
    lines = []
    epochs = sorted({c.optim.epochs for c in cfgs.values()})
    rec = (
        "the paper's recipe"
        if epochs == [200]
        else f"**NOT the paper's recipe: {', '.join(map(str, epochs))} epochs** (paper: 200), schedule scaled proportionally"
    )
    o, me = cfgs[methods[0]].optim, cfgs[methods[0]].method
    lines.append(
        f"- Training: {rec}; {cfgs[methods[0]].model.backbone}, SGD momentum {o.momentum:g}, batch {o.batch_size}, "
        f"lr {o.lr:g} multiplied by {o.lr_gamma:g} at each of epochs "
        f"{', '.join(map(str, o.milestones)) or '(none)'} (0-based; BBN's LR_FACTOR, paper Sec. 3.1); "
        f"u={me.u}, lambda={me.lam:g}, alpha={me.alpha:g}, {me.clustering} cluster splitting with a new split per "
        "seed (cluster seed = run seed)."
    )
    user = {k: v for sp in specs for k, v in sp.sets if changes_results(k)}
    if user:
        lines.append(
            "- Overrides of the recipe (`--set`): " + ", ".join(f"`{k}={_fmt_value(v)}`" for k, v in sorted(user.items()))
        )
    lines.append("- Not in the paper (value used, and its source):")
    for key, (only, source) in paper.NOT_IN_PAPER.items():
        users = [m for m in methods if only is None or m in only]
        if not users:
            continue
        sec, k = key.split(".")
        vals = {_fmt_value(getattr(getattr(cfgs[m], sec), k)) for m in users}
        who = "" if only is None else f" ({', '.join(METHOD_LABELS.get(m, m) for m in users)})"
        lines.append(f"  - `{key}` = {' / '.join(sorted(vals))}{who}: {source}")
    if done:
        cards = sorted({str(st.result.get("card")) for st in done})
        torches = sorted({str(st.result.get("torch")) for st in done})
        commits = sorted({str(st.result.get("commit", "unknown")) for st in done})
        walls = [float(st.result.get("wall_s") or 0) for st in done]
        conc = sorted({int(st.result.get("concurrent") or 1) for st in done})
        lines.append(f"- Card: {', '.join(cards)}; torch {', '.join(torches)}; commit {', '.join(commits)}.")
        lines.append(
            f"- Wall time per run (training loop, {'/'.join(map(str, conc))} run(s) sharing the device): "
            f"median {statistics.median(walls):.0f} s, total {sum(walls):.0f} s over {len(walls)} runs."
        )
    states = [status[sp.name] for sp in specs if sp.name in status]
    n_done = sum(st.state == "done" for st in states)
    lines.append(f"- Runs: {n_done} of {len(states)} finished.")
    for label, kind in (("Failed", "failed"), ("Not run", "skipped"), ("Not run", "pending"), ("Cut short", "interrupted")):
        group = [st for st in states if st.state == kind]
        if group:
            reasons = sorted({st.reason for st in group})
            lines.append(
                f"- {label}: "
                + ", ".join(st.spec.name for st in group)
                + (f" ({'; '.join(reasons)})" if reasons and reasons != [""] else "")
            )
    return lines


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    from tabulate import tabulate

    return tabulate(rows, headers=list(header), tablefmt="github", colalign=align, disable_numparse=True).splitlines()


def _best_epochs(states: Sequence[RunStatus]) -> list[float]:
    """Best-over-epochs test top-1 of the finished runs that tracked it (``run.test_curve``)."""
    return [
        float(st.result["test_best_over_epochs"]["top1"])
        for st in states
        if st.state == "done" and st.result and st.result.get("test_best_over_epochs")
    ]


def _mean_of(results: Sequence[Mapping[str, Any]], get: Callable[[Mapping[str, Any]], Any]) -> str:
    vals = []
    for r in results:
        v = get(r)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            vals.append(float(v))
    return f"{statistics.fmean(vals):.2f}" if vals else "—"


def render_table(
    table: TableSpec, specs: Sequence[RunSpec], status: Mapping[str, RunStatus], *, work: Path, fig: str | None = None
) -> str:
    """The Markdown of one table from the runs' statuses (results of finished runs)."""
    specs = [sp for sp in of_table(table, specs) if sp.method in _rows(table, specs)]
    cells = _group(status, table, specs)
    imbs = sorted(
        {sp.imbalance for sp in specs}, key=lambda b: (paper.IMBALANCES + (b,)).index(b) if b in paper.IMBALANCES else 99
    )
    rows = _rows(table, specs)
    tag = next((sp.tag for sp in specs if sp.tag), "")
    head = [f"# {table.title}{f' (runs tagged {tag})' if tag else ''}", ""]
    out: list[str] = []
    if table.kind == "table1":
        head += [
            "Top-1 accuracy (%) on the balanced CIFAR-10 test set (10,000 images) at the **final epoch**, mean ± sample "
            "std over seeds (number of seeds in parentheses): the headline, with no epoch, checkpoint or "
            "hyperparameter chosen on test data. *paper*: Table 1 of the paper (CIFAR-10); *Δ*: ours − paper. "
            "*best epoch*: the best test top-1 over the epochs after the first learning-rate decay, the protocol of "
            "the code bases the paper copies its baselines from (LDAM-DRW, BBN keep their best test epoch); it is "
            "shown to compare like with like and is never the reported result.",
            "",
        ]
        header = ["Method"] + [c for b in imbs for c in (f"β={b:g} final", "paper", "Δ", f"β={b:g} best epoch")]
        body = []
        for m in rows:
            line = [METHOD_LABELS.get(m, m)]
            for b in imbs:
                states = cells.get((m, b), [])
                vals = _top1s(states)
                pc = paper.table1(table.dataset, m, b)
                line.append(_cell(vals) if vals else _missing(states))
                line.append(f"{pc.value:.2f}" if pc else "—")
                line.append(_signed(statistics.fmean(vals) - pc.value) if (vals and pc) else "—")
                best = _best_epochs(states)
                line.append(_cell(best) if best else "—")
            body.append(line)
        out += _md(header, body, ["left"] + ["right"] * (len(header) - 1))
    else:
        head += [
            "Top-1 accuracy (%) at the final epoch, mean ± sample std over seeds, on **CIFAR-10-LT**. The paper's "
            "Table 4 is on CIFAR-100-LT and Tiny-ImageNet-LT; the CIFAR-100 train split is not available here, so "
            "the ablation runs on CIFAR-10-LT. The paper's CIFAR-100 numbers are shown as **context only** (another "
            "dataset: no difference column). *vs CE* compares each row with the CE row of the same source "
            "(ours with ours, paper with paper). FBH only, CDH only and both share one architecture (the same "
            "feature projection and classifier input) and differ only in the losses that train them.",
            "",
        ]
        header = ["FBH", "CDH", "Method"] + [c for b in imbs for c in (f"β={b:g}", "vs CE", "paper C-100", "paper vs CE")]
        body = []
        for m in rows:
            fbh, cdh = METHODS[m].fbh, METHODS[m].cdh
            line = ["✓" if fbh else "-", "✓" if cdh else "-", METHOD_LABELS.get(m, m)]
            for b in imbs:
                states = cells.get((m, b), [])
                vals = _top1s(states)
                ce = _top1s(cells.get(("ce", b), []))
                pc, pce = paper.table4("cifar100", m, b), paper.table4("cifar100", "ce", b)
                line.append(_cell(vals) if vals else _missing(states))
                line.append(_signed(statistics.fmean(vals) - statistics.fmean(ce)) if (vals and ce and m != "ce") else "—")
                line.append(f"{pc.value:.2f}" if pc else "—")
                line.append(_signed(pc.value - pce.value) if (pc and pce and m != "ce") else "—")
            body.append(line)
        out += _md(header, body, ["left"] * 3 + ["right"] * (len(header) - 3))
    # Many / medium / few at the first imbalance (the paper's Sec. 3.2 split: > 100, 20..100, < 20 images).
    b0 = imbs[0] if imbs else None
    groups, readings = [], []
    for m in rows:
        done = [st.result for st in cells.get((m, b0), []) if st.state == "done" and st.result]
        if not done:
            continue
        groups.append(
            [
                METHOD_LABELS.get(m, m),
                *(_mean_of(done, lambda r, k=k: r.get(k)) for k in ("many", "medium", "few", "worst_class")),
                str(len(done)),
            ]
        )
        readings.append(
            [
                METHOD_LABELS.get(m, m),
                *(_mean_of(done, lambda r, k=k: (r.get("by_inference") or {}).get(k)) for k in READING_COLUMNS),
                *(_mean_of(done, lambda r, k=k: (r.get("posthoc") or {}).get(k)) for k in POSTHOC_COLUMNS),
            ]
        )
    if groups:
        out += [
            "",
            f"Recall by class group at β={b0:g} (many > 100, medium 20–100, few < 20 training images; "
            "— where a group has no class; worst: the lowest per-class recall), mean over seeds:",
            "",
            *_md(["Method", "many", "medium", "few", "worst", "seeds"], groups, ["left"] + ["right"] * 5),
        ]
        out += [
            "",
            f"Every test-time reading at β={b0:g}, mean over seeds (the final-epoch column above is the "
            "method's default reading, `max` for the two-head rows: the class of the best cluster, the paper's "
            "Sec. 2.2; `sum` adds a class's cluster probabilities; `fuse` averages `sum` with the FBH; `fbh` is "
            "the feature-balancing head alone). Post-hoc columns, for reference only: logit adjustment "
            "(Menon et al. 2021, τ = 1) and τ-normalisation (Kang et al. 2020, τ = 1) on the default reading; "
            "a search chooses τ on validation, never on test.",
            "",
            *_md(
                ["Method", *READING_COLUMNS, *POSTHOC_COLUMNS],
                readings,
                ["left"] + ["right"] * (len(READING_COLUMNS) + len(POSTHOC_COLUMNS)),
            ),
        ]
    if fig:
        out += [
            "",
            f"Fig. 3 (CE vs two-head at β={b0:g}: per-class recall and classifier weight norms, the mean "
            f"cluster norm per class for the two-head model, means over seeds): [{fig}]({fig})",
        ]
    notes = _notes(table, specs, status, work)
    return "\n".join(head + out + ["", "Notes:", "", *notes, ""])


def _rows(table: TableSpec, specs: Sequence[RunSpec]) -> list[str]:
    present = {sp.method for sp in of_table(table, specs)}
    ordered = [m for m in table.methods if m in present]
    if table.kind == "table1":
        ordered += sorted(present - set(ordered) - {"fbh_only", "cdh_only"}, key=list(METHODS).index)
    else:
        ordered += sorted(present & {"fbh_only", "cdh_only"} - set(ordered), key=list(METHODS).index)
    return ordered


def fig3(
    status: Mapping[str, RunStatus], dataset: str, imbalance: float, out_path: Path, preset: str | None = None
) -> Path | None:
    """Paper Fig. 3 for CE vs two-head at ``imbalance`` (of ``preset``'s runs when given): per-class recall and weight
    norms, averaged over the seeds both have finished. None when either has no finished run (or plotting is
    unavailable)."""
    import numpy as np

    runs: dict[str, dict] = {}
    counts = None
    for m, label in (("ce", "CE"), ("twohead", "two-head (ours)")):
        res = [
            st.result
            for st in status.values()
            if st.state == "done"
            and st.result
            and st.spec.method == m
            and st.spec.dataset == dataset
            and st.spec.imbalance == imbalance
            and (preset is None or st.spec.preset == preset)
        ]
        if not res:
            return None
        counts = res[0]["class_counts"]
        runs[label] = {
            "top1": statistics.fmean(float(r["top1"]) for r in res),
            "per_class_recall": np.mean([r["per_class_recall"] for r in res], axis=0).tolist(),
            "weight_norms": (
                np.mean([r["weight_norms"] for r in res], axis=0).tolist() if all(r.get("weight_norms") for r in res) else None
            ),
        }
    try:
        from twohead.plots import plot_comparison

        return plot_comparison(runs, counts, out_path)
    except Exception as e:  # noqa: BLE001 - a figure must never lose the tables
        log.warning("Fig. 3 plot failed: %s", e)
        return None


def write_report(
    tables: Sequence[str],
    specs: Sequence[RunSpec],
    status: Mapping[str, RunStatus],
    *,
    out: Path,
    work: Path,
    archive: Path | None = None,
) -> list[Path]:
    """Write ``<out>/<table>[-tag].md`` for every table and Fig. 3 when its runs exist; re-pack ``archive``."""
    out = Path(out)
    written = []
    for tname in tables:
        t = TABLES[tname]
        tspecs = of_table(t, specs)
        tag = next((sp.tag for sp in tspecs if sp.tag), "")
        suffix = f"-{tag}" if tag else ""
        # The table's own scale is already in its name: cifar10-lt-cpu.md, not cifar10-lt-cpu-cpu.md.
        rest = tag.removeprefix(t.scale).lstrip("-") if t.scale else tag
        fig_rel = None
        imbs = [sp.imbalance for sp in tspecs]
        if imbs:
            b0 = 100.0 if 100.0 in imbs else imbs[0]
            fp = fig3(status, t.dataset, b0, out / t.dataset / f"fig3-imb{b0:g}{suffix}.png", preset=t.preset)
            if fp is not None:
                fig_rel = str(fp.relative_to(out))
                if fp not in written:
                    written.append(fp)
        md = render_table(t, tspecs, status, work=work, fig=fig_rel)
        p = out / f"{tname}{f'-{rest}' if rest else ''}.md"
        atomic.write_text(p, md)
        written.append(p)
    if archive is not None:
        _archive(out, Path(archive))
    return written


def _archive(out: Path, archive: Path) -> None:
    """``archive`` = tar.gz of the tables, per-run JSONs and figures under ``out`` (written atomically)."""
    with atomic.atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(out.rglob("*")):
            if p.is_file() and p.suffix in (".json", ".md", ".png") and not p.name.startswith("."):
                tar.add(p, arcname=str(Path(out.name) / p.relative_to(out)))
