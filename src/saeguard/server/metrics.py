"""Prometheus metrics of one server: requests, latency, and each guard's flagged fraction."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from saeguard.server.schemas import GuardReport

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The server's metrics in their own registry (several apps in one process do not mix)."""

    def __init__(self, guards: Iterable[str], queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "saeguard_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "saeguard_request_seconds",
            "Request latency until the last byte (streams included), by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "saeguard_guard_decisions",
            "Prompts judged, by guard and decision",
            ["guard", "flagged"],
            registry=self.registry,
        )
        self.flagged_fraction = Gauge(
            "saeguard_guard_flagged_fraction",
            "Fraction of judged prompts a guard flagged",
            ["guard"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "saeguard_refusals", "Requests answered with the refusal", registry=self.registry
        )
        self.tokens = Counter("saeguard_generated_tokens", "Tokens generated", registry=self.registry)
        queue = Gauge(
            "saeguard_queue_depth", "Requests running or waiting for a worker", registry=self.registry
        )
        queue.set_function(queue_depth)
        self._counts = {name: [0, 0] for name in guards}  # flagged, judged
        self._lock = threading.Lock()
        for name in self._counts:
            self.flagged_fraction.labels(name).set(0.0)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency (seconds, until the last byte)."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_outcome(self, reports: Iterable[GuardReport], refused: bool, tokens: int) -> None:
        """Count one choice's guard decisions, a refusal, the tokens it generated."""
        self.tokens.inc(tokens)
        if refused:
            self.refusals.inc()
        with self._lock:
            for report in reports:
                counts = self._counts.setdefault(report.name, [0, 0])
                counts[0] += int(report.flagged)
                counts[1] += 1
                self.decisions.labels(report.name, str(report.flagged).lower()).inc()
                self.flagged_fraction.labels(report.name).set(counts[0] / counts[1])

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
