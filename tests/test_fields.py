"""Fields are checked from their declarations: type hints, Literal choices, min/max metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from saeguard.errors import SaeguardError
from saeguard.fields import check_field, field_default, type_hints


@dataclass
class _Settings:
    mode: Literal["fast", "exact"] = "fast"
    count: int = field(default=1, metadata={"min": 1})
    share: float = field(default=0.5, metadata={"min": 0, "max": 1})
    percentile: float = field(default=95.0, metadata={"min": 0, "max": 100})
    budget: float | None = field(default=None, metadata={"min_exclusive": 0})
    names: list[str] = field(default_factory=lambda: ["a"])


def _check(name: str, value: object) -> None:
    spec = next(s for s in fields(_Settings) if s.name == name)
    check_field(spec, value, type_hints(_Settings)[name])


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("mode", "slow", "mode must be one of 'fast', 'exact', got 'slow'"),
        ("count", True, "count must be an integer, got True"),
        ("count", 2.0, "count must be an integer, got 2.0"),
        ("count", 0, "count must be at least 1, got 0"),
        ("share", 1.5, "share must be at most 1, got 1.5"),
        ("share", float("nan"), "share must be a number, got NaN"),
        ("percentile", 101, r"percentile must be a percentile in \[0, 100\], got 101"),
        ("budget", 0.0, "budget must be greater than 0, got 0.0"),
        ("budget", "1", "budget must be a number or None, got '1'"),
        ("names", ("a",), "names must be list, got"),
    ],
)
def test_bad_values_name_the_field_and_what_it_accepts(name, value, message):
    with pytest.raises(SaeguardError, match=message):
        _check(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("mode", "exact"), ("count", 3), ("share", 1), ("percentile", 0.0), ("budget", None), ("budget", 0.1)],
)
def test_values_within_the_declaration_pass(name, value):
    _check(name, value)


def test_field_default_calls_the_factory_each_time():
    spec = next(s for s in fields(_Settings) if s.name == "names")
    first, second = field_default(spec), field_default(spec)
    assert first == ["a"] and first is not second


def test_config_reexports_the_same_checks():
    from saeguard import config

    assert (config.check_field, config.type_hints, config.field_default) == (
        check_field,
        type_hints,
        field_default,
    )
