"""MCQ loading: malformed rows are reported with their line numbers."""

from __future__ import annotations

import json

import pytest

from saeguard.errors import SaeguardError
from saeguard.eval.items import McqItem, load_mcq, question_text


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"question": "what is the cell", "choices": ["a", "b", "c", "d"], "answer": 2, "subject": "biology"}


def test_loads_wmdp_schema_with_letter_answers(tmp_path):
    rows = [GOOD, GOOD | {"answer": "B", "id": "x"}]
    items = load_mcq(_write(tmp_path / "q.jsonl", rows))
    assert [i.answer for i in items] == [2, 1]
    assert items[0].id == "q:1" and items[1].id == "x"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (GOOD | {"choices": ["a", "b", "c"]}, "3 choices"),
        (GOOD | {"answer": 4}, "out of range"),
        (GOOD | {"answer": -1}, "out of range"),
        (GOOD | {"question": "  "}, "empty or missing question"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_rows_report_line_numbers(tmp_path, bad, message):
    path = _write(tmp_path / "bad.jsonl", [GOOD, GOOD | {"id": "b"}, bad])
    with pytest.raises(SaeguardError, match=rf"bad\.jsonl:3.*{message}|bad\.jsonl:3 is {message}"):
        load_mcq(path)


def test_permutation_moves_the_answer():
    item = McqItem("q", ("w", "x", "y", "z"), 1, "s", "id")
    moved = item.permuted((3, 1, 0, 2))
    assert moved.choices == ("z", "x", "w", "y") and moved.answer == 1
    moved = item.permuted((1, 0, 2, 3))
    assert moved.choices[moved.answer] == "x"


def test_prompt_lists_all_options():
    text = question_text(McqItem("what is the cell", ("a", "b", "c", "d"), 0, "biology"))
    assert text.startswith("The following are multiple choice questions (with answers) about biology.\n")
    assert text.endswith("\nA. a\nB. b\nC. c\nD. d")
