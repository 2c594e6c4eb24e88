"""A progress bar that stays out of the way in tests and pipes.

On a terminal: a rich bar with ``done/total unit``, elapsed time and an ETA
(the caller passes ``total`` wherever it knows it, e.g. chunks, calibration
inputs, questions). In logs and pipes: once a step has run for
:data:`LOG_AFTER_SECONDS`, a line every 10%, worded so it cannot be mistaken
for a result, e.g. ``scoring wiki:biology: 8/12 questions (13s, ETA 5s)``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress_bar(
    description: str, *, total: int | None = None, unit: str = "", enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``, counting ``n`` more ``unit`` (e.g. ``"chunks"``) towards ``total``.

    ``total`` None (unknown) shows a count without a bar end or ETA on a
    terminal, and nothing in logs.
    """
    if not enabled:
        yield lambda _n: None
        return
    if not sys.stderr.isatty():
        yield _log_lines(description, total, unit)
        return
    columns: list[ProgressColumn | str] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m 05s`` or ``1h 02m``: a duration for progress lines and time estimates."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


LOG_AFTER_SECONDS = 10.0
"""In logs, a step shorter than this prints nothing (tests and quick runs stay quiet)."""


def _log_lines(description: str, total: int | None, unit: str) -> Callable[[int], None]:
    done = 0
    next_tenth = 1  # print when done reaches next_tenth / 10 of total (integers: no float drift)
    start = time.perf_counter()
    suffix = f" {unit}" if unit else ""

    def advance(n: int) -> None:
        nonlocal done, next_tenth
        done += n
        if not total or 10 * done < next_tenth * total:
            return
        elapsed = time.perf_counter() - start
        if elapsed < LOG_AFTER_SECONDS:
            return
        if done < total:
            timing = f"{format_seconds(elapsed)}, ETA {format_seconds(elapsed * (total - done) / done)}"
        else:
            timing = f"done in {format_seconds(elapsed)}"
        print(f"{description}: {done}/{total}{suffix} ({timing})", file=sys.stderr, flush=True)
        while next_tenth * total <= 10 * done:
            next_tenth += 1

    return advance
