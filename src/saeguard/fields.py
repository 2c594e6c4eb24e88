"""Checking a dataclass's fields against their declarations: type hints, choices and ranges.

Every settings dataclass (``FitConfig``, the baselines' method configs, the provenance
records) declares each field once, with its type (``Literal`` choices, unions, numbers) and
optional ``min``/``max``/``min_exclusive`` metadata; :func:`check_field` checks a value
against that declaration, so no config repeats its choices in a hand-written ``validate()``.
A leaf module: it imports only ``errors``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from saeguard.errors import require


def field_default(spec: dataclasses.Field) -> Any:
    """The default of a dataclass field: its ``default``, else a fresh ``default_factory()`` value.

    Raises:
        TypeError: the field has no default (a programming error, not user input).
    """
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise TypeError(f"field {spec.name} has no default")


def type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (cached per class)."""
    cached = _HINTS.get(cls)
    if cached is None:
        cached = _HINTS[cls] = typing.get_type_hints(cls)
    return cached


_HINTS: dict[type, dict[str, Any]] = {}


def check_field(spec: dataclasses.Field, value: Any, hint: Any) -> None:
    """Check one dataclass field against its type hint and ``min``/``max`` metadata.

    Raises:
        SaeguardError: ``<name> must be ...: got <value>``.
    """
    name = spec.name
    require(_matches(value, hint), f"{name} must be {_describe(hint)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        require(not (isinstance(value, float) and math.isnan(value)), f"{name} must be a number, got NaN")
        low, high = spec.metadata.get("min"), spec.metadata.get("max")
        above = spec.metadata.get("min_exclusive")
        if (low, high) == (0, 100):
            require(0 <= value <= 100, f"{name} must be a percentile in [0, 100], got {value}")
        require(low is None or value >= low, f"{name} must be at least {low}, got {value}")
        require(high is None or value <= high, f"{name} must be at most {high}, got {value}")
        require(above is None or value > above, f"{name} must be greater than {above}, got {value}")


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, option) for option in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in get_args(hint))
    if hint is type(None):
        return "None"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
