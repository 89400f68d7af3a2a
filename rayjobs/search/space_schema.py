"""The YAML document of a search space: its shape and types as pydantic models (Ray-free, Optuna-free).

Checks here need nothing but the key itself (a number, a choice, a range, an unknown key). What needs the
TrainConfig (parameter names, values the config allows, conditions) is :mod:`rayjobs.search.space_params`; what needs
the whole space (objectives, the ASHA grace period against the epochs, a validation split) is
:mod:`rayjobs.search.space`. Every pydantic error becomes part of one line,
``<file>: <where>: <key>=<value> <what is wrong>`` (:func:`validate_document`).

:class:`SearchSettings`, :class:`AshaSpec` and :class:`Resources` are also the settings a parsed
:class:`~rayjobs.search.space.SearchSpec` carries (frozen: a change is a new validated copy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from twohead.config import no_bool_for_number

__all__ = [
    "AshaSpec",
    "ObjectiveDoc",
    "ParamDoc",
    "ReferenceDoc",
    "Resources",
    "SearchSettings",
    "SearchSpaceError",
    "SpaceDoc",
    "validate_document",
]

PARAM_TYPES = ("int", "float", "categorical")


class SearchSpaceError(ValueError):
    """A search-space file is malformed: names the file, the parameter and the problem."""


class _Model(BaseModel):
    # Unknown keys are errors, inf / nan never a valid number, settings immutable once parsed.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info) -> Any:
        return no_bool_for_number(cls, v, info)  # `num_samples: true` is a typo, not a count


# ------------------------------------------------------------------------------------------- settings
class AshaSpec(_Model):
    """ASHA early stopping (Li et al. 2020) on the search score, ``time_attr`` = completed epochs."""

    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int = Field(0, ge=0)  # 0 -> the base config's optim.epochs


class SearchSettings(_Model):
    num_samples: int = Field(20, ge=1)
    max_concurrent: int = Field(1, ge=1)
    seed: int = 0  # sampler seed
    n_startup_trials: int = Field(10, ge=0)  # TPE's random start-up trials (Optuna's default)
    asha: AshaSpec | None = None

    @field_validator("asha", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v


class Resources(_Model):
    """Per-trial resources. Fractional GPUs pack several trials on one card (e.g. 0.16 -> 6 per GPU)."""

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    workers_per_trial: int = Field(1, ge=1)  # > 1: a TorchTrainer (DDP) per trial, each worker with the above

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():  # Ray only packs fractions of ONE GPU
            raise ValueError("above 1 it must be a whole number of GPUs")
        return v


# ------------------------------------------------------------------------------------------- document
def _number(v: Any) -> Any:
    # PyYAML reads `1e-4` (no dot) as a string: accept it, it is what people write for learning rates.
    if v is None:
        return v
    if isinstance(v, bool):
        raise ValueError("must be a number")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ValueError("must be a number") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class ParamDoc(_Model):
    """One parameter as written: ``{type: float, low: 0.1, high: 1.0, log: true, condition: {...}}``."""

    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] | None = None
    condition: dict[str, Any] | None = None

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PARAM_TYPES:
            raise ValueError(f"is unknown; allowed: {', '.join(PARAM_TYPES)}")
        return v

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _number(v)

    @field_validator("log", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v

    @field_validator("choices", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, list):
            raise ValueError("must be a non-empty list")
        return v

    @field_validator("condition", mode="before")
    @classmethod
    def _mapping(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, Mapping) or not v):
            raise ValueError("must be a mapping like {method.name: twohead_full}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> ParamDoc:
        if self.type == "categorical":
            for k in ("low", "high", "step"):
                if getattr(self, k) is not None:
                    raise ValueError(f"`{k}` does not apply to a categorical parameter (use choices)")
            if self.log:
                raise ValueError("`log` does not apply to a categorical parameter (use choices)")
            if not self.choices:
                raise ValueError(f"choices must be a non-empty list; got {self.choices!r}")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError(f"choices {self.choices} repeat a value")
            for c in self.choices:
                if not (c is None or isinstance(c, (bool, int, float, str))):
                    raise ValueError(f"choice {c!r} must be a number, string, bool or null")
            return self
        if self.choices is not None:
            raise ValueError("`choices` only applies to type: categorical")
        for k in ("low", "high"):
            if getattr(self, k) is None:
                raise ValueError(f"`{k}` is required for type: {self.type}")
        if self.type == "int":
            for k in ("low", "high", "step"):
                v = getattr(self, k)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"{k}={v!r} must be an integer for an int parameter")
        if not self.low < self.high:
            raise ValueError(f"empty range low={self.low} >= high={self.high}; need low < high")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step={self.step} must be > 0")
            if self.log and (self.type != "int" or self.step != 1):
                raise ValueError("step and log cannot be combined (Optuna samples log ranges continuously)")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0; got low={self.low}")
        return self


class ObjectiveDoc(_Model):
    metric: str
    mode: Literal["max", "min"] = "max"


class ReferenceDoc(_Model):
    """A configuration to compare with (e.g. the paper's): enqueued as the first trial, marked in the report."""

    label: str = "reference"
    params: dict[str, Any]


class BaseRecipe(_Model):
    preset: str | None = None
    config: str | None = None
    set: dict[str, Any] | list[str] = Field(default_factory=dict)

    @field_validator("set", mode="before")
    @classmethod
    def _none(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, (Mapping, list)):
            raise ValueError("must be a mapping of key: value (or a list of key=value)")
        return v


class SpaceDoc(_Model):
    """The whole file (see :mod:`rayjobs.search.space` for its meaning)."""

    base: BaseRecipe = Field(default_factory=BaseRecipe)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    objectives: list[ObjectiveDoc] | None = None
    posthoc: bool = True
    params: dict[str, ParamDoc] = Field(default_factory=dict)
    reference: ReferenceDoc | None = None
    search: SearchSettings = Field(default_factory=SearchSettings)
    resources: Resources = Field(default_factory=Resources)
    study_name: str | None = None
    description: str | None = None

    @field_validator("base", "search", "resources", mode="before")
    @classmethod
    def _empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("posthoc", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v


# ------------------------------------------------------------------------------------------------- errors
_MODELS = {
    (): SpaceDoc,
    ("base",): BaseRecipe,
    ("search",): SearchSettings,
    ("search", "asha"): AshaSpec,
    ("resources",): Resources,
    ("reference",): ReferenceDoc,
    ("objectives",): ObjectiveDoc,
    ("params",): ParamDoc,
}


def _where(loc: tuple) -> tuple[str, tuple]:
    """(words for the part of the file, the model path used to list allowed keys)."""
    if loc[:1] == ("params",) and len(loc) >= 2:
        return f"parameter {loc[1]!r}", ("params",)
    if loc[:1] == ("objectives",) and len(loc) >= 2:
        return f"objectives[{loc[1]}]", ("objectives",)
    return ".".join(map(str, loc)), tuple(loc)


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    """(where, what) of one pydantic error."""
    loc = tuple(err.get("loc", ()))
    kind, value = err.get("type"), err.get("input")
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    head = 2 if loc[:1] in (("params",), ("objectives",)) else 0
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        where, _ = _where(loc)
        if loc[:1] == ("params",) and len(loc) == 2:
            return where, f"spec must be a mapping like {{type: float, low: 0.1, high: 1.0}}; got {value!r}"
        return where, f"must be a mapping; got {value!r}"
    if kind == "missing":
        where, _ = _where(loc[:-1])
        return where, f"`{loc[-1]}` is required"
    where, _ = _where(loc[: max(head, len(loc) - 1)] if len(loc) > head else loc)
    field = loc[-1] if len(loc) > head else None
    if field is None:  # a rule of the whole parameter / section (model validator)
        return where, msg
    if kind == "value_error":
        return where, f"{field}={value!r} {msg}"
    return where, f"{field}={value!r}: {msg[:1].lower() + msg[1:]}"


def validate_document(data: Any, source: str) -> SpaceDoc:
    """The parsed YAML ``data`` as a :class:`SpaceDoc`, or one :class:`SearchSpaceError` line naming ``source``."""
    if not isinstance(data, Mapping):
        raise SearchSpaceError(
            f"{source}: a search space must be a mapping with keys {', '.join(SpaceDoc.model_fields)}; got {type(data).__name__}"
        )
    try:
        return SpaceDoc.model_validate(dict(data))
    except ValidationError as exc:
        merged: dict[str, list[str]] = {}
        unknown: dict[tuple, list[str]] = {}  # every unknown key of one section in one message
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "extra_forbidden":
                unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
                continue
            where, what = _describe(err)
            merged.setdefault(where, []).append(what)
        for parent, keys in unknown.items():
            where, path = _where(parent)
            allowed = ", ".join(_MODELS.get(path, SpaceDoc).model_fields)
            merged.setdefault(where, []).insert(0, f"unknown key(s) {keys}; allowed: {allowed}")
        parts = [f"{w}: {'; '.join(whats)}" if w else "; ".join(whats) for w, whats in merged.items()]
        raise SearchSpaceError(f"{source}: " + "; ".join(parts)) from None
