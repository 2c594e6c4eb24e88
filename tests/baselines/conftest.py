"""Tiny random models and a word-level tokenizer built in code (no model hub needed)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

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

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted({w for text in FORGET_TEXTS + RETAIN_TEXTS for w in text.split()})
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, tokenizer):
    build = tiny_llama if request.param == "llama" else tiny_gpt2
    return build(len(tokenizer))


@pytest.fixture
def forget_texts() -> list[str]:
    return list(FORGET_TEXTS)


@pytest.fixture
def retain_texts() -> list[str]:
    return list(RETAIN_TEXTS)


@pytest.fixture
def make_batch(tokenizer):
    """Texts -> one padded TokenBatch of seq_len chunks (for before/after measurements)."""
    from saeguard.corpus import (
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
