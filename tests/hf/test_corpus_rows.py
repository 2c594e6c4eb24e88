"""Every JSONL/TXT corpus row is a document or one clear error (issue 11 §5, reliability probe).

Before: a row ``{"text": 5}`` was dropped without a word while the others were used,
``null`` gave a TypeError, and a UTF-8 byte-order mark made the first row "not valid JSON".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeguard import SaeguardError
from saeguard.hf.corpus import iter_documents


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        (b'{"text": 5}\n{"text": "cell gene"}\n', ":1: field 'text' holds a int, not text"),
        (b'{"text": ["cell"]}\n', ":1: field 'text' holds a list"),
        (b"null\n", ":1 is a JSON NoneType, not a document"),
        (b'["cell", "gene"]\n', ":1 is a JSON list, not a document"),
        (b'{"text": "ok"}\n' + b"[" * 50_000 + b"\n", ":2 is nested too deeply"),
        (b'{"text": "ok"}\n{"text": NaN}\n', ":2 is not valid JSON (NaN is not a number)"),
    ],
)
def test_a_bad_jsonl_row_is_an_error_naming_its_line(tmp_path, lines, named):
    path = _write(tmp_path, "c.jsonl", lines)
    with pytest.raises(SaeguardError) as caught:
        list(iter_documents(path))
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_null_and_blank_texts_are_skipped_like_empty_documents(tmp_path):
    rows = [{"text": None}, {"text": "  "}, {"text": "cell gene"}, "virus dna"]
    path = _write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    assert list(iter_documents(path)) == ["cell gene", "virus dna"]


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_document(tmp_path, suffix):
    body = json.dumps({"text": "cell gene"}) if suffix == ".jsonl" else "cell gene"
    path = _write(tmp_path, f"c{suffix}", b"\xef\xbb\xbf" + body.encode())
    assert list(iter_documents(path)) == ["cell gene"]
