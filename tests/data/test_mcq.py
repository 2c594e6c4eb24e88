"""Built MCQ sets: schema, determinism, distractor rules, held-out only."""

from __future__ import annotations

import json

import pytest

from saeguard.data import corpora, mcq
from saeguard.data.corpora import Doc, split_of
from saeguard.data.mcq import build_mcq, cwe_items, make_item, read_jsonl, wiki_items, write_jsonl
from saeguard.errors import SaeguardError


def _check_schema(item: dict) -> None:
    assert set(item) == {"question", "choices", "answer", "subject", "id"}
    assert len(item["choices"]) == 4 and 0 <= item["answer"] < 4
    folded = [c.casefold() for c in item["choices"]]
    assert len(set(folded)) == 4 and all(item["choices"])


def test_make_item_is_seeded_by_id_and_excludes_answer_variants():
    pool = ["Answer", "ANSWER", "answer", "b", "c", "d", "e", "f", "B"]
    a = make_item("x:1", "Q?", "answer", pool, "s")
    assert a == make_item("x:1", "Q?", "answer", list(reversed(pool))[::-1], "s")
    _check_schema(a)
    assert a["choices"][a["answer"]] == "answer"
    assert sum(c.casefold() == "answer" for c in a["choices"]) == 1
    positions = {make_item(f"x:{i}", "Q?", "answer", pool, "s")["answer"] for i in range(40)}
    assert positions == {0, 1, 2, 3}
    assert make_item("x:1", "Q?", "a", ["a", "b", "B", "c"], "s") is None  # only 2 distractors


def test_wiki_items_draw_distractors_from_same_topic():
    docs = [Doc(f"b{i}", "t", "Bio", f"B{i}", f"bio desc {i}") for i in range(6)]
    docs += [Doc(f"g{i}", "t", "Geo", f"G{i}", f"geo desc {i}") for i in range(6)]
    docs.append(Doc("n", "t", "Bio", "NoDesc", ""))
    items = wiki_items(docs, docs)
    assert len(items) == 12
    for item in items:
        _check_schema(item)
        topic = "bio" if item["id"].startswith("wiki:B") else "geo"
        assert all(c.startswith(topic) for c in item["choices"])
        assert item["question"] == f"What is {item['id'][5:]}?"
        assert item["subject"] == topic


def test_cwe_items():
    docs = [Doc(f"CWE-{i}", "t", "cwe", f"Name {i}", f"Description {i}.") for i in range(5)]
    items = cwe_items(docs)
    assert len(items) == 5
    first = next(i for i in items if i["id"] == "cwe:CWE-0")
    assert first["choices"][first["answer"]] == "Name 0"
    assert "Description 0." in first["question"]


def test_jsonl_roundtrip_is_atomic(tmp_path):
    items = [make_item(f"x:{i}", "Q?", "é", ["a", "b", "c", "d"], "s") for i in range(3)]
    path = write_jsonl(items, tmp_path / "sub" / "set.jsonl")
    assert read_jsonl(path) == items
    assert [p.name for p in path.parent.iterdir()] == ["set.jsonl"]
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["choices"]


def test_bad_requests():
    with pytest.raises(SaeguardError, match="unknown MCQ set"):
        build_mcq("austen")
    with pytest.raises(SaeguardError, match="split"):
        build_mcq("cwe", split="all")
    with pytest.raises(SaeguardError, match="does not exist"):
        read_jsonl("/nonexistent/set.jsonl")


@pytest.mark.integration
def test_real_wiki_biology_set_is_heldout_and_well_formed():
    corpora._docs.cache_clear()
    items = build_mcq("wiki:biology")
    assert 550 < len(items) < 750
    heldout = {d.title: d for d in corpora.load_docs("wiki:biology", "heldout")}
    pool = {d.description for d in corpora.load_docs("wiki:biology", "heldout")}
    for item in items:
        _check_schema(item)
        title = item["id"].removeprefix("wiki:")
        assert split_of("wiki", title) == "heldout" and title in heldout
        assert item["choices"][item["answer"]] == heldout[title].description
        assert set(item["choices"]) <= pool  # distractors: held-out biology descriptions
    assert build_mcq("wiki:biology", limit=20) == items[:20]
    assert build_mcq("wiki:geography", limit=5)[0]["subject"] == "geography"


@pytest.mark.integration
def test_real_cwe_set():
    items = build_mcq("cwe")
    assert 350 < len(items) < 550
    assert all(split_of("cwe", i["id"].removeprefix("cwe:")) == "heldout" for i in items)
    for item in items[:50]:
        _check_schema(item)
    assert mcq.available_mcq()[-1] == "cwe"
