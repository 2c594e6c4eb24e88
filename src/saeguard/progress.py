"""A progress bar that stays out of the way in tests and pipes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def progress_bar(
    description: str, *, total: int | None = None, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a rich bar on a terminal, a line every 10% in logs."""
    if not enabled:
        yield lambda _n: None
        return
    if not sys.stderr.isatty():
        yield _log_lines(description, total)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _log_lines(description: str, total: int | None) -> Callable[[int], None]:
    state = {"done": 0, "next": 0.1, "start": time.perf_counter()}

    def advance(n: int) -> None:
        state["done"] += n
        if total and state["done"] / total >= state["next"]:
            elapsed = time.perf_counter() - state["start"]
            print(f"{description}: {state['done']}/{total} ({elapsed:.0f}s)", file=sys.stderr, flush=True)
            state["next"] += 0.1

    return advance
