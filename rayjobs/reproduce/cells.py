"""Cells, rows and Markdown shared by every table kind (Table 1, the ablation, the paired reduced-scale table)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twohead.config import METHODS

from .paired import mean_std
from .plan import RunSpec, TableSpec, of_table
from .run import RunStatus

__all__ = [
    "READING_COLUMNS",
    "POSTHOC_COLUMNS",
    "cell",
    "signed",
    "missing",
    "group_cells",
    "top1s",
    "fmt_value",
    "md_table",
    "best_epochs",
    "mean_of",
    "table_rows",
    "fig_imbalance",
]

READING_COLUMNS = ("max", "sum", "fuse", "fbh")


POSTHOC_COLUMNS = ("la_tau1.0", "taunorm1.0")


def cell(values: Sequence[float]) -> str:
    if not values:
        return "—"
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f} ({len(values)})" if s is not None else f"{m:.2f} (1)"


def signed(x: float) -> str:
    return f"{x:+.2f}"


def missing(states: Sequence[RunStatus]) -> str:
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


def group_cells(
    status: Mapping[str, RunStatus], table: TableSpec, specs: Sequence[RunSpec]
) -> dict[tuple[str, float], list[RunStatus]]:
    cells: dict[tuple[str, float], list[RunStatus]] = {}
    for sp in of_table(table, specs):
        st = status.get(sp.name)
        if st is not None:
            cells.setdefault((sp.method, sp.imbalance), []).append(st)
    return cells


def top1s(states: Sequence[RunStatus]) -> list[float]:
    return [float(st.result["top1"]) for st in states if st.state == "done" and st.result is not None]


def fmt_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    from tabulate import tabulate

    return tabulate(rows, headers=list(header), tablefmt="github", colalign=align, disable_numparse=True).splitlines()


def best_epochs(states: Sequence[RunStatus]) -> list[float]:
    """Best-over-epochs test top-1 of the finished runs that tracked it (``run.test_curve``)."""
    return [
        float(st.result["test_best_over_epochs"]["top1"])
        for st in states
        if st.state == "done" and st.result and st.result.get("test_best_over_epochs")
    ]


def mean_of(results: Sequence[Mapping[str, Any]], get: Callable[[Mapping[str, Any]], Any]) -> str:
    vals = []
    for r in results:
        v = get(r)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            vals.append(float(v))
    return f"{statistics.fmean(vals):.2f}" if vals else "—"


def table_rows(table: TableSpec, specs: Sequence[RunSpec]) -> list[str]:
    present = {sp.method for sp in of_table(table, specs)}
    ordered = [m for m in table.methods if m in present]
    if table.kind == "paired":
        ordered += sorted(present - set(ordered), key=list(METHODS).index)
    elif table.kind == "table1":
        ordered += sorted(present - set(ordered) - {"fbh_only", "cdh_only"}, key=list(METHODS).index)
    else:
        ordered += sorted(present & {"fbh_only", "cdh_only"} - set(ordered), key=list(METHODS).index)
    return ordered


def fig_imbalance(specs: Sequence[RunSpec]) -> float | None:
    """The imbalance Fig. 3 is drawn at: 100 when planned (the paper's figure), else the first planned one."""
    imbs = [sp.imbalance for sp in specs]
    return None if not imbs else (100.0 if 100.0 in imbs else imbs[0])
