"""Hyper-parameter search spaces: YAML files parsed and validated before any trial runs (Ray-free).

A search space names the :class:`~twohead.config.TrainConfig` every trial starts from, what to optimise on the
validation split, the Optuna parameters and the search / resource settings::

    base: {preset: cifar10-lt, set: {method.name: twohead}}   # the TrainConfig every trial starts from
    objectives:             # validation metrics (val_*; test_* is refused); several -> a Pareto search
      - {metric: val_top1, mode: max}
      - {metric: val_worst_class, mode: max}
    # metric: val_top1      # the one-objective form: `metric` + `mode`
    # mode: max
    posthoc: true           # each trial picks its K-to-C reading / post-hoc correction on validation (default)
    params:
      u: {type: int, low: 2, high: 30}                        # Eq. 3: clusters of the largest class
      alpha: {type: float, low: 0.3, high: 1.0}               # Sec. 2.2: soft-label mass on the own cluster
      lambda: {type: float, low: 0.0, high: 3.0}              # L = L2 + lambda * L1
      clustering: {type: categorical, choices: [random, kmeans, hierarchical]}   # Fig. 4 right
      optim.lr: {type: float, low: 0.05, high: 0.2, log: true}
      method.mixup_alpha: {type: float, low: 0.2, high: 1.0, condition: {method.name: twohead_full}}
    reference:              # enqueued as the first trial and marked in the report
      label: paper (u=10, alpha=0.5, lambda=1.5, random)
      params: {u: 10, alpha: 0.5, lambda: 1.5, clustering: random}
    search: {num_samples: 40, max_concurrent: 6, seed: 0, asha: {grace_period: 20, reduction_factor: 3}}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0.16}

The file's shape is :mod:`rayjobs.search.space_schema` (pydantic), the parameters are resolved against the TrainConfig
in :mod:`rayjobs.search.space_params`, and what a trial optimises is :mod:`rayjobs.search.objectives`. This module puts them
together and checks what needs the whole space. A reference parameter left out takes the base config's value
(which must lie in the parameter's range).

Why validate here rather than let trials fail: a typo or an impossible range would otherwise only surface as
N failed trials on a cluster, after the study has been created. Every problem raises
:class:`SearchSpaceError` naming the file, the parameter and the allowed range, before Ray is touched.

This module imports neither Ray nor Optuna: :meth:`SearchSpec.suggest` only calls the ``suggest_*`` methods of
whatever Optuna-like trial it is given, so the parsing is unit-testable on its own.

(A little over 400 lines on purpose: :class:`SearchSpec` and the checks that tie the document's parts together
-- objectives, ASHA against the epochs, the reference against the ranges -- read best next to each other; the
document's shape and the parameters live in :mod:`rayjobs.search.space_schema` and :mod:`rayjobs.search.space_params`.)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayjobs.search.objectives import VAL_METRICS, Objective, score_mode
from rayjobs.search.space_params import ParamSpec, config_value, draw, is_active, parse_param
from rayjobs.search.space_schema import AshaSpec, Resources, SearchSettings, SearchSpaceError, SpaceDoc, validate_document
from twohead.config import ALIASES, ConfigError, TrainConfig, apply_overrides, load_config

__all__ = [
    "SearchSpaceError",
    "SearchSpaceWarning",
    "ParamSpec",
    "AshaSpec",
    "SearchSettings",
    "Resources",
    "Objective",
    "Reference",
    "SearchSpec",
    "ALIASES",
    "VAL_METRICS",
    "SPACES_DIR",
    "available_presets",
    "preset_path",
    "load_search_space",
    "parse_search_space",
]


def _presets_dir():
    """The preset YAML files: package data of ``rayjobs.search_spaces`` in an installed wheel, the repository's
    top-level ``search_spaces/`` folder in a checkout (the same files: the build ships that folder)."""
    import importlib.resources

    try:
        return importlib.resources.files("rayjobs.search_spaces")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "search_spaces"


SPACES_DIR = _presets_dir()
_CLI_SEARCH = ("num_samples", "max_concurrent", "seed", "n_startup_trials")
_CLI_RESOURCES = tuple(Resources.model_fields)


class SearchSpaceWarning(UserWarning):
    """A search space is valid but probably not what was meant (e.g. a parameter that is never sampled)."""


@dataclass(frozen=True)
class Reference:
    """A configuration to compare with: every active parameter's value (``given``, else the base config's)."""

    label: str
    params: Mapping[str, Any]
    given: Mapping[str, Any]  # as written in the file


# ---------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class SearchSpec:
    """A validated search space (see the module docstring for the YAML form)."""

    source: str  # the file (or preset) it came from, for messages
    base: TrainConfig
    objectives: tuple[Objective, ...] = (Objective("val_top1", "max"),)
    params: tuple[ParamSpec, ...] = ()
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: Resources = field(default_factory=Resources)
    study_name: str = "twohead"
    base_recipe: Mapping[str, Any] = field(default_factory=dict)  # the `base:` mapping as written
    posthoc: bool = True  # choose each trial's reading / post-hoc variant on validation (rayjobs.search.objectives)
    reference: Reference | None = None

    # ---- objectives ------------------------------------------------------------------------------------
    @property
    def multi(self) -> bool:
        """Several objectives: a Pareto search."""
        return len(self.objectives) > 1

    @property
    def metric(self) -> str:
        """The first objective's metric (the one metric of a single-objective search)."""
        return self.objectives[0].metric

    @property
    def mode(self) -> str:
        return self.objectives[0].mode

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def score_mode(self) -> str:
        """How trial scores compare (ASHA's mode): the single objective's mode, else max."""
        return score_mode(self.objectives)

    # ---- Optuna side -------------------------------------------------------------------------------
    def suggest(self, trial: Any) -> None:
        """Define-by-run space for Optuna: sample each active parameter (:func:`rayjobs.search.space_params.draw`)."""
        draw(self.params, self.base, trial)

    def __call__(self, trial: Any) -> None:  # OptunaSearch accepts any picklable callable as the space
        return self.suggest(trial)

    # ---- trial side ---------------------------------------------------------------------------------
    def overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Sampled ``{parameter name: value}`` -> ``{TrainConfig dotted key: value}``."""
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(by_name))
        if unknown:
            raise SearchSpaceError(
                f"{self.source}: trial parameters {unknown} are not in this search space; known: {sorted(by_name)}"
            )
        return {by_name[n].key: v for n, v in params.items()}

    def trial_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The validated TrainConfig of one trial: the base with the sampled values applied."""
        try:
            return apply_overrides(self.base, self.overrides(params)).validate()
        except ConfigError as exc:
            raise SearchSpaceError(f"{self.source}: trial parameters {dict(params)} give an invalid config: {exc}") from exc

    def fit_params(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The values of ``params`` (another search's) this space could have drawn, in its order, and the names
        dropped (unknown here, inactive under the others, or outside the range / choices)."""
        kept: dict[str, Any] = {}
        drawn: dict[str, Any] = {}
        for p in self.params:
            if p.name in params and is_active(p, drawn, self.base) and p.contains(params[p.name]):
                kept[p.name] = params[p.name]
                drawn[p.key] = params[p.name]
        return kept, sorted(set(params) - set(kept))

    @property
    def max_epochs(self) -> int:
        return self.search.asha.max_t if self.search.asha and self.search.asha.max_t else self.base.optim.epochs

    # ---- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON) of everything that defines the search; the base is fully resolved. One objective
        is written as ``metric`` / ``mode``, several as ``objectives``."""
        d: dict[str, Any] = {
            "source": self.source,
            "study_name": self.study_name,
            "base_recipe": dict(self.base_recipe),
            "base": self.base.to_dict(),
        }
        if self.multi:
            d["objectives"] = [{"metric": o.metric, "mode": o.mode} for o in self.objectives]
        else:
            d.update(metric=self.metric, mode=self.mode)
        d["posthoc"] = self.posthoc
        d["params"] = {p.name: p.to_dict() for p in self.params}
        if self.reference is not None:
            d["reference"] = {"label": self.reference.label, "params": dict(self.reference.given)}
        d["search"] = self.search.model_dump()
        d["resources"] = self.resources.model_dump()
        return d

    def replace(self, **changes: Any) -> SearchSpec:
        """A copy with CLI overrides applied, validated again.

        Accepted keys: ``num_samples``, ``max_concurrent``, ``seed``, ``n_startup_trials`` (search),
        ``cpus_per_trial``, ``gpus_per_trial``, ``workers_per_trial`` (resources), ``study_name``, and ``set`` (a list
        of ``key=value`` base-config overrides, as ``--set`` on the CLI).
        """
        search, res, spec = self.search.model_dump(), self.resources.model_dump(), self
        base_set = changes.pop("set", None)
        for k, v in changes.items():
            if v is None:
                continue
            if k in _CLI_SEARCH:
                search[k] = v
            elif k in _CLI_RESOURCES:
                res[k] = v
            elif k == "study_name":
                spec = dataclasses.replace(spec, study_name=v)
            else:
                raise TypeError(f"SearchSpec.replace() got an unexpected key {k!r}")
        doc = validate_document({"search": search, "resources": res}, self.source)
        spec = dataclasses.replace(spec, search=doc.search, resources=doc.resources)
        if base_set:
            try:
                base = apply_overrides(spec.base, list(base_set)).validate()
            except ConfigError as exc:
                raise SearchSpaceError(f"{self.source}: --set {list(base_set)}: {exc}") from exc
            recipe = dict(spec.base_recipe)
            recipe["cli_set"] = list(base_set)
            spec = dataclasses.replace(spec, base=base, base_recipe=recipe)
            if spec.reference is not None:  # a reference value left out follows the base
                spec = dataclasses.replace(spec, reference=_reference(spec, spec.reference.label, spec.reference.given))
        _validate_spec(spec)
        return spec


# ---------------------------------------------------------------------------------------------- loading
def available_presets() -> list[str]:
    """Names of the preset search spaces shipped in ``search_spaces/``."""
    return sorted(p.name.removesuffix(".yaml") for p in SPACES_DIR.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    path = SPACES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SearchSpaceError(
            f"unknown search-space preset {name!r}; available: {', '.join(available_presets()) or '(none)'} (in {SPACES_DIR})"
        )
    return Path(str(path))


def load_search_space(path_or_preset: str | Path) -> SearchSpec:
    """Load and validate a search space from a YAML file, or a preset name (``search_spaces/<name>.yaml``)."""
    import yaml

    p = Path(path_or_preset)
    if not p.suffix and not p.exists():
        p = preset_path(str(path_or_preset))
    if not p.is_file():
        raise SearchSpaceError(f"search-space file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{p}: not valid YAML: {exc}") from exc
    return parse_search_space(data, source=str(p), study_name=p.stem, base_dir=p.parent)


def parse_search_space(
    data: Any, *, source: str = "<search space>", study_name: str = "twohead", base_dir: str | Path | None = None
) -> SearchSpec:
    """Validate the parsed YAML ``data`` of a search space and build a :class:`SearchSpec`."""
    where = source
    doc = validate_document(data, where)
    base = _parse_base(doc, where, base_dir)
    if not doc.params:
        raise SearchSpaceError(f"{where}: `params` must list at least one parameter to search")
    params = tuple(parse_param(str(name), raw, where, base) for name, raw in doc.params.items())
    keys = [p.key for p in params]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        names = [p.name for p in params if p.key in dup]
        raise SearchSpaceError(f"{where}: parameters {names} all set the same config key(s) {dup}; keep one")
    spec = SearchSpec(
        source=where,
        base=base,
        objectives=_objectives(doc, where),
        params=params,
        search=doc.search,
        resources=doc.resources,
        study_name=str(doc.study_name or study_name),
        base_recipe=doc.base.model_dump(exclude_defaults=True),
        posthoc=doc.posthoc,
    )
    if doc.reference is not None:
        spec = dataclasses.replace(spec, reference=_reference(spec, doc.reference.label, doc.reference.params))
    _validate_spec(spec)
    return spec


def _parse_base(doc: SpaceDoc, where: str, base_dir: str | Path | None) -> TrainConfig:
    recipe = doc.base
    config_path = recipe.config
    if config_path and base_dir is not None and not Path(config_path).is_absolute():
        config_path = Path(base_dir) / config_path  # relative to the search-space file, like an include
    sets = recipe.set
    try:
        return load_config(config_path, preset=recipe.preset, overrides=dict(sets) if isinstance(sets, Mapping) else list(sets))
    except ConfigError as exc:
        raise SearchSpaceError(f"{where}: base config: {exc}") from exc


def _objectives(doc: SpaceDoc, where: str) -> tuple[Objective, ...]:
    if doc.objectives is not None:
        if doc.metric is not None or doc.mode is not None:
            raise SearchSpaceError(f"{where}: give either `metric` / `mode` (one objective) or `objectives`, not both")
        if not doc.objectives:
            raise SearchSpaceError(f"{where}: `objectives` must list at least one {{metric: val_..., mode: max}}")
        objs = tuple(Objective(o.metric, o.mode) for o in doc.objectives)
    else:
        objs = (Objective(doc.metric or "val_top1", doc.mode or "max"),)
    names = [o.metric for o in objs]
    for m in names:
        # The choice of configuration must never see the test set (test_* is reported, never optimised).
        if m.startswith("test_"):
            raise SearchSpaceError(
                f"{where}: metric={m!r} is a test metric; a search may only optimise a validation metric: {', '.join(VAL_METRICS)}"
            )
        if m not in VAL_METRICS:
            raise SearchSpaceError(f"{where}: metric={m!r} is unknown; allowed: {', '.join(VAL_METRICS)}")
    if len(set(names)) != len(names):
        raise SearchSpaceError(f"{where}: objectives {names} name a metric twice")
    return objs


def _reference(spec: SearchSpec, label: str, given: Mapping[str, Any]) -> Reference:
    """Every active parameter's value under the reference: given, or the base config's (which must be in range)."""
    what = f"{spec.source}: reference {label!r}"
    names = {p.name for p in spec.params}
    unknown = sorted(set(given) - names)
    if unknown:
        raise SearchSpaceError(f"{what}: parameters {unknown} are not searched; searched: {sorted(names)}")
    values: dict[str, Any] = {}
    drawn: dict[str, Any] = {}
    for p in spec.params:
        if not is_active(p, drawn, spec.base):
            if p.name in given:
                raise SearchSpaceError(f"{what}: parameter {p.name!r} is not sampled under the reference's other values")
            continue
        v = given[p.name] if p.name in given else config_value(spec.base, p.key)
        if not p.contains(v):
            rng = list(p.choices) if p.type == "categorical" else f"[{p.low}, {p.high}]"
            src = "" if p.name in given else " (not given: the base config's value)"
            raise SearchSpaceError(f"{what}: {p.name}={v!r}{src} is outside the parameter's range {rng}")
        values[p.name] = v
        drawn[p.key] = v
    spec.trial_config(values)  # a reference that gives an invalid config is refused here
    return Reference(label=label, params=values, given=dict(given))


# ------------------------------------------------------------------------------------------- validation
def _validate_spec(spec: SearchSpec) -> None:
    where = spec.source
    b = spec.base
    # ImageNet-LT ships an official validation list; the others carve val_per_class images from train.
    if b.data.dataset not in ("imagenet-lt",) and b.data.val_per_class <= 0:
        raise SearchSpaceError(
            f"{where}: metric={spec.metric!r} needs a validation split but the base config has data.val_per_class="
            f"{b.data.val_per_class}; set it > 0 (never select on the test set)"
        )
    if any(p.key == "data.val_per_class" for p in spec.params):
        raise SearchSpaceError(
            f"{where}: data.val_per_class cannot be searched: it changes the validation set the metric is measured on"
        )
    if spec.search.asha is not None:
        a, max_t = spec.search.asha, spec.max_epochs
        if any(p.key == "optim.epochs" for p in spec.params) and not a.max_t:
            raise SearchSpaceError(f"{where}: optim.epochs is searched: set search.asha.max_t to the largest epoch count")
        if not 1 <= a.grace_period <= max_t:
            raise SearchSpaceError(f"{where}: search.asha.grace_period={a.grace_period} must be in [1, max_t={max_t}] (epochs)")
    if not spec.study_name or "/" in spec.study_name or spec.study_name in (".", ".."):
        raise SearchSpaceError(f"{where}: study name {spec.study_name!r} must be a plain name (it names a folder)")

    # A condition that can never hold makes a parameter that is never sampled: almost always a mistake.
    searched = {p.key: p for p in spec.params}
    order = [q.key for q in spec.params]
    for p in spec.params:
        for key, allowed in p.condition:
            if key in searched and searched[key].type == "categorical":
                reachable = any(c in allowed for c in searched[key].choices)
            elif key in searched:
                reachable = True
            else:
                reachable = config_value(b, key) in allowed
            if not reachable:
                warnings.warn(
                    f"{where}: parameter {p.name!r} is only sampled when {key} in {list(allowed)}, which never holds "
                    f"(base {key}={config_value(b, key)!r}{'' if key not in searched else ', searched choices ' + str(list(searched[key].choices))})",
                    SearchSpaceWarning,
                    stacklevel=3,
                )
            if key in searched and order.index(key) > order.index(p.key):
                raise SearchSpaceError(
                    f"{where}: parameter {p.name!r}: condition on {key} refers to a parameter declared after it; declare {searched[key].name!r} first"
                )
