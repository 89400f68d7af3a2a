"""What a search optimises, and how one trial is scored on its validation split (Ray-free, Optuna-free).

**Objectives** are validation metrics the training loop reports at every validated epoch (:data:`VAL_METRICS`),
each maximised or minimised. One objective is an ordinary search; several make a Pareto search (an Optuna
multi-objective study). Test metrics are never an objective.

**Variants.** One validation pass scores every K-to-C reading of the model (``max``, ``sum``, ``fuse``, ``fbh``,
:mod:`twohead.readings`) and the post-hoc corrections of the default reading (logit adjustment ``la_tau*``,
tau-normalisation ``taunorm*``); the loop reports each variant's top-1, many / medium / few and worst-class
recall, and ECE for the default reading. These knobs cost no training, so they are not searched: with
``posthoc: true`` each trial **chooses** its variant on validation at every validated epoch (the searcher spends
trials on u, alpha, lambda, clustering, lr, ...), and reports the chosen values next to the raw ones.

**The choice** is the variant with the best :func:`scalarise` score among those that have a value for every
objective (ECE exists for the default reading only, so a search on ``val_ece`` keeps the default reading); ties
go to the default reading, then to the readings and post-hoc variants in the loop's order. ``posthoc: false``
always keeps the default reading.

**The score** of a trial at an epoch (:func:`scalarise`): with one objective, its value (compared in its mode);
with several, the mean over objectives of ``value`` (max) or ``-value`` (min), maximised. Every metric is a
percentage on the same 0-100 scale, so the mean weighs a point of top-1 and a point of worst-class recall alike.
The score picks the variant, is what ASHA compares, and is recorded per epoch: as the trial's Optuna intermediate
value (one objective) or its ``search_scores`` user attribute (several: Optuna keeps no intermediate values for
multi-objective trials).

**Judging.** A method with deferred re-weighting (:data:`twohead.methods.DEFERRED_REWEIGHT`: LDAM-DRW's and
Ours-Full's class weights start at ``method.drw_epoch``, 160 of 200 epochs) changes its objective after that
epoch: a rung before it would compare the wrong thing. The trial therefore reports the ASHA metric
(:data:`ASHA_KEY`) only from epoch ``drw_epoch + 1`` (one re-weighted epoch trained) on. Ray's ASHA ignores results
without its metric (``AsyncHyperBandScheduler.on_trial_result`` returns CONTINUE), and records a trial's first
result at the highest rung it has reached, so a DRW trial enters the rungs at its re-weighting epoch and is
never stopped before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ASHA_KEY",
    "CHOICE_KEY",
    "CHOSEN_PREFIX",
    "GROUPS",
    "SCORE_KEY",
    "VAL_METRICS",
    "Objective",
    "TrialScoring",
    "describe_variant",
    "judge_from",
    "scalarise",
    "score_mode",
    "scoring_for",
]

#: the per-epoch validation metrics of twohead.loop (``_val_entry``) a search may optimise
VAL_METRICS = ("val_top1", "val_many", "val_medium", "val_few", "val_worst_class", "val_ece")
GROUPS = ("top1", "many", "medium", "few", "worst_class")  # twohead.evaluation.GROUP_KEYS, reported per variant

# Keys a trial adds to each validated result (the Tune result, hence progress.csv and the searcher).
CHOICE_KEY = "chosen_variant"  # the variant chosen at this epoch
CHOSEN_PREFIX = "chosen/"  # chosen/<metric>: the chosen variant's value of each objective
SCORE_KEY = "search_score"  # scalarise() of the chosen values: the Optuna intermediate value
ASHA_KEY = "asha_score"  # the same score, only from judge_from() on: the metric ASHA compares


@dataclass(frozen=True)
class Objective:
    """One validation metric and its direction."""

    metric: str
    mode: str = "max"

    @property
    def sign(self) -> float:
        return 1.0 if self.mode == "max" else -1.0

    @property
    def direction(self) -> str:
        """Optuna's name for the mode."""
        return "maximize" if self.mode == "max" else "minimize"


def scalarise(values: Mapping[str, float], objectives: Iterable[Objective]) -> float:
    """The score of objective ``values`` (module docstring): one objective -> its value; several -> the mean of
    ``value`` (max) / ``-value`` (min)."""
    objs = list(objectives)
    if len(objs) == 1:
        return float(values[objs[0].metric])
    return sum(o.sign * float(values[o.metric]) for o in objs) / len(objs)


def score_mode(objectives: Iterable[Objective]) -> str:
    """How scores compare: the mode of a single objective, else max (the signed mean)."""
    objs = list(objectives)
    return objs[0].mode if len(objs) == 1 else "max"


def judge_from(method_name: str, drw_epoch: int) -> int:
    """The first epoch (1-based count) at which a trial of this method may be compared with others."""
    from twohead.methods import DEFERRED_REWEIGHT

    return int(drw_epoch) + 1 if method_name in DEFERRED_REWEIGHT else 1


def describe_variant(variant: str, default: str) -> str:
    """A variant in words, e.g. ``la_tau1.0`` -> ``logit adjustment tau=1.0 on the max reading``."""
    if variant.startswith("la_tau"):
        return f"logit adjustment tau={variant[len('la_tau') :]} on the {default} reading"
    if variant.startswith("taunorm"):
        return f"tau-normalisation tau={variant[len('taunorm') :]} ({default} reading)"
    return f"{variant} reading" + (" (raw: the configured one)" if variant == default else "")


@dataclass(frozen=True)
class TrialScoring:
    """How one trial turns a flat validation result into its chosen variant and score (module docstring).

    ``default`` is the trial's ``model.inference`` (the raw reading), ``judge_from`` its first comparable epoch."""

    objectives: tuple[Objective, ...]
    default: str = "max"
    posthoc: bool = True
    judge_from: int = 1

    def variants(self, result: Mapping[str, Any], split: str = "val") -> dict[str, dict[str, float]]:
        """``{variant: {metric: value}}`` of a flat result, the default reading first, then the loop's order; only
        finite numbers. ``split="val"``: a validated epoch's result (``val_by_inference_groups/sum/top1``, ...);
        ``split="test"``: a flattened ``metrics.json`` (``by_inference_groups/sum/top1``, ...), keys ``test_*``."""
        pre = "val_" if split == "val" else ""
        out: dict[str, dict[str, float]] = {self.default: {}}
        for key, value in result.items():
            if not _number(value):
                continue
            parts = key.split("/")
            if len(parts) == 3 and parts[0] in (f"{pre}by_inference_groups", f"{pre}posthoc_groups") and parts[2] in GROUPS:
                out.setdefault(parts[1], {})[f"{split}_{parts[2]}"] = float(value)
            elif len(parts) == 2 and parts[0] == f"{pre}posthoc":  # top-1 only, in histories without posthoc_groups
                out.setdefault(parts[1], {}).setdefault(f"{split}_top1", float(value))
        raw = out[self.default]
        for g in (*GROUPS, "ece"):  # the headline keys are the default reading's
            if _number(result.get(pre + g)):
                raw[f"{split}_{g}"] = float(result[pre + g])
        return out

    def choose(self, result: Mapping[str, Any]) -> tuple[str, dict[str, float]] | None:
        """(variant, its objective values) chosen on this validated result, or None without validation."""
        wanted = [o.metric for o in self.objectives]
        candidates = [
            (name, {m: vals[m] for m in wanted})
            for name, vals in self.variants(result).items()
            if all(m in vals for m in wanted) and (self.posthoc or name == self.default)
        ]
        if not candidates:
            return None
        # max() keeps the first of equal scores: the default reading, then the loop's order.
        return max(candidates, key=lambda c: scalarise(c[1], self.objectives) * _sign(self.objectives))

    def fields(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """The keys this trial adds to ``result``: chosen variant, chosen values, score and (from judge_from on)
        the ASHA metric. Empty for an epoch without validation."""
        chosen = self.choose(result)
        if chosen is None:
            return {}
        name, values = chosen
        score = scalarise(values, self.objectives)
        out: dict[str, Any] = {CHOICE_KEY: name, SCORE_KEY: score}
        out.update({CHOSEN_PREFIX + m: v for m, v in values.items()})
        epoch = result.get("epoch")
        if epoch is not None and int(epoch) >= self.judge_from:
            out[ASHA_KEY] = score
        return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _sign(objectives: Iterable[Objective]) -> float:
    return 1.0 if score_mode(objectives) == "max" else -1.0


def scoring_for(spec: Any, cfg: Any) -> TrialScoring:
    """The scoring of one trial of search ``spec`` whose TrainConfig is ``cfg``."""
    return TrialScoring(
        objectives=tuple(spec.objectives),
        default=cfg.model.inference,
        posthoc=bool(spec.posthoc),
        judge_from=judge_from(cfg.method.name, cfg.method.drw_epoch),
    )
