"""A bounded queue in front of a fixed pool of generation threads.

At most ``workers`` requests run at once (each in its own thread, sharing the model; the
guards' per-call state keeps them apart) and at most ``queue_size`` more wait; a request
beyond that is refused at once (HTTP 503) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from saeguard.errors import require

T = TypeVar("T")


class Busy(Exception):
    """Every worker is busy and the queue is full."""


class Scheduler:
    """Runs callables on ``workers`` threads with room for ``queue_size`` waiting ones."""

    def __init__(self, workers: int, queue_size: int) -> None:
        require(workers >= 1, f"workers must be at least 1, got {workers}")
        require(queue_size >= 0, f"queue size must be 0 or more, got {queue_size}")
        self.capacity = workers + queue_size
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saeguard-worker")
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Requests running or waiting."""
        return self._admitted

    def submit(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``work``; await the returned future for its result (or its exception).

        Raises:
            Busy: the pool and the queue are full.
        """
        with self._lock:
            if self._admitted >= self.capacity:
                raise Busy
            self._admitted += 1
        try:
            future = self.executor.submit(work)
        except RuntimeError:  # shut down
            self._release(None)
            raise Busy from None
        future.add_done_callback(self._release)
        return asyncio.wrap_future(future)

    def _release(self, _future: Future | None) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Drop waiting work; running work finishes in its thread."""
        self.executor.shutdown(wait=False, cancel_futures=True)
