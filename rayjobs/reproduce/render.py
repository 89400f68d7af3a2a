"""The reproduced tables as Markdown beside the paper's numbers, the paper's Fig. 3, and the results archive.

Every cell is the mean +- sample std over seeds of the **final-epoch** test top-1 (the headline), beside the paper's
number and the difference; Table 1 adds the best-over-epochs test top-1 in its own column, labelled as the
baselines' protocol. The notes name every hyperparameter the paper does not state, with its value and source.
"""

from __future__ import annotations

import logging
import statistics
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from twohead import atomic
from twohead.config import METHODS

from . import paper
from .cells import (
    POSTHOC_COLUMNS,
    READING_COLUMNS,
    best_epochs,
    cell,
    fig_imbalance,
    group_cells,
    md_table,
    mean_of,
    missing,
    signed,
    table_rows,
    top1s,
)
from .notes import lr_note, table_notes
from .plan import METHOD_LABELS, TABLES, RunSpec, TableSpec, of_table
from .render_paired import render_paired
from .run import RunStatus

log = logging.getLogger("rayjobs.reproduce")

__all__ = ["render_table", "write_report", "fig3", "READING_COLUMNS", "POSTHOC_COLUMNS"]


def render_table(
    table: TableSpec, specs: Sequence[RunSpec], status: Mapping[str, RunStatus], *, work: Path, fig: str | None = None
) -> str:
    """The Markdown of one table from the runs' statuses (results of finished runs)."""
    specs = [sp for sp in of_table(table, specs) if sp.method in table_rows(table, specs)]
    if table.kind == "paired":
        body = render_paired(table, specs, status, work=work, fig=fig)
        notes = table_notes(table, specs, status, work) + lr_note(specs, status, work)
        tag = next((sp.tag for sp in specs if sp.tag), "")
        cfg = specs[0].config(work) if specs else None
        recipe = f" ({cfg.model.backbone}, {cfg.optim.epochs} epochs)" if cfg else ""
        return "\n".join([f"# {table.title}{recipe}{f', runs tagged {tag}' if tag else ''}", "", *body, "Notes:", "", *notes, ""])
    cells = group_cells(status, table, specs)
    imbs = sorted(
        {sp.imbalance for sp in specs}, key=lambda b: (paper.IMBALANCES + (b,)).index(b) if b in paper.IMBALANCES else 99
    )
    rows = table_rows(table, specs)
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
                vals = top1s(states)
                pc = paper.table1(table.dataset, m, b)
                line.append(cell(vals) if vals else missing(states))
                line.append(f"{pc.value:.2f}" if pc else "—")
                line.append(signed(statistics.fmean(vals) - pc.value) if (vals and pc) else "—")
                best = best_epochs(states)
                line.append(cell(best) if best else "—")
            body.append(line)
        out += md_table(header, body, ["left"] + ["right"] * (len(header) - 1))
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
                vals = top1s(states)
                ce = top1s(cells.get(("ce", b), []))
                pc, pce = paper.table4("cifar100", m, b), paper.table4("cifar100", "ce", b)
                line.append(cell(vals) if vals else missing(states))
                line.append(signed(statistics.fmean(vals) - statistics.fmean(ce)) if (vals and ce and m != "ce") else "—")
                line.append(f"{pc.value:.2f}" if pc else "—")
                line.append(signed(pc.value - pce.value) if (pc and pce and m != "ce") else "—")
            body.append(line)
        out += md_table(header, body, ["left"] * 3 + ["right"] * (len(header) - 3))
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
                *(mean_of(done, lambda r, k=k: r.get(k)) for k in ("many", "medium", "few", "worst_class")),
                str(len(done)),
            ]
        )
        readings.append(
            [
                METHOD_LABELS.get(m, m),
                *(mean_of(done, lambda r, k=k: (r.get("by_inference") or {}).get(k)) for k in READING_COLUMNS),
                *(mean_of(done, lambda r, k=k: (r.get("posthoc") or {}).get(k)) for k in POSTHOC_COLUMNS),
            ]
        )
    if groups:
        out += [
            "",
            f"Recall by class group at β={b0:g} (many > 100, medium 20–100, few < 20 training images; "
            "— where a group has no class; worst: the lowest per-class recall), mean over seeds:",
            "",
            *md_table(["Method", "many", "medium", "few", "worst", "seeds"], groups, ["left"] + ["right"] * 5),
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
            *md_table(
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
    notes = table_notes(table, specs, status, work)
    return "\n".join(head + out + ["", "Notes:", "", *notes, ""])


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
        b0 = fig_imbalance(tspecs)
        if b0 is not None:
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
