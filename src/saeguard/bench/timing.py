"""Timing on a noisy machine: interleaved rounds, medians, and clocks inside the guard's hooks.

Every figure the benchmark reports is a ratio against a baseline timed in the
same run, a few seconds apart: absolute speeds on a shared 2-core machine move
by ±30% from one minute to the next, ratios of neighbours far less.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from saeguard.core.hooks import GateHook


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block, then restore it.

    torch.profiler's C++ backend (Kineto) writes ``profiler_start``/``profiler_stop``
    lines straight to fd 2, past Python's ``sys.stderr``; no torch setting turns them
    off, so the profiled span silences the descriptor itself. Python errors are not
    lost: they propagate and are reported after the block.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA only; a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall seconds of one call, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    """The median, NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


def quartiles(values: list[float]) -> tuple[float, float]:
    """(q1, q3), inclusive method; the value itself for one value, NaN for none."""
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return value, value
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


@dataclass
class Interleaved:
    """Seconds of a baseline and its variants, measured in alternating rounds."""

    baseline: list[float] = field(default_factory=list)
    variants: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, name: str) -> float:
        """Median of the variant's per-round ratios."""
        return median(self.ratios[name])

    def summary(self, name: str) -> dict[str, float | int]:
        """Ratio, its quartiles, median seconds of variant and baseline, and rounds."""
        low, high = quartiles(self.ratios[name])
        return {
            "ratio": self.ratio(name),
            "ratio_q1": low,
            "ratio_q3": high,
            "seconds": median(self.variants[name]),
            "baseline_seconds": median(self.baseline),
            "rounds": len(self.ratios[name]),
        }


def interleave(
    baseline: Callable[[], float],
    variants: Mapping[str, Callable[[], float]],
    rounds: int,
) -> Interleaved:
    """Run ``baseline`` between rounds of every variant; each variant's ratio is
    against the mean of the two baselines that bracket its round.

    Each callable returns the seconds it measured (see ``timer``), so set-up such
    as attaching a guard stays outside the timed region. Variant order rotates
    from round to round so none always runs first after the baseline.
    """
    result = Interleaved(variants={n: [] for n in variants}, ratios={n: [] for n in variants})
    names = list(variants)
    result.baseline.append(baseline())
    for index in range(rounds):
        shift = index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            result.variants[name].append(variants[name]())
        result.baseline.append(baseline())
        reference = (result.baseline[-2] + result.baseline[-1]) / 2
        for name in names:
            result.ratios[name].append(result.variants[name][-1] / reference)
    return result


def timer(fn: Callable[[], object], device: torch.device | str = "cpu") -> Callable[[], float]:
    """A callable that runs ``fn`` once and returns its wall seconds."""
    return lambda: clock(fn, device)


class CpuTimer:
    """Runs ``fn`` once per call and returns its wall seconds, keeping its process CPU seconds in ``cpu``.

    On a shared CPU machine with one torch thread, CPU seconds count the work done and not
    the time the scheduler gave to other jobs: their ratios move far less than wall ratios.
    """

    def __init__(self, fn: Callable[[], object], device: torch.device | str = "cpu") -> None:
        self.fn, self.device = fn, device
        self.cpu: list[float] = []

    def __call__(self) -> float:
        start = time.process_time()
        seconds = clock(self.fn, self.device)
        self.cpu.append(time.process_time() - start)
        return seconds


def bracketed_ratio(baseline: list[float], variant: list[float]) -> float:
    """Median of variant[i] / mean(baseline[i], baseline[i + 1]): ``interleave``'s ratio for other clocks."""
    return median([v / ((baseline[i] + baseline[i + 1]) / 2) for i, v in enumerate(variant)])


class HookClock:
    """Accumulates the wall time spent inside the guard's gate work (CPU timing)."""

    def __init__(self, label: str | None = None) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.label = label

    def reset(self) -> None:
        """Zero the seconds and calls."""
        self.seconds = 0.0
        self.calls = 0

    @contextmanager
    def measure(self) -> Iterator[None]:
        """One timed span (optionally a named ``torch.profiler`` range)."""
        scope = torch.profiler.record_function(self.label) if self.label else nullcontext()
        start = time.perf_counter()
        with scope:
            yield
        self.seconds += time.perf_counter() - start
        self.calls += 1


@contextmanager
def timed_guard(
    guard, model: nn.Module, *, forced: bool | None, label: str | None = None
) -> Iterator[tuple[GateHook, HookClock]]:
    """Attach ``guard`` with a clock on its public instrumentation point; yields (hook, clock)."""
    hook = guard.hook()
    timer = HookClock(label)
    hook.instrument = timer.measure
    hook.forced = forced
    hook.attach(model)
    try:
        yield hook, timer
    finally:
        hook.detach()
