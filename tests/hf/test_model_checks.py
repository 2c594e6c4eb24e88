"""A model, its token ids and its lengths are checked before any forward (issue 11 §4-§5).

Inputs from the reliability probe (scripts/reliability_probe.py): each gave a raw
AttributeError, IndexError or RuntimeError deep in torch before.
"""

from __future__ import annotations

import pytest
import torch

from saeguard import SaeguardError
from saeguard.hf.layers import check_language_model, check_token_ids, embedding_rows, residual_at
from saeguard.testing import make_tokenizer, tiny_gpt2, tiny_llama


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (None, "got NoneType"),
        ("llama", "got str"),
        (make_tokenizer(), "must be a loaded language model"),
        (torch.nn.Linear(32, 32), "no config giving its hidden size"),
    ],
)
def test_a_non_model_is_refused_naming_its_type(given, named):
    with pytest.raises(SaeguardError, match=named):
        check_language_model(given)


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        meta = tiny_llama()
    with pytest.raises(SaeguardError, match="meta device"):
        check_language_model(meta)


def test_a_loaded_model_passes_and_reports_its_embedding_rows():
    model = tiny_llama(vocab_size=40)
    check_language_model(model)
    assert embedding_rows(model) == 40


def test_token_ids_beyond_the_embeddings_are_refused_naming_the_id():
    model = tiny_llama(vocab_size=40)
    check_token_ids(model, torch.tensor([[0, 39]]), "a prompt")
    with pytest.raises(SaeguardError, match="token id 52 but the model embeds ids 0..39"):
        check_token_ids(model, torch.tensor([[3, 52]]), "a prompt")


def test_residual_at_refuses_an_input_longer_than_the_positions():
    model = tiny_gpt2(max_positions=256)
    with pytest.raises(SaeguardError, match="300 tokens exceeds the model's 256 positions"):
        residual_at(model, 0, torch.ones(1, 300, dtype=torch.long))


def test_residual_at_refuses_ids_the_model_does_not_embed():
    model = tiny_llama(vocab_size=40)
    with pytest.raises(SaeguardError, match="token id 45"):
        residual_at(model, 0, torch.tensor([[1, 45]]))
    assert residual_at(model, 0, torch.tensor([[1, 39]])).shape == (1, 2, 32)
