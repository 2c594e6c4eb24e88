"""An experiment's settings as JSON: saved with every run, merged from ``--config`` over the defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar, get_args, get_origin

from saeguard.config import FitConfig, type_hints
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

    ``fit`` is merged over the default's fit; nested settings (and lists of them) recurse.

    Raises:
        SaeguardError: ``data`` is not a JSON object, names an unknown setting, or a fit value is bad.
    """
    require(isinstance(data, Mapping), f"{where} must be a JSON object, got {type(data).__name__}")
    cls = type(default)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    require(not unknown, f"unknown {where} {unknown}: use some of {sorted(known)}")
    hints = type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(default, name)
        hint = hints[name]
        if isinstance(current, FitConfig):
            values[name] = FitConfig.from_dict(current.to_dict() | dict(value), where=f"{where}.{name}")
        elif dataclasses.is_dataclass(current):
            values[name] = settings_from_dict(current, value, f"{where}.{name}")
        elif get_origin(hint) is list and dataclasses.is_dataclass(get_args(hint)[0]):
            require(isinstance(value, list), f"{where}.{name} must be a list of objects")
            values[name] = [_build(get_args(hint)[0], v, f"{where}.{name}[{i}]") for i, v in enumerate(value)]
        else:
            values[name] = value
    return replace(default, **values)  # type: ignore[type-var]


def _build(cls: type[T], data: Any, where: str) -> T:
    """One settings object of ``cls`` from a JSON object holding its fields."""
    require(isinstance(data, Mapping), f"{where} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    require(not unknown, f"unknown {where} settings {unknown}: use some of {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as error:
        raise SaeguardError(f"{where}: {error}: give every required field") from None
