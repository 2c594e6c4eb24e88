"""``saeguard bench``: speed and memory of fitting, guarding, generating and evaluating.

Every figure is a ratio against a baseline measured in the same run, interleaved
and repeated (medians), because absolute timings on a shared machine drift.
See docs/performance.md for what each section measures and the latest numbers.
"""

from __future__ import annotations

from saeguard.bench.config import PRESETS, SECTIONS, TARGETS, BenchConfig, BenchSizes
from saeguard.bench.runner import render_table, run_bench, summary_rows, write_json

__all__ = [
    "PRESETS",
    "SECTIONS",
    "TARGETS",
    "BenchConfig",
    "BenchSizes",
    "render_table",
    "run_bench",
    "summary_rows",
    "write_json",
]
