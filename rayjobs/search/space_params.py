"""Search parameters resolved against :class:`~twohead.config.TrainConfig` (Ray-free, Optuna-free).

A parameter is named by an alias of :func:`twohead.config.apply_overrides` (``u``, ``alpha``, ``lambda``,
``clustering``) or a dotted ``section.key``; its type must fit the config field, and both ends of its range (each
choice) must give a valid config under its condition: the config's own rules (``TrainConfig.validate``) decide,
so a search can never propose a configuration a training run would refuse. A ``condition`` maps config keys (or
earlier parameters) to the value or list of values for which the parameter is sampled; otherwise the base value
is kept.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rayjobs.search.space_schema import ParamDoc, SearchSpaceError
from twohead.config import ALIASES, ConfigError, TrainConfig, apply_overrides

__all__ = ["ParamSpec", "config_value", "draw", "is_active", "parse_param", "resolve_key"]

Condition = tuple[tuple[str, tuple[Any, ...]], ...]  # (config key, allowed values), all must hold


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
    condition: Condition = ()

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

    def contains(self, value: Any) -> bool:
        """Could Optuna have drawn ``value`` for this parameter (type, range, step, choices)?"""
        if self.type == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and float(value) != int(value):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is not None:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True


def config_value(cfg: TrainConfig, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def is_active(p: ParamSpec, drawn: Mapping[str, Any], base: TrainConfig) -> bool:
    """Does ``p``'s condition hold for the config keys ``drawn`` so far (the base config for the others)?"""
    return all(drawn.get(key, config_value(base, key)) in allowed for key, allowed in p.condition)


def draw(params: tuple[ParamSpec, ...], base: TrainConfig, trial: Any) -> dict[str, Any]:
    """Define-by-run: sample each active parameter on an Optuna-like ``trial``; returns ``{config key: value}``.

    A conditional parameter is sampled only when its condition holds for the values drawn so far (falling back to
    the base config), so the sampler sees it only in the trials where it matters."""
    drawn: dict[str, Any] = {}
    for p in params:
        if not is_active(p, drawn, base):
            continue
        if p.type == "int":
            step = int(p.step) if p.step is not None else 1
            drawn[p.key] = trial.suggest_int(p.name, int(p.low), int(p.high), step=step, log=p.log)
        elif p.type == "float":
            drawn[p.key] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        else:
            drawn[p.key] = trial.suggest_categorical(p.name, list(p.choices))
    return drawn


# ---------------------------------------------------------------------------------------------- parsing
def _field_type(key: str) -> Any:
    """The plain Python type of a config key (int, float, bool, str or tuple); Literal choices count as str."""
    section, name = key.split(".", 1)
    ann = type(getattr(TrainConfig(), section)).model_fields[name].annotation
    while typing.get_origin(ann) in (typing.Union, types.UnionType, typing.Annotated):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is typing.Literal:
        return str
    return typing.get_origin(ann) or ann


def resolve_key(name: str, what: str) -> str:
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


def _check_value(base: TrainConfig, key: str, value: Any, cond: Mapping[str, Any], what: str) -> None:
    """Reuse TrainConfig.validate on a range endpoint / choice, with its condition applied (one rule set)."""
    try:
        apply_overrides(base, {**cond, key: value}).validate()
    except ConfigError as exc:
        raise SearchSpaceError(f"{what} is outside what the config allows: {exc}") from None


def _condition(raw: Mapping[str, Any] | None, what: str) -> Condition:
    out = []
    for ck, allowed in (raw or {}).items():
        ckey = resolve_key(str(ck), f"{what}: condition on {ck!r}")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:
            raise SearchSpaceError(f"{what}: condition on {ck!r} lists no values")
        out.append((ckey, values))
    return tuple(out)


def parse_param(name: str, doc: ParamDoc, where: str, base: TrainConfig) -> ParamSpec:
    """The :class:`ParamSpec` of parameter ``name`` as written in ``doc``, checked against ``base``."""
    what = f"{where}: parameter {name!r}"
    key = resolve_key(name, what)
    field_t = _field_type(key)
    shown = getattr(field_t, "__name__", field_t)
    if doc.type == "int" and field_t not in (int, float):
        raise SearchSpaceError(f"{what}: type int does not fit config key {key} of type {shown}")
    if doc.type == "float" and field_t is not float:
        raise SearchSpaceError(
            f"{what}: type float does not fit config key {key} of type {shown}"
            + (" (use type: int)" if field_t is int else " (use type: categorical)")
        )
    condition = _condition(doc.condition, what)
    cond = {k: allowed[0] for k, allowed in condition}
    if doc.type == "categorical":
        for c in doc.choices:
            _check_value(base, key, c, cond, f"{what}: choice {c!r}")
        return ParamSpec(name=name, key=key, type="categorical", choices=tuple(doc.choices), condition=condition)
    integer = doc.type == "int"
    conv = int if integer else float
    low, high = conv(doc.low), conv(doc.high)
    step = None if doc.step is None else conv(doc.step)
    for end, v in (("low", low), ("high", high)):
        _check_value(base, key, v, cond, f"{what}: {end}={v}")
    return ParamSpec(name=name, key=key, type=doc.type, low=low, high=high, log=doc.log, step=step, condition=condition)
