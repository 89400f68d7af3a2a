"""Hyper-parameter search spaces: YAML files parsed and validated before any trial runs (Ray-free).

A search space names the :class:`~twohead.config.TrainConfig` every trial starts from, the validation
metric to optimise, the Optuna parameters and the search / resource settings::

    base: {preset: cifar10-lt, set: {method.name: twohead}}   # the TrainConfig every trial starts from
    metric: val_top1        # a validation metric (val_*); test_* is refused
    mode: max
    params:
      u: {type: int, low: 2, high: 30}                        # Eq. 3: clusters of the largest class
      alpha: {type: float, low: 0.3, high: 1.0}               # Sec. 2.2: soft-label mass on the own cluster
      lambda: {type: float, low: 0.0, high: 3.0}              # L = L2 + lambda * L1
      clustering: {type: categorical, choices: [random, kmeans, hierarchical]}   # Fig. 4 right
      optim.lr: {type: float, low: 0.05, high: 0.2, log: true}
      method.mixup_alpha: {type: float, low: 0.2, high: 1.0, condition: {method.name: twohead_full}}
    search: {num_samples: 40, max_concurrent: 6, seed: 0, asha: {grace_period: 20, reduction_factor: 3}}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0.16}

Parameter names are the aliases of :func:`twohead.config.apply_overrides` (``u``, ``alpha``, ``lambda``,
``clustering``) or full dotted ``section.key`` names. A ``condition`` maps config keys (or earlier parameters)
to the value or list of values for which the parameter is sampled; otherwise the base value is kept.

Why validate here rather than let trials fail: a typo or an impossible range would otherwise only surface as
N failed trials on a cluster, after the study has been created. Every problem raises
:class:`SearchSpaceError` naming the file, the parameter and the allowed range, before Ray is touched.

This module imports neither Ray nor Optuna: :meth:`SearchSpec.suggest` only calls the ``suggest_*`` methods of
whatever Optuna-like trial it is given, so the parsing is unit-testable on its own.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twohead.config import ConfigError, TrainConfig, apply_overrides, load_config

__all__ = [
    "SearchSpaceError",
    "SearchSpaceWarning",
    "ParamSpec",
    "AshaSpec",
    "SearchSettings",
    "Resources",
    "SearchSpec",
    "ALIASES",
    "VAL_METRICS",
    "SPACES_DIR",
    "available_presets",
    "preset_path",
    "load_search_space",
    "parse_search_space",
]

#: search-parameter aliases; kept equal to twohead.config's override aliases (asserted in the tests)
from twohead.config import ALIASES  # noqa: E402 - the search's parameter names are the config's aliases

#: the per-epoch validation metrics the training loop reports (twohead.loop Reporter contract); the choice
#: of configuration may only use these. test_* metrics are reported on the last epoch and never optimised.
VAL_METRICS = ("val_top1", "val_many", "val_medium", "val_few")


#: where the preset search spaces live (repository root / search_spaces)
def _presets_dir():
    """The preset YAML files: package data of ``rayjobs.search_spaces`` in an installed wheel, the repository's
    top-level ``search_spaces/`` folder in a checkout (the same files: the build ships that folder)."""
    import importlib.resources

    try:
        return importlib.resources.files("rayjobs.search_spaces")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "search_spaces"


SPACES_DIR = _presets_dir()

_TOP_KEYS = ("base", "metric", "mode", "params", "search", "resources", "study_name", "description")
_BASE_KEYS = ("preset", "config", "set")
_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "condition")
_SEARCH_KEYS = ("num_samples", "max_concurrent", "seed", "n_startup_trials", "asha")
_ASHA_KEYS = ("grace_period", "reduction_factor", "max_t")
_RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial", "workers_per_trial")
_TYPES = ("int", "float", "categorical")


class SearchSpaceError(ValueError):
    """A search-space file is malformed: names the file, the parameter and the problem."""


class SearchSpaceWarning(UserWarning):
    """A search space is valid but probably not what was meant (e.g. a parameter that is never sampled)."""


# ---------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ParamSpec:
    """One Optuna parameter. ``name`` is what Optuna / the dashboard show, ``key`` the TrainConfig field."""

    name: str
    key: str
    type: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    condition: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (config key, allowed values), all must hold

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high)
            if self.log:
                d["log"] = True
            if self.step is not None:
                d["step"] = self.step
        if self.condition:
            d["condition"] = {k: list(v) for k, v in self.condition}
        return d


@dataclass(frozen=True)
class AshaSpec:
    """ASHA early stopping on the validation metric (Li et al. 2020), ``time_attr`` = completed epochs."""

    grace_period: int = 1
    reduction_factor: float = 3.0
    max_t: int = 0  # 0 -> the base config's optim.epochs


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 20
    max_concurrent: int = 1
    seed: int = 0  # TPE sampler seed
    n_startup_trials: int = 10  # TPE's random start-up trials (Optuna's default)
    asha: AshaSpec | None = None


@dataclass(frozen=True)
class Resources:
    """Per-trial resources. Fractional GPUs pack several trials on one card (e.g. 0.16 -> 6 per GPU)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1  # > 1: a TorchTrainer (DDP) per trial, each worker with the resources above


@dataclass(frozen=True)
class SearchSpec:
    """A validated search space (see the module docstring for the YAML form)."""

    source: str  # the file (or preset) it came from, for messages
    base: TrainConfig
    metric: str = "val_top1"
    mode: str = "max"
    params: tuple[ParamSpec, ...] = ()
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: Resources = field(default_factory=Resources)
    study_name: str = "twohead"
    base_recipe: Mapping[str, Any] = field(default_factory=dict)  # the `base:` mapping as written

    # ---- Optuna side -------------------------------------------------------------------------------
    def suggest(self, trial: Any) -> None:
        """Define-by-run space for Optuna (and Ray Tune's ``OptunaSearch``): sample each active parameter.

        A conditional parameter is sampled only when its condition holds for the values drawn so far
        (falling back to the base config), so Optuna's TPE sees it only in the trials where it matters.
        """
        drawn: dict[str, Any] = {}
        for p in self.params:
            if not self._active(p, drawn):
                continue
            if p.type == "int":
                step = int(p.step) if p.step is not None else 1
                drawn[p.key] = trial.suggest_int(p.name, int(p.low), int(p.high), step=step, log=p.log)
            elif p.type == "float":
                drawn[p.key] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            else:
                drawn[p.key] = trial.suggest_categorical(p.name, list(p.choices))
        return None

    def __call__(self, trial: Any) -> None:  # OptunaSearch accepts any picklable callable as the space
        return self.suggest(trial)

    def _active(self, p: ParamSpec, drawn: Mapping[str, Any]) -> bool:
        return all(drawn.get(key, _get(self.base, key)) in allowed for key, allowed in p.condition)

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

    @property
    def max_epochs(self) -> int:
        return self.search.asha.max_t if self.search.asha and self.search.asha.max_t else self.base.optim.epochs

    # ---- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON) of everything that defines the search; the base is fully resolved."""
        s = self.search
        return {
            "source": self.source,
            "study_name": self.study_name,
            "base_recipe": dict(self.base_recipe),
            "base": self.base.to_dict(),
            "metric": self.metric,
            "mode": self.mode,
            "params": {p.name: p.to_dict() for p in self.params},
            "search": {
                "num_samples": s.num_samples,
                "max_concurrent": s.max_concurrent,
                "seed": s.seed,
                "n_startup_trials": s.n_startup_trials,
                "asha": dataclasses.asdict(s.asha) if s.asha else None,
            },
            "resources": dataclasses.asdict(self.resources),
        }

    def replace(self, **changes: Any) -> SearchSpec:
        """A copy with CLI overrides applied, validated again.

        Accepted keys: ``num_samples``, ``max_concurrent``, ``seed`` (search), ``cpus_per_trial``,
        ``gpus_per_trial``, ``workers_per_trial`` (resources), ``study_name``, and ``set`` (a list of
        ``key=value`` base-config overrides, as ``--set`` on the CLI).
        """
        search, res, spec = self.search, self.resources, self
        base_set = changes.pop("set", None)
        for k, v in changes.items():
            if v is None:
                continue
            if k in ("num_samples", "max_concurrent", "seed", "n_startup_trials"):
                search = dataclasses.replace(search, **{k: v})
            elif k in _RESOURCE_KEYS:
                res = dataclasses.replace(res, **{k: v})
            elif k == "study_name":
                spec = dataclasses.replace(spec, study_name=v)
            else:
                raise TypeError(f"SearchSpec.replace() got an unexpected key {k!r}")
        spec = dataclasses.replace(spec, search=search, resources=res)
        if base_set:
            try:
                base = apply_overrides(spec.base, list(base_set)).validate()
            except ConfigError as exc:
                raise SearchSpaceError(f"{self.source}: --set {list(base_set)}: {exc}") from exc
            recipe = dict(spec.base_recipe)
            recipe["cli_set"] = list(base_set)
            spec = dataclasses.replace(spec, base=base, base_recipe=recipe)
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
    if not isinstance(data, Mapping):
        raise SearchSpaceError(
            f"{where}: a search space must be a mapping with keys {', '.join(_TOP_KEYS)}; got {type(data).__name__}"
        )
    _no_unknown(data, _TOP_KEYS, f"{where}")

    recipe = data.get("base") or {}
    base = _parse_base(recipe, where, base_dir)
    if "params" not in data or not data["params"]:
        raise SearchSpaceError(f"{where}: `params` must list at least one parameter to search")
    if not isinstance(data["params"], Mapping):
        raise SearchSpaceError(f"{where}: `params` must be a mapping of parameter name -> spec")

    params: list[ParamSpec] = []
    for name, raw in data["params"].items():
        params.append(_parse_param(str(name), raw, where, base, [q.key for q in params]))
    keys = [p.key for p in params]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        names = [p.name for p in params if p.key in dup]
        raise SearchSpaceError(f"{where}: parameters {names} all set the same config key(s) {dup}; keep one")

    spec = SearchSpec(
        source=where,
        base=base,
        metric=str(data.get("metric", "val_top1")),
        mode=str(data.get("mode", "max")),
        params=tuple(params),
        search=_parse_search(data.get("search") or {}, where),
        resources=_parse_resources(data.get("resources") or {}, where),
        study_name=str(data.get("study_name") or study_name),
        base_recipe=dict(recipe) if isinstance(recipe, Mapping) else {},
    )
    _validate_spec(spec)
    return spec


# ------------------------------------------------------------------------------------------ parse helpers
def _no_unknown(d: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise SearchSpaceError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def _parse_base(recipe: Any, where: str, base_dir: str | Path | None) -> TrainConfig:
    if not isinstance(recipe, Mapping):
        raise SearchSpaceError(f"{where}: `base` must be a mapping with keys {', '.join(_BASE_KEYS)}")
    _no_unknown(recipe, _BASE_KEYS, f"{where}: base")
    config_path = recipe.get("config")
    if config_path and base_dir is not None and not Path(config_path).is_absolute():
        config_path = Path(base_dir) / config_path  # relative to the search-space file, like an include
    sets = recipe.get("set") or {}
    if not isinstance(sets, (Mapping, list)):
        raise SearchSpaceError(f"{where}: base.set must be a mapping of key: value (or a list of key=value)")
    try:
        return load_config(
            config_path, preset=recipe.get("preset"), overrides=dict(sets) if isinstance(sets, Mapping) else list(sets)
        )
    except ConfigError as exc:
        raise SearchSpaceError(f"{where}: base config: {exc}") from exc


def _number(v: Any, what: str, integer: bool) -> float | int:
    # PyYAML reads `1e-4` (no dot) as a string: accept it, it is what people write for learning rates.
    if isinstance(v, bool):
        raise SearchSpaceError(f"{what}={v!r} must be a number")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise SearchSpaceError(f"{what}={v!r} must be a number") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SearchSpaceError(f"{what}={v!r} must be a finite number")
    if integer:
        if float(v) != int(v):
            raise SearchSpaceError(f"{what}={v!r} must be an integer for an int parameter")
        return int(v)
    return float(v)


def _field_type(key: str) -> Any:
    """The plain Python type of a config key (int, float, bool, str or tuple); Literal choices count as str."""
    section, name = key.split(".", 1)
    ann = type(getattr(TrainConfig(), section)).model_fields[name].annotation
    while typing.get_origin(ann) in (typing.Union, types.UnionType, typing.Annotated):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is typing.Literal:
        return str
    return typing.get_origin(ann) or ann


def _get(cfg: TrainConfig, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def _resolve_key(name: str, what: str) -> str:
    """Alias or dotted key -> TrainConfig key, or SearchSpaceError naming what is allowed."""
    key = ALIASES.get(name, name)
    sections = list(TrainConfig.model_fields)
    if "." not in key:
        raise SearchSpaceError(
            f"{what}: unknown parameter; use one of the aliases {', '.join(ALIASES)} or a dotted TrainConfig key "
            f"section.key (sections: {', '.join(sections)})"
        )
    section, attr = key.split(".", 1)
    if section not in sections:
        raise SearchSpaceError(
            f"{what}: unknown parameter: config section {section!r} does not exist; sections: {', '.join(sections)}"
        )
    allowed = list(type(getattr(TrainConfig(), section)).model_fields)
    if attr not in allowed:
        raise SearchSpaceError(
            f"{what}: unknown parameter: {key} is not a TrainConfig key; {section}.* keys: {', '.join(allowed)}"
        )
    return key


def _parse_param(name: str, raw: Any, where: str, base: TrainConfig, earlier_keys: list[str]) -> ParamSpec:
    what = f"{where}: parameter {name!r}"
    key = _resolve_key(name, what)
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{what}: spec must be a mapping like {{type: float, low: 0.1, high: 1.0}}; got {raw!r}")
    _no_unknown(raw, _PARAM_KEYS, what)
    typ = raw.get("type")
    if typ not in _TYPES:
        raise SearchSpaceError(f"{what}: type={typ!r} is unknown; allowed: {', '.join(_TYPES)}")

    field_t = _field_type(key)
    if typ == "int" and field_t not in (int, float):
        raise SearchSpaceError(f"{what}: type int does not fit config key {key} of type {getattr(field_t, '__name__', field_t)}")
    if typ == "float" and field_t is not float:
        raise SearchSpaceError(
            f"{what}: type float does not fit config key {key} of type {getattr(field_t, '__name__', field_t)}"
            + (" (use type: int)" if field_t is int else " (use type: categorical)")
        )

    condition = _parse_condition(raw.get("condition"), what, earlier_keys)
    cond_overrides = {k: allowed[0] for k, allowed in condition}
    if typ == "categorical":
        for k in ("low", "high", "log", "step"):
            if k in raw:
                raise SearchSpaceError(f"{what}: `{k}` does not apply to a categorical parameter (use choices)")
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"{what}: choices must be a non-empty list; got {choices!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{what}: choices {choices} repeat a value")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise SearchSpaceError(f"{what}: choice {c!r} must be a number, string, bool or null")
            _check_value(base, key, c, cond_overrides, f"{what}: choice {c!r}")
        return ParamSpec(name=name, key=key, type=typ, choices=tuple(choices), condition=condition)

    if "choices" in raw:
        raise SearchSpaceError(f"{what}: `choices` only applies to type: categorical")
    for k in ("low", "high"):
        if k not in raw:
            raise SearchSpaceError(f"{what}: `{k}` is required for type: {typ}")
    integer = typ == "int"
    low = _number(raw["low"], f"{what}: low", integer)
    high = _number(raw["high"], f"{what}: high", integer)
    if not low < high:
        raise SearchSpaceError(f"{what}: empty range low={low} >= high={high}; need low < high")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{what}: log={log!r} must be true or false")
    step = raw.get("step")
    if step is not None:
        step = _number(step, f"{what}: step", integer)
        if step <= 0:
            raise SearchSpaceError(f"{what}: step={step} must be > 0")
        if log and (not integer or step != 1):
            raise SearchSpaceError(f"{what}: step and log cannot be combined (Optuna samples log ranges continuously)")
    if log and low <= 0:
        raise SearchSpaceError(f"{what}: log=true needs low > 0; got low={low}")
    for end, v in (("low", low), ("high", high)):
        _check_value(base, key, v, cond_overrides, f"{what}: {end}={v}")
    return ParamSpec(name=name, key=key, type=typ, low=low, high=high, log=log, step=step, condition=condition)


def _check_value(base: TrainConfig, key: str, value: Any, cond: Mapping[str, Any], what: str) -> None:
    """Reuse TrainConfig.validate on a range endpoint / choice, with its condition applied (one rule set)."""
    try:
        apply_overrides(base, {**cond, key: value}).validate()
    except ConfigError as exc:
        raise SearchSpaceError(f"{what} is outside what the config allows: {exc}") from None


def _parse_condition(raw: Any, what: str, earlier_keys: list[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise SearchSpaceError(f"{what}: condition must be a mapping like {{method.name: twohead_full}}; got {raw!r}")
    out = []
    for ck, allowed in raw.items():
        ckey = _resolve_key(str(ck), f"{what}: condition on {ck!r}")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:
            raise SearchSpaceError(f"{what}: condition on {ck!r} lists no values")
        out.append((ckey, values))
    return tuple(out)


def _parse_search(raw: Any, where: str) -> SearchSettings:
    what = f"{where}: search"
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{what} must be a mapping with keys {', '.join(_SEARCH_KEYS)}")
    _no_unknown(raw, _SEARCH_KEYS, what)
    asha_raw = raw.get("asha")
    asha = None
    if asha_raw not in (None, False):
        if asha_raw is True:
            asha_raw = {}
        if not isinstance(asha_raw, Mapping):
            raise SearchSpaceError(f"{what}.asha must be a mapping with keys {', '.join(_ASHA_KEYS)} (or false)")
        _no_unknown(asha_raw, _ASHA_KEYS, f"{what}.asha")
        asha = AshaSpec(
            grace_period=int(_number(asha_raw.get("grace_period", 1), f"{what}.asha.grace_period", True)),
            reduction_factor=float(_number(asha_raw.get("reduction_factor", 3), f"{what}.asha.reduction_factor", False)),
            max_t=int(_number(asha_raw.get("max_t", 0), f"{what}.asha.max_t", True)),
        )
    d = SearchSettings()
    return SearchSettings(
        num_samples=int(_number(raw.get("num_samples", d.num_samples), f"{what}.num_samples", True)),
        max_concurrent=int(_number(raw.get("max_concurrent", d.max_concurrent), f"{what}.max_concurrent", True)),
        seed=int(_number(raw.get("seed", d.seed), f"{what}.seed", True)),
        n_startup_trials=int(_number(raw.get("n_startup_trials", d.n_startup_trials), f"{what}.n_startup_trials", True)),
        asha=asha,
    )


def _parse_resources(raw: Any, where: str) -> Resources:
    what = f"{where}: resources"
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{what} must be a mapping with keys {', '.join(_RESOURCE_KEYS)}")
    _no_unknown(raw, _RESOURCE_KEYS, what)
    d = Resources()
    return Resources(
        cpus_per_trial=float(_number(raw.get("cpus_per_trial", d.cpus_per_trial), f"{what}.cpus_per_trial", False)),
        gpus_per_trial=float(_number(raw.get("gpus_per_trial", d.gpus_per_trial), f"{what}.gpus_per_trial", False)),
        workers_per_trial=int(_number(raw.get("workers_per_trial", d.workers_per_trial), f"{what}.workers_per_trial", True)),
    )


# ------------------------------------------------------------------------------------------- validation
def _validate_spec(spec: SearchSpec) -> None:
    where = spec.source
    # The choice of configuration must never see the test set (test_* is reported, never optimised).
    if spec.metric.startswith("test_"):
        raise SearchSpaceError(
            f"{where}: metric={spec.metric!r} is a test metric; a search may only optimise a validation metric: {', '.join(VAL_METRICS)}"
        )
    if spec.metric not in VAL_METRICS:
        raise SearchSpaceError(f"{where}: metric={spec.metric!r} is unknown; allowed: {', '.join(VAL_METRICS)}")
    if spec.mode not in ("max", "min"):
        raise SearchSpaceError(f"{where}: mode={spec.mode!r} must be max or min")
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

    s = spec.search
    if s.num_samples < 1:
        raise SearchSpaceError(f"{where}: search.num_samples={s.num_samples} must be >= 1")
    if s.max_concurrent < 1:
        raise SearchSpaceError(f"{where}: search.max_concurrent={s.max_concurrent} must be >= 1")
    if s.n_startup_trials < 0:
        raise SearchSpaceError(f"{where}: search.n_startup_trials={s.n_startup_trials} must be >= 0")
    if s.asha is not None:
        a, max_t = s.asha, spec.max_epochs
        if any(p.key == "optim.epochs" for p in spec.params) and not a.max_t:
            raise SearchSpaceError(f"{where}: optim.epochs is searched: set search.asha.max_t to the largest epoch count")
        if a.max_t < 0 or max_t < 1:
            raise SearchSpaceError(f"{where}: search.asha.max_t={a.max_t} must be >= 1 (0 = the base optim.epochs)")
        if not 1 <= a.grace_period <= max_t:
            raise SearchSpaceError(f"{where}: search.asha.grace_period={a.grace_period} must be in [1, max_t={max_t}] (epochs)")
        if a.reduction_factor <= 1:
            raise SearchSpaceError(f"{where}: search.asha.reduction_factor={a.reduction_factor} must be > 1")

    r = spec.resources
    if r.cpus_per_trial <= 0:
        raise SearchSpaceError(f"{where}: resources.cpus_per_trial={r.cpus_per_trial} must be > 0")
    if r.gpus_per_trial < 0:
        raise SearchSpaceError(f"{where}: resources.gpus_per_trial={r.gpus_per_trial} must be >= 0")
    if r.gpus_per_trial > 1 and not float(r.gpus_per_trial).is_integer():
        # Ray only packs fractions of ONE GPU; more than one must be whole cards.
        raise SearchSpaceError(f"{where}: resources.gpus_per_trial={r.gpus_per_trial}: above 1 it must be a whole number of GPUs")
    if r.workers_per_trial < 1:
        raise SearchSpaceError(f"{where}: resources.workers_per_trial={r.workers_per_trial} must be >= 1")
    if not spec.study_name or "/" in spec.study_name or spec.study_name in (".", ".."):
        raise SearchSpaceError(f"{where}: study name {spec.study_name!r} must be a plain name (it names a folder)")

    # A condition that can never hold makes a parameter that is never sampled: almost always a mistake.
    searched = {p.key: p for p in spec.params}
    for p in spec.params:
        for key, allowed in p.condition:
            if key in searched and searched[key].type == "categorical":
                reachable = any(c in allowed for c in searched[key].choices)
            elif key in searched:
                reachable = True
            else:
                reachable = _get(b, key) in allowed
            if not reachable:
                warnings.warn(
                    f"{where}: parameter {p.name!r} is only sampled when {key} in {list(allowed)}, which never holds "
                    f"(base {key}={_get(b, key)!r}{'' if key not in searched else ', searched choices ' + str(list(searched[key].choices))})",
                    SearchSpaceWarning,
                    stacklevel=3,
                )
        for key, _ in p.condition:
            if key in searched and [q.key for q in spec.params].index(key) > [q.key for q in spec.params].index(p.key):
                raise SearchSpaceError(
                    f"{where}: parameter {p.name!r}: condition on {key} refers to a parameter declared after it; declare {searched[key].name!r} first"
                )
