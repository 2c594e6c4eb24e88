"""Text that is not valid Unicode (an unpaired surrogate) is refused in one line before any tokenizer sees it.

The reliability probe sent ``"cell \\ud800"`` (a JSON escape any client can send) to the server
and to the API: the tokenizer raised ``TypeError: TextEncodeInput must be Union[...]`` from
``generate``, ``fit`` and the server's chat route (a 500).
"""

from __future__ import annotations

import json

import pytest

from saeguard import SaeguardError
from saeguard.hf.corpus import iter_documents
from saeguard.hf.prompts import encode_prompts
from saeguard.testing import make_tokenizer

BAD = "what is the cell \ud800"


@pytest.mark.parametrize(
    ("prompts", "named"),
    [
        ([BAD], "the prompt"),
        ([[{"role": "user", "content": BAD}]], "message 0 of the conversation"),
        (
            [[{"role": "system", "content": "be \udfff kind"}, {"role": "user", "content": "cell"}]],
            "message 0",
        ),
    ],
)
def test_a_prompt_with_an_unpaired_surrogate_is_refused(prompts, named):
    with pytest.raises(SaeguardError, match=f"^{named}.* holds an unpaired surrogate"):
        encode_prompts(make_tokenizer(), prompts)


def test_a_system_prompt_with_an_unpaired_surrogate_is_refused():
    with pytest.raises(SaeguardError, match="holds an unpaired surrogate"):
        encode_prompts(make_tokenizer(), ["cell"], system="be \ud800 kind")


def test_a_corpus_list_entry_with_an_unpaired_surrogate_is_refused():
    with pytest.raises(
        SaeguardError, match=r"^corpus entry 1 holds an unpaired surrogate \(U\+D800 at character 17\)"
    ):
        list(iter_documents(["the cell", BAD]))


def test_a_jsonl_corpus_line_with_an_escaped_surrogate_names_its_line(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text(json.dumps({"text": "the cell"}) + "\n" + '{"text": "gene \\ud800"}\n')
    with pytest.raises(SaeguardError, match=r"forget.jsonl:2 holds an unpaired surrogate"):
        list(iter_documents(str(path)))


def test_text_with_real_emoji_and_accents_still_encodes():
    encoded = encode_prompts(make_tokenizer(), ["caf\xe9 \U0001f9ec cell"])
    assert encoded.input_ids.shape[0] == 1 and bool(encoded.content_mask.any())
