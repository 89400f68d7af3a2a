"""The choices a search report makes among its finished trials: the Pareto front, the best trial per objective,
the knee point, the post-hoc tally (Ray-free; works on Optuna's FrozenTrials).

Only trials that trained all their epochs (COMPLETE, with finite values) are compared; pruned ones stopped at
an earlier epoch and are not comparable.

- **Front**: the trials no other trial beats on every objective (``study.best_trials``; a one-objective study's
  front is its best trial).
- **Best per objective**: the trial with the best value of that objective (ties: the lower trial number).
- **Knee point**: each objective is scaled to [0, 1] over the front (1 = the front's best value, 0 = its worst;
  an objective constant on the front counts 1) and the knee is the front trial with the largest sum of scaled
  values. With two objectives that is the front point farthest from the straight line through the two extreme
  points (Das 1999, "On characterizing the 'knee' of the Pareto curve"): where giving up a little of one objective
  buys the most of the other. It is the configuration a multi-objective report retrains by default.
- **Post-hoc tally**: how often each reading / post-hoc variant was the trial's choice on validation
  (user attribute ``chosen_variant``, :mod:`rayjobs.search.objectives`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rayjobs.search.objectives import CHOICE_KEY, Objective

__all__ = ["best_per_objective", "complete", "front", "front_rows", "knee", "posthoc_tally", "reference_trial"]


def complete(trials: Sequence[Any]) -> list[Any]:
    """COMPLETE trials with finite values (those that trained all their epochs)."""
    return [t for t in trials if t.state.name == "COMPLETE" and t.values is not None and all(math.isfinite(v) for v in t.values)]


def front(study: Any) -> list[Any]:
    """The Pareto-optimal complete trials of ``study`` (Optuna's ``best_trials``), by trial number."""
    if not complete(study.get_trials(deepcopy=False)):
        return []
    return sorted(complete(study.best_trials), key=lambda t: t.number)


def best_per_objective(trials: Sequence[Any], objectives: Sequence[Objective]) -> dict[str, Any]:
    """``{metric: trial}``: the best complete trial of each objective (ties: the lower number)."""
    done = complete(trials)
    if not done:
        return {}
    return {o.metric: min(done, key=lambda t, i=i, o=o: (-o.sign * t.values[i], t.number)) for i, o in enumerate(objectives)}


def knee(front_trials: Sequence[Any], objectives: Sequence[Objective]) -> Any:
    """The knee of a Pareto front (module docstring), or None for an empty front."""
    if not front_trials:
        return None
    scaled = {t.number: 0.0 for t in front_trials}
    for i, o in enumerate(objectives):
        vals = [o.sign * t.values[i] for t in front_trials]
        lo, hi = min(vals), max(vals)
        for t, v in zip(front_trials, vals):
            scaled[t.number] += 1.0 if hi == lo else (v - lo) / (hi - lo)
    return min(front_trials, key=lambda t: (-scaled[t.number], t.number))


def reference_trial(trials: Sequence[Any]) -> Any:
    """The trial of the space's reference configuration (user attribute ``reference``), if it ran."""
    return next((t for t in trials if "reference" in t.user_attrs), None)


def posthoc_tally(trials: Sequence[Any]) -> list[tuple[str, int]]:
    """(variant, how many of ``trials`` chose it), most chosen first."""
    counts = Counter(t.user_attrs.get(CHOICE_KEY) for t in trials if t.user_attrs.get(CHOICE_KEY))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def front_rows(study: Any, spec: Any) -> list[dict[str, Any]]:
    """One row per Pareto-optimal trial for ``pareto_front.csv`` / the report: objectives (chosen variant), the
    raw values of the configured reading, the chosen variant, the parameters and what the trial is picked as."""
    trials = study.get_trials(deepcopy=False)
    objs = list(spec.objectives)
    pts = front(study)
    k = knee(pts, objs)
    best = best_per_objective(trials, objs)
    ref = reference_trial(trials)
    rows = []
    for t in pts:
        picks = (["knee"] if k is not None and t.number == k.number else []) + [
            f"best {m}" for m, b in best.items() if b.number == t.number
        ]
        if ref is not None and t.number == ref.number:
            picks.append(f"reference: {t.user_attrs['reference']}")
        row: dict[str, Any] = {"trial": t.number}
        row.update({o.metric: v for o, v in zip(objs, t.values)})
        row["chosen_variant"] = t.user_attrs.get(CHOICE_KEY)
        row.update({f"raw {o.metric}": t.user_attrs.get(o.metric) for o in objs})
        row.update({p.name: t.params.get(p.name) for p in spec.params})
        row["picked as"] = ", ".join(picks)
        rows.append(row)
    return rows
