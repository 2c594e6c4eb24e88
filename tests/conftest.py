"""Shared fixtures: tiny models, tokenizers and corpora from ``saeguard.testing``."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from saeguard.testing import FORGET_WORDS, RETAIN_WORDS, corpus, make_tokenizer, tiny_gpt2, tiny_llama


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far slower with 2 intra-op threads when the CPUs are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    return tiny_llama() if request.param == "llama" else tiny_gpt2()


@pytest.fixture
def forget_corpus() -> list[str]:
    return corpus(FORGET_WORDS, 24, 40, seed=1)


@pytest.fixture
def retain_corpus() -> list[str]:
    return corpus(RETAIN_WORDS, 24, 40, seed=2)


@pytest.fixture(params=["standard", "jumprelu", "topk"])
def architecture(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def default_model():
    """The embedded SmolLM2-135M-Instruct and its tokenizer, loaded once for the integration tests."""
    from saeguard.hf.models import load_default_model

    return load_default_model()
