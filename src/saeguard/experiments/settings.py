"""An experiment's settings as JSON: saved with every run, merged from ``--config`` over the defaults."""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar, Union, get_args, get_origin

from saeguard.config import FitConfig, check_field, type_hints
from saeguard.errors import SaeguardError, require
from saeguard.io import to_jsonable

T = TypeVar("T")


def settings_dict(config: Any) -> dict[str, Any]:
    """An experiment's settings as plain JSON (``fit`` as :meth:`FitConfig.to_dict`)."""
    data = to_jsonable(config)
    if isinstance(getattr(config, "fit", None), FitConfig):
        data["fit"] = config.fit.to_dict()
    return data


def settings_from_dict(default: T, data: Mapping[str, Any], where: str = "experiment settings") -> T:
    """``default`` (a settings dataclass) with the fields of ``data`` replaced; unknown keys refused.

    ``fit`` is merged over the default's fit; nested settings (and lists of them) recurse. Every
    other value is checked against its field's type hint, element by element for lists and
    dicts (``list[float]``, ``dict[str, Any]``, ``int | None``...), as a finite number, and against
    the field's ``min``/``max`` metadata (:func:`saeguard.fields.check_field`).

    Raises:
        SaeguardError: ``data`` is not a JSON object, names an unknown setting, or holds a value of
            the wrong type or out of range (one line naming the setting, e.g.
            ``sequential settings: utility_target must be a number, got 'high'``).
    """
    require(isinstance(data, Mapping), f"{where} must be a JSON object, got {type(data).__name__}")
    cls = type(default)
    specs = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(specs))
    require(not unknown, f"unknown {where} {unknown}: use some of {sorted(specs)}")
    hints = type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(default, name)
        if isinstance(current, FitConfig):
            require(isinstance(value, Mapping), f"{where}.{name} must be a JSON object of fit settings")
            values[name] = FitConfig.from_dict(current.to_dict() | dict(value), where=f"{where}.{name}")
        elif dataclasses.is_dataclass(current):
            values[name] = settings_from_dict(current, value, f"{where}.{name}")
        else:
            values[name] = _value(specs[name], hints[name], value, where)
    return replace(default, **values)  # type: ignore[type-var]


def _build(cls: type[T], data: Any, where: str) -> T:
    """One settings object of ``cls`` from a JSON object holding its fields (each checked as above)."""
    require(isinstance(data, Mapping), f"{where} must be a JSON object, got {type(data).__name__}")
    specs = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(specs))
    require(not unknown, f"unknown {where} settings {unknown}: use some of {sorted(specs)}")
    hints = type_hints(cls)
    values = {name: _value(specs[name], hints[name], value, where) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise SaeguardError(f"{where}: {error}: give every required field") from None


def _value(spec: dataclasses.Field, hint: Any, value: Any, where: str) -> Any:
    """``value`` for the field ``spec`` (type ``hint``): dataclasses built, everything else checked."""
    item = _optional(hint, value)
    origin = get_origin(item)
    if origin is list and dataclasses.is_dataclass(get_args(item)[0]):
        require(isinstance(value, list), f"{where}.{spec.name} must be a list of objects")
        element = get_args(item)[0]
        return [_build(element, v, f"{where}.{spec.name}[{i}]") for i, v in enumerate(value)]
    if isinstance(item, type) and dataclasses.is_dataclass(item):
        return _build(item, value, f"{where}.{spec.name}")
    try:
        _check(spec, value, hint, spec.name)
    except SaeguardError as error:
        raise SaeguardError(f"{where}: {error}") from None
    return value


def _optional(hint: Any, value: Any) -> Any:
    """The non-None member of ``X | None`` when ``value`` is not None; ``hint`` itself otherwise."""
    if get_origin(hint) in (Union, types.UnionType) and value is not None:
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return hint


def _check(spec: dataclasses.Field, value: Any, hint: Any, name: str) -> None:
    """Check ``value`` against ``hint``, recursing into lists and dicts; ``name`` is its path.

    Raises:
        SaeguardError: ``<path> must be ..., got ...`` for the first value that does not fit.
    """
    inner = _optional(hint, value)  # containers are checked inside; a leaf against the whole hint
    origin, args = get_origin(inner), get_args(inner)
    if origin in (list, tuple, set, frozenset):
        require(isinstance(value, list), f"{name} must be a list, got {value!r}")
        for index, element in enumerate(value):
            _check(spec, element, args[0] if args else Any, f"{name}[{index}]")
        return
    if origin is dict or inner is dict:
        require(isinstance(value, Mapping), f"{name} must be a JSON object, got {value!r}")
        key_hint, value_hint = args if len(args) == 2 else (Any, Any)
        for key, element in value.items():
            _check(spec, key, key_hint, f"{name} key {key!r}")
            _check(spec, element, value_hint, f"{name}.{key}")
        return
    if hint is Any:
        _check_finite(value, name)
        return
    leaf = dataclasses.field(metadata=spec.metadata)
    leaf.name = name
    check_field(leaf, value, hint)
    _check_finite(value, name)


def _check_finite(value: Any, name: str) -> None:
    """Numbers in settings are finite (JSON's NaN and Infinity are not settings)."""
    if isinstance(value, float) and not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"  # JSON's words
        raise SaeguardError(f"{name} must be a finite number, got {shown}")
    elif isinstance(value, Mapping):
        for key, element in value.items():
            _check_finite(element, f"{name}.{key}")
    elif isinstance(value, list):
        for index, element in enumerate(value):
            _check_finite(element, f"{name}[{index}]")
