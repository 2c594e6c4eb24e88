"""Progress lines in logs: worded as progress (count, unit, elapsed, ETA), never as results."""

from __future__ import annotations

import re

import pytest

from saeguard import progress
from saeguard.progress import format_seconds, progress_bar


@pytest.fixture
def long_step(monkeypatch):
    """Every step counts as long enough to log (the real threshold is LOG_AFTER_SECONDS)."""
    monkeypatch.setattr(progress, "LOG_AFTER_SECONDS", 0.0)


def test_log_lines_name_the_unit_and_give_an_eta_every_tenth(capsys, long_step):
    with progress_bar("scoring wiki:biology", total=20, unit="questions") as advance:
        for _ in range(10):
            advance(2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10
    assert re.fullmatch(r"scoring wiki:biology: 2/20 questions \(\d+s, ETA \d+s\)", lines[0])
    assert re.fullmatch(r"scoring wiki:biology: 20/20 questions \(done in \d+s\)", lines[-1])


def test_a_large_step_prints_one_line_not_one_per_tenth_passed(capsys, long_step):
    with progress_bar("known-set filter", total=10, unit="questions") as advance:
        advance(7)
        advance(1)
        advance(2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "known-set filter: 7/10 questions",
        "known-set filter: 8/10 questions",
        "known-set filter: 10/10 questions",
    ]


def test_unknown_total_or_disabled_prints_nothing(capsys, long_step):
    with progress_bar("statistics") as advance:
        advance(5)
    with progress_bar("statistics", total=5, enabled=False) as advance:
        advance(5)
    assert capsys.readouterr().err == ""


def test_format_seconds_reads_as_a_duration():
    assert [format_seconds(s) for s in (0.4, 42, 185, 3725)] == ["0s", "42s", "3m 05s", "1h 02m"]


def test_a_short_step_stays_quiet_in_logs(capsys):
    with progress_bar("statistics", total=4, unit="chunks") as advance:
        for _ in range(4):
            advance(1)
    assert capsys.readouterr().err == ""
