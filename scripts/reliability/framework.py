"""Cases, outcomes and their classification, for the in-process (API) side of the probe.

A case states what its input must give: a one-line ``SaeguardError`` ("error"),
a usage error with exit 2 ("usage", CLI only), or success with an asserted
value ("success"). What happened is one of :data:`OUTCOMES`; everything but
``OK`` is a fault.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeguard.errors import SaeguardError

OUTCOMES = ("OK", "TRACEBACK", "SILENT-WRONG", "PARTIAL-OUTPUT", "REFUSED", "MULTI-LINE", "LATE-CHECK")
"""OK; TRACEBACK: a raw exception or CLI traceback; SILENT-WRONG: success where an error was due, or a
wrong value; PARTIAL-OUTPUT: a failed call left files behind; REFUSED: an error where success was due;
MULTI-LINE: an error of more than one line (or with stray output around it); LATE-CHECK: a command
given bad input still working after minutes (it works before it checks)."""

Check = Callable[[Any], "str | None"]


@dataclass
class Result:
    """One case: where, what was given, what it must give, what it gave."""

    area: str
    name: str
    given: str
    expect: str  # "error", "usage" or "success"
    outcome: str = "OK"
    message: str = ""
    seconds: float = 0.0

    @property
    def fault(self) -> bool:
        return self.outcome != "OK"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def leftovers(paths: Iterable[Path]) -> list[str]:
    """Paths that exist, and staging siblings (``.name.*``) a failed write left beside them."""
    found = []
    for path in paths:
        if path.exists():
            found.append(str(path))
        if path.parent.is_dir():
            found += [str(p) for p in path.parent.glob(f".{path.name}.*")]
    return found


@dataclass
class Probe:
    """Runs cases and keeps their results."""

    results: list[Result] = field(default_factory=list)
    only: str | None = None  # run only cases whose area or name contains this

    def _wanted(self, area: str, name: str) -> bool:
        return self.only is None or self.only in area or self.only in name

    def error(
        self,
        area: str,
        name: str,
        given: str,
        fn: Callable[[], Any],
        *,
        outputs: Iterable[Path] = (),
    ) -> None:
        """``fn()`` must raise a one-line ``SaeguardError`` and leave none of ``outputs`` behind."""
        if not self._wanted(area, name):
            return
        result = Result(area, name, given, "error")
        outputs = list(outputs)
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = fn()
        except SaeguardError as error:
            text = str(error)
            result.message = text
            if "\n" in text.strip() or not text.strip():
                result.outcome = "MULTI-LINE"
        except Exception as error:  # noqa: BLE001 - any other exception is the fault we look for
            result.outcome = "TRACEBACK"
            result.message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            result.message += f" [{_where(error)}]"
        else:
            result.outcome = "SILENT-WRONG"
            result.message = f"returned {_short(value)}"
        left = leftovers(outputs)
        if left and result.outcome == "OK":
            result.outcome = "PARTIAL-OUTPUT"
            result.message += f" (left {', '.join(left)})"
        result.seconds = time.perf_counter() - started
        self.results.append(result)

    def ok(self, area: str, name: str, given: str, fn: Callable[[], Any], check: Check | None = None) -> None:
        """``fn()`` must succeed and ``check(value)`` return None (else it says what is wrong)."""
        if not self._wanted(area, name):
            return
        result = Result(area, name, given, "success")
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = fn()
                problem = check(value) if check is not None else None
        except SaeguardError as error:
            result.outcome, result.message = "REFUSED", str(error)
        except Exception as error:  # noqa: BLE001
            result.outcome = "TRACEBACK"
            result.message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            result.message += f" [{_where(error)}]"
        else:
            if problem:
                result.outcome, result.message = "SILENT-WRONG", problem
            else:
                result.message = f"ok: {_short(value)}"
        result.seconds = time.perf_counter() - started
        self.results.append(result)


def _where(error: BaseException) -> str:
    """file:line of the innermost saeguard frame of a traceback (else the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "saeguard" in f.filename and "reliability" not in f.filename]
    if not (ours or frames):
        return "?"
    frame = (ours or frames)[-1]
    return f"{package_path(frame.filename)}:{frame.lineno}"


def package_path(filename: str) -> str:
    """``server/app.py`` for ``.../src/saeguard/server/app.py``; the bare name outside saeguard."""
    parts = Path(filename).parts
    if "saeguard" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("saeguard") :])
    return Path(filename).name


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def expect_equal(expected: Any) -> Check:
    """A check that the value equals ``expected``."""
    return lambda value: None if value == expected else f"got {_short(value)}, expected {_short(expected)}"
