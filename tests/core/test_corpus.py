"""Reading corpora and chunking them."""

from __future__ import annotations

import json

import pytest

from saeguard import SaeguardError
from saeguard.hf.corpus import CorpusMix, corpus_mix, count_chunks, iter_chunks, iter_documents


def test_txt_paragraphs_and_jsonl_text_fields_are_documents(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n"
    )
    assert list(iter_documents(tmp_path / "a.txt")) == ["first doc\nline two", "second doc"]
    assert list(iter_documents(str(tmp_path / "b.jsonl"))) == ["one", "two"]


def test_bad_jsonl_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(SaeguardError, match=r"bad.jsonl:2 is not valid JSON"):
        list(iter_documents(tmp_path / "bad.jsonl"))


def test_binary_corpus_file_is_reported(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(SaeguardError, match="not UTF-8"):
        list(iter_documents(tmp_path / "bin.txt"))


def test_chunks_join_documents_with_eos_and_start_with_bos(tokenizer):
    chunks = list(iter_chunks(["cell virus gene", "king river"], tokenizer, 5))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert all(chunk[0] == bos and len(chunk) <= 5 for chunk in chunks)
    flat = [t for chunk in chunks for t in chunk[1:]]
    assert flat.count(eos) == 2


def test_repeated_specs_mix_into_one_corpus_read_in_order(tmp_path):
    (tmp_path / "mine.txt").write_text("my first note\n\nmy second note\n")
    (tmp_path / "more.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    mixed = corpus_mix([str(tmp_path / "mine.txt"), str(tmp_path / "more.jsonl")])
    assert isinstance(mixed, CorpusMix)
    assert list(iter_documents(mixed)) == ["my first note", "my second note", "from jsonl"]
    assert list(iter_documents(CorpusMix((["a list doc"], str(tmp_path / "more.jsonl"))))) == [
        "a list doc",
        "from jsonl",
    ]
    assert corpus_mix([str(tmp_path / "mine.txt")]) == str(tmp_path / "mine.txt")  # one spec: itself
    with pytest.raises(SaeguardError, match="no corpus given"):
        corpus_mix([])


@pytest.mark.parametrize(("seq_len", "max_chunks"), [(4, None), (7, None), (16, None), (4, 3), (5, 100)])
def test_count_chunks_equals_the_chunks_iter_chunks_yields(tokenizer, seq_len, max_chunks):
    docs = ["the cell virus gene protein"] * 5 + ["king", "", "river mountain castle of the"]
    chunks = list(iter_chunks(docs, tokenizer, seq_len, max_chunks=max_chunks))
    assert count_chunks(docs, tokenizer, seq_len, max_chunks=max_chunks, batch=2) == len(chunks)
