"""A command-line case: the argv, what it must give, and where it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scripts.reliability.framework import last_line

CliCheck = Callable[[str, str], "str | None"]
"""``check(stdout, stderr)``: None when a successful command's output is right, else what is wrong."""


@dataclass
class CliCase:
    area: str
    name: str
    argv: list[str]
    expect: str  # "usage", "error", "success" or "either" (one-line error, or success passing check)
    outputs: list[Path] = field(default_factory=list)
    check: CliCheck | None = None
    batch: str = "a"  # "real": its own saeguard process; else the driver batch it runs in


def names(word: str) -> CliCheck:
    """A check that the error line names ``word`` (the problem given, not a later failure)."""
    return lambda _o, e: None if word in last_line(e) else f"the error does not name {word!r}"


def error_cases(
    area: str, errors: Iterable[tuple[str, list[str]]], named: Mapping[str, str], batch: str
) -> list[CliCase]:
    """One "error" case per ``(name, argv)``; the error of a case in ``named`` must name its word."""
    return [
        CliCase(area, name, argv, "error", check=names(named[name]) if name in named else None, batch=batch)
        for name, argv in errors
    ]
