"""The tokenizer fingerprint keys caches by what changes ids, not by where the files live.

Regression (issue 17, first run from a clean clone): the fingerprint held ``name_or_path``, so the
default model's tokenizer loaded from another cache folder missed every cache, including the known
sets that ship with the package.
"""

from __future__ import annotations

from transformers import AutoTokenizer

from saeguard.hf.fingerprint import tokenizer_fingerprint
from saeguard.testing import CHATML_TEMPLATE, chat_tokenizer


def test_the_same_tokenizer_in_two_folders_has_one_fingerprint(tmp_path):
    tokenizer = chat_tokenizer(CHATML_TEMPLATE)
    tokenizer.save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "b")
    first = AutoTokenizer.from_pretrained(tmp_path / "a")
    second = AutoTokenizer.from_pretrained(tmp_path / "b")
    assert first.name_or_path != second.name_or_path
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(second)


def test_another_vocabulary_or_chat_template_changes_it(tmp_path):
    tokenizer = chat_tokenizer(CHATML_TEMPLATE)
    tokenizer.save_pretrained(tmp_path / "a")
    other = AutoTokenizer.from_pretrained(tmp_path / "a")
    other.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    other.add_tokens(["zzzqqq"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
