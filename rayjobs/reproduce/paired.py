"""Rows against a reference row, seed by seed: the statistics of a paired table (no Markdown here; see :mod:`.render`).

Every row of a paired table is trained with the same seeds as the reference (CE): the same initialisation, the
same shuffling and augmentation stream, the same validation split. A difference taken seed by seed removes the part
of the spread the two runs share, so "Ours - CE" is read per seed (and as the mean +- sample std of those
differences), not as the difference of two means whose stds overlap.

A result is one run's JSON (:func:`.results.slim_result`): ``method``, ``seed``, ``top1`` (final-epoch test top-1 of
the default reading), ``by_inference`` and ``posthoc`` (test top-1 of every reading and post-hoc variant) and ``val``
(the same on the validation split).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PairedRow", "by_method_seed", "mean_std", "paired_rows", "val_chosen", "best_on_test", "DEFAULT_VARIANT"]

DEFAULT_VARIANT = "default"  # the method's own reading, no post-hoc correction (``top1``)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the std is None for a single value."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def by_method_seed(results: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, Mapping[str, Any]]]:
    """``{method: {seed: result}}``; two results of one (method, seed) are a ValueError (two recipes mixed)."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in results:
        seeds = out.setdefault(str(r["method"]), {})
        s = int(r["seed"])
        if s in seeds:
            raise ValueError(f"two results for method {r['method']!r} seed {s}: {seeds[s].get('run')} and {r.get('run')}")
        seeds[s] = r
    return out


def val_chosen(result: Mapping[str, Any]) -> tuple[str, float]:
    """The variant (default reading or a post-hoc correction) with the best **validation** top-1, and its test top-1.

    Ties keep the default reading, then the first variant in the run's order; a run without validation posthoc
    scores keeps the default reading. Never chosen on test."""
    val = result.get("val") or {}
    best, best_val = DEFAULT_VARIANT, val.get("top1")
    for name, v in (val.get("posthoc") or {}).items():
        if v is not None and (best_val is None or float(v) > float(best_val)):
            best, best_val = name, v
    test = float(result["top1"]) if best == DEFAULT_VARIANT else float(result["posthoc"][best])
    return best, test


def best_on_test(results: Sequence[Mapping[str, Any]]) -> tuple[str, float] | None:
    """The variant (default reading or a post-hoc correction every run has) with the best **mean test** top-1 over
    ``results``, and that mean: a reference for what the best fixed correction could reach, chosen on test, so
    never a reported result. Ties keep the default reading."""
    if not results:
        return None
    names = set.intersection(*(set(r.get("posthoc") or {}) for r in results))
    best = (DEFAULT_VARIANT, statistics.fmean(float(r["top1"]) for r in results))
    for name in sorted(names):
        m = statistics.fmean(float(r["posthoc"][name]) for r in results)
        if m > best[1]:
            best = (name, m)
    return best


@dataclass(frozen=True)
class PairedRow:
    """One row of a paired table: its value per seed and, for the seeds the reference also has, the difference."""

    method: str
    values: dict[int, float]  # seed -> value
    diffs: dict[int, float]  # seed -> value - reference value (seeds both have)

    @property
    def wins(self) -> int:
        """Seeds where the row beats the reference (a tie is not a win)."""
        return sum(d > 0 for d in self.diffs.values())

    @property
    def mean_std(self) -> tuple[float, float | None]:
        return mean_std(list(self.values.values()))

    @property
    def diff_mean_std(self) -> tuple[float, float | None] | None:
        return mean_std(list(self.diffs.values())) if self.diffs else None


def paired_rows(
    results: Iterable[Mapping[str, Any]],
    methods: Sequence[str],
    *,
    reference: str = "ce",
    value: Callable[[Mapping[str, Any]], float] = lambda r: float(r["top1"]),
) -> list[PairedRow]:
    """One :class:`PairedRow` per method of ``methods`` that has a result, in that order; ``diffs`` against
    ``reference`` over the seeds both have (empty for the reference itself and when it has no result)."""
    table = by_method_seed(results)
    ref = {s: value(r) for s, r in table.get(reference, {}).items()}
    rows = []
    for m in methods:
        if m not in table:
            continue
        vals = {s: value(r) for s, r in sorted(table[m].items())}
        diffs = {} if m == reference else {s: v - ref[s] for s, v in vals.items() if s in ref}
        rows.append(PairedRow(m, vals, diffs))
    return rows
