"""MCQ files, MCQ lengths and lm-eval requests fail in one line (issue 11 §4-§5, reliability probe).

Before: an empty option was scored (as the empty continuation it always "wins" nothing
or everything), a binary file gave UnicodeDecodeError, ``limit=-1`` silently dropped the
last item, a question longer than the model's positions gave an IndexError, and
``score_requests`` raised ValueError/IndexError for batch size 0 or ids beyond the vocabulary.
"""

from __future__ import annotations

import json

import pytest
import torch

from saeguard import SaeguardError
from saeguard.eval.items import as_items, load_mcq
from saeguard.eval.lm_eval_adapter import score_requests
from saeguard.eval.mcq import evaluate_mcq
from saeguard.testing import eval_tokenizer, tiny_llama

ROW = {"question": "what is the cell", "choices": ["cell", "gene", "virus", "dna"], "answer": 1}


def test_an_empty_option_is_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({**ROW, "choices": ["", "gene", "virus", "dna"]}))
    with pytest.raises(SaeguardError, match=":1: 'choices' must be a list of 4 non-empty strings"):
        load_mcq(path)


def test_a_binary_mcq_file_is_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(SaeguardError, match="is not UTF-8 text"):
        load_mcq(path)


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode())
    assert load_mcq(path)[0].answer == 1


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_a_limit_that_is_not_a_positive_count_is_refused(limit):
    with pytest.raises(SaeguardError, match="limit must be a positive number of items"):
        load_mcq([ROW, {**ROW, "id": "b"}], limit=limit)


def test_a_limit_keeps_the_first_items():
    rows = [{**ROW, "id": str(i)} for i in range(3)]
    assert [item.id for item in load_mcq(rows, limit=2)] == ["0", "1"]


def test_items_given_as_a_path_string_are_refused():
    with pytest.raises(SaeguardError, match="read a file with load_mcq"):
        as_items("questions.jsonl")


def test_a_question_longer_than_the_positions_is_refused():
    model = tiny_llama(vocab_size=len(eval_tokenizer()), max_positions=64)
    long = [{**ROW, "question": " ".join(["cell"] * 80)}]
    with pytest.raises(SaeguardError, match="over the model's 64 positions"):
        evaluate_mcq(model, eval_tokenizer(), long, show_progress=False)


@pytest.mark.parametrize(
    ("requests", "kw", "named"),
    [
        ([([5, 6], [7])], {"batch_size": 0}, "batch_size must be at least 1"),
        ([([5, 99], [7])], {}, "token id 99 but the model embeds ids 0..39"),
        ([([5, 6], [7])], {"max_length": 4096}, "max_length 4096 must be a positive number of tokens within"),
    ],
)
def test_score_requests_checks_its_inputs(requests, kw, named):
    args = {"max_length": 64, "batch_size": 1, **kw}
    with pytest.raises(SaeguardError, match=named):
        score_requests(tiny_llama(), requests, args["max_length"], args["batch_size"], 0)


def test_score_requests_scores_valid_requests():
    scores = score_requests(tiny_llama(), [([1, 5, 6], [7]), ([1, 8], [9, 10])], 64, 2, 0)
    assert len(scores) == 2 and all(torch.isfinite(torch.tensor(s[0])) and s[0] < 0 for s in scores)


@pytest.mark.parametrize("field", ["question", "choices"])
def test_an_item_with_an_unpaired_surrogate_is_refused_before_scoring(field):
    row = (
        {**ROW, field: "cell \ud800"}
        if field == "question"
        else {**ROW, "choices": ["a", "b\udc00", "c", "d"]}
    )
    with pytest.raises(SaeguardError, match=r"^items\[0\] holds an unpaired surrogate \(U\+D"):
        as_items([row])
