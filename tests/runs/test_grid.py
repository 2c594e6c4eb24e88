"""The resumable grid runner: resume, foreign files, per-point errors, torn writes, one prepare per group."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from saeguard.errors import SaeguardError
from saeguard.runs.grid import RecordFile, key_of, run_grid


@dataclass(frozen=True)
class Point:
    n: int
    group: str = "a"

    @property
    def key(self) -> str:
        return f"n={self.n}"


@dataclass
class Record:
    key: str
    context: str
    value: float | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        return cls(**data)


def _open(path, context="ctx") -> RecordFile[Record]:
    return RecordFile.open(path, Record.from_dict, context=context, what="test run")


def _run(records: RecordFile[Record], points, calls: list, *, fail_on=(), fail_group=None):
    def prepare(group: list[Point]) -> float:
        calls.append(("prepare", group[0].group))
        if group[0].group == fail_group:
            raise SaeguardError(f"group {fail_group} cannot be fitted")
        return 10.0

    def evaluate(point: Point, offset: float) -> Record:
        calls.append(("evaluate", point.key))
        if point.n in fail_on:
            raise SaeguardError(f"n={point.n} is impossible")
        return Record(point.key, records.context, offset + point.n)

    return run_grid(
        records,
        points,
        prepare=prepare,
        group=lambda point: point.group,
        evaluate=evaluate,
        failed=lambda point, error: Record(point.key, records.context, error=error),
        show_progress=False,
    )


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_skips_recorded_keys_and_prepares_once_per_group(tmp_path):
    path = tmp_path / "run.jsonl"
    calls: list = []
    counts = _run(_open(path), [Point(1), Point(2), Point(3, "b")], calls)
    assert (counts.computed, counts.skipped) == (3, 0)
    assert [c for c in calls if c[0] == "prepare"] == [("prepare", "a"), ("prepare", "b")]
    assert [(r["key"], r["value"]) for r in _lines(path)] == [("n=1", 11.0), ("n=2", 12.0), ("n=3", 13.0)]

    calls.clear()
    records = _open(path)
    counts = _run(records, [Point(1), Point(2), Point(3, "b"), Point(4, "b")], calls)
    assert (counts.computed, counts.skipped) == (1, 3)
    assert calls == [("prepare", "b"), ("evaluate", "n=4")]
    assert [r.key for r in records.records] == ["n=1", "n=2", "n=3", "n=4"]
    assert [r["key"] for r in _lines(path)] == ["n=1", "n=2", "n=3", "n=4"]


def test_file_of_another_setup_is_refused_with_one_line(tmp_path):
    path = tmp_path / "run.jsonl"
    _run(_open(path), [Point(1)], [])
    with pytest.raises(SaeguardError, match="another setup") as refused:
        _open(path, context="other")
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "delete it" in message


def test_erroring_point_is_recorded_and_the_rest_continue(tmp_path):
    path = tmp_path / "run.jsonl"
    points = [Point(1), Point(2), Point(3), Point(4, "b"), Point(5, "b"), Point(6, "c")]
    counts = _run(_open(path), points, [], fail_on={2}, fail_group="b")
    assert counts.computed == 6
    by_key = {r["key"]: r for r in _lines(path)}
    assert by_key["n=2"]["error"] == "n=2 is impossible" and by_key["n=2"]["value"] is None
    assert by_key["n=4"]["error"] == by_key["n=5"]["error"] == "group b cannot be fitted"
    assert [by_key[k]["value"] for k in ("n=1", "n=3", "n=6")] == [11.0, 13.0, 16.0]
    # a recorded error is a finished point: a rerun does not retry it
    assert _run(_open(path), points, []).computed == 0


def test_other_exceptions_propagate_and_the_run_resumes(tmp_path):
    path = tmp_path / "run.jsonl"
    records = _open(path)

    def evaluate(point: Point, _prepared) -> Record:
        if point.n == 2:
            raise KeyboardInterrupt
        return Record(point.key, "ctx", float(point.n))

    with pytest.raises(KeyboardInterrupt):
        run_grid(
            records,
            [Point(1), Point(2)],
            evaluate=evaluate,
            failed=lambda point, error: Record(point.key, "ctx", error=error),
            show_progress=False,
        )
    assert [r["key"] for r in _lines(path)] == ["n=1"]
    calls: list = []
    assert _run(_open(path), [Point(1), Point(2)], calls).computed == 1
    assert ("evaluate", "n=1") not in calls


def test_torn_last_line_is_ignored_and_recomputed(tmp_path):
    path = tmp_path / "run.jsonl"
    _run(_open(path), [Point(1), Point(2), Point(3)], [])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # a crash mid-write of the last line
    records = _open(path)
    assert [r.key for r in records.records] == ["n=1", "n=2"]
    calls: list = []
    counts = _run(records, [Point(1), Point(2), Point(3)], calls)
    assert (counts.computed, counts.skipped) == (1, 2) and ("evaluate", "n=3") in calls
    assert [r["key"] for r in _lines(path)] == ["n=1", "n=2", "n=3"]


def test_torn_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"key": "n=1", "context": "ctx"}\n{"key": \n{"key": "n=2", "context": "ctx"}\n')
    with pytest.raises(SaeguardError, match=r"run.jsonl:2 is not a test run record"):
        _open(path)


def test_repeated_keys_are_refused_before_anything_runs(tmp_path):
    calls: list = []
    with pytest.raises(SaeguardError, match="repeats n=1"):
        _run(_open(tmp_path / "run.jsonl"), [Point(1), Point(2), Point(1, "b")], calls)
    assert calls == [] and not (tmp_path / "run.jsonl").exists()


def test_key_of_formats_floats_compactly():
    assert key_of("dsg", {"n_features": 20, "clamp": "5x", "gate_percentile": 95.0}) == (
        "dsg:n_features=20,clamp=5x,gate_percentile=95"
    )
