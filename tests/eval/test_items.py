"""MCQ loading: malformed rows are reported with their line numbers."""

from __future__ import annotations

import json

import pytest

from saeguard.errors import SaeguardError
from saeguard.eval.items import McqItem, load_mcq, mcq_set, question_text


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


@pytest.mark.parametrize("spec", ["missing.jsonl", "sets/bio", "./bio", "~/no-such-dir/q.json", "data.v2"])
def test_a_spec_that_looks_like_a_path_and_is_missing_is_a_file_not_found(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SaeguardError, match=r"^MCQ file .* not found: pass a \.jsonl file") as caught:
        mcq_set(spec)
    assert "unknown MCQ set" not in str(caught.value)


def test_a_bare_name_that_is_no_built_in_set_lists_the_known_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SaeguardError, match=r"unknown MCQ set 'biology'; choose one of: wiki, .*cwe"
    ) as caught:
        mcq_set("biology")
    assert "wiki:biology" in str(caught.value) and ".jsonl file" in str(caught.value)


def test_files_and_built_in_names_both_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "mine", [GOOD, GOOD | {"answer": 0}])  # an existing file needs no suffix
    assert [item.answer for item in mcq_set("mine")] == [2, 0]
    assert [item.answer for item in mcq_set(str(tmp_path / "mine"), limit=1)] == [2]
    built_in = mcq_set("cwe", limit=3)
    assert len(built_in) == 3 and all(isinstance(item, McqItem) for item in built_in)
