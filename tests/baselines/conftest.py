"""Tiny random models and a word-level tokenizer built in code (no model hub needed)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from saeguard.testing import text_tokenizer, tiny_gpt2, tiny_llama

FORGET_TEXTS = [
    "the virus enters the cell and copies its genome inside the host nucleus",
    "a pathogen spreads when the host immune system fails to detect the virus",
    "the protein binds the receptor and the cell takes the virus inside",
] * 4
RETAIN_TEXTS = [
    "the river flows past the old town and the bridge near the market square",
    "the king wrote a letter to the queen about the harvest and the winter",
    "a train leaves the station at noon and reaches the coast by evening",
] * 4


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return text_tokenizer(FORGET_TEXTS + RETAIN_TEXTS)


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, tokenizer):
    build = tiny_llama if request.param == "llama" else tiny_gpt2
    return build(0, len(tokenizer))


@pytest.fixture
def forget_texts() -> list[str]:
    return list(FORGET_TEXTS)


@pytest.fixture
def retain_texts() -> list[str]:
    return list(RETAIN_TEXTS)


@pytest.fixture
def make_batch(tokenizer):
    """Texts -> one padded TokenBatch of seq_len chunks (for before/after measurements)."""
    from saeguard.hf.corpus import (
        TokenBatch,
        counted_mask,
        iter_chunks,
        pad_batch,
        pad_token_id,
        special_token_ids,
    )

    def build(texts: list[str], seq_len: int = 16) -> TokenBatch:
        chunks = list(iter_chunks(texts, tokenizer, seq_len))
        ids, mask = pad_batch(chunks, pad_token_id(tokenizer))
        return TokenBatch(ids, mask, counted_mask(ids, mask, special_token_ids(tokenizer)))

    return build


@pytest.fixture
def unlearn_forget_nll(tiny_model, tokenizer, forget_texts, retain_texts, make_batch):
    """``run(method, config) -> (forget NLL before, forget NLL after, TrainResult)`` on ``tiny_model``."""
    import torch

    from saeguard.baselines import unlearn
    from saeguard.baselines.likelihood import mean_nll

    def run(method: str, config):
        forget = make_batch(forget_texts)
        with torch.no_grad():
            before = float(mean_nll(tiny_model, forget))
        model, result = unlearn(tiny_model, tokenizer, method, forget_texts, retain_texts, config)
        with torch.no_grad():
            after = float(mean_nll(model, forget))
        return before, after, result

    return run
