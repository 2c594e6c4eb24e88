"""Fixtures for evaluation tests: a tokenizer that knows the MCQ prompt's words, a tiny Llama."""

from __future__ import annotations

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from saeguard.testing import eval_llama, eval_tokenizer


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    return eval_tokenizer()


@pytest.fixture
def llama() -> LlamaForCausalLM:
    return eval_llama()
