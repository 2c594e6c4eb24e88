"""The demo's attack rows: a rerun of the same setup reuses its records, another guard replaces them."""

from __future__ import annotations

import json

from saeguard.attacks import runner
from saeguard.attacks.headline import headline_rows


def _contexts(path) -> set[str]:
    return {json.loads(line)["context"] for line in path.read_text().splitlines()}


def test_a_rerun_reuses_the_records_and_another_guard_replaces_them(
    model, tok, make_planted_guard, question_sets, tmp_path, monkeypatch
):
    forget, retain = question_sets
    path = tmp_path / "attack.jsonl"
    guard = make_planted_guard()
    first = headline_rows(model, tok, guard, forget[:4], retain[:4], path, show_progress=False)
    assert len(path.read_text().splitlines()) == 3  # clean, dilution, multi-turn
    evaluated = []
    original = runner.evaluate_attack

    def counting(model, tokenizer, guard, attack, *args, **kwargs):
        evaluated.append(attack.key)
        return original(model, tokenizer, guard, attack, *args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_attack", counting)
    again = headline_rows(model, tok, guard, forget[:4], retain[:4], path, show_progress=False)
    assert again == first and evaluated == []  # the records were there, so nothing was re-run
    other = make_planted_guard(tau=0.5)
    headline_rows(model, tok, other, forget[:4], retain[:4], path, show_progress=False)
    assert (
        len(evaluated) == 3 and len(_contexts(path)) == 1 and len(path.read_text().splitlines()) == 3
    )  # replaced, not mixed


def test_an_unreadable_records_file_is_started_over(model, tok, make_planted_guard, question_sets, tmp_path):
    forget, retain = question_sets
    path = tmp_path / "attack.jsonl"
    path.write_bytes(b"\x00\xff not json")
    rows = headline_rows(model, tok, make_planted_guard(), forget[:4], retain[:4], path, show_progress=False)
    assert [row["key"] for row in rows][0] == "clean" and len(path.read_text().splitlines()) == 3
