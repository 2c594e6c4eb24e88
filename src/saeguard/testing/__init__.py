"""Tiny randomly initialised models, tokenizers, random SAEs and items for tests and the tiny bench.

Everything is built from configs in a fraction of a second (no hub, no
download), so the test suite runs on 2 CPU cores. One builder of each kind:
tests, ``saeguard bench --model tiny`` and the docs' examples all use these.

- ``testing/models.py``: vocabularies, word-level tokenizers, topic corpora, tiny decoders;
- ``testing/chat.py``: chat templates of the common families and tokenizers carrying them;
- ``testing/guards.py``: random SAEs, the planted forget latent, MCQ items, a guard without a fit;
- ``testing/hf_cache.py``: files laid out as the Hugging Face caches keep them (``testing_hub``).

Everything but ``hf_cache`` is importable from ``saeguard.testing`` directly.
"""

from __future__ import annotations

from saeguard.testing.chat import (
    CHAT_MARKERS,
    CHAT_TEMPLATES,
    CHAT_WORDS,
    CHATML_TEMPLATE,
    GEMMA3_TEMPLATE,
    GEMMA_TEMPLATE,
    LLAMA2_TEMPLATE,
    LLAMA3_TEMPLATE,
    ZEPHYR_TEMPLATE,
    chat_tokenizer,
)
from saeguard.testing.guards import (
    PLANTED_LATENT,
    SENTENCE_END_WORDS,
    make_guard,
    make_items,
    plant_forget_direction,
    random_sae,
    sentence_guard,
)
from saeguard.testing.models import (
    CHAT_TEMPLATE,
    COMMON_WORDS,
    EVAL_VOCAB,
    FORGET_WORDS,
    PROMPT_WORDS,
    RETAIN_WORDS,
    SPECIALS,
    TINY_MODELS,
    VOCAB,
    corpus,
    eval_llama,
    eval_tokenizer,
    fast_tokenizer,
    make_tokenizer,
    text_tokenizer,
    tiny_decoder,
    tiny_gemma2,
    tiny_gpt2,
    tiny_llama,
    tiny_qwen2,
    word_level,
)

__all__ = [
    "CHATML_TEMPLATE",
    "CHAT_MARKERS",
    "CHAT_TEMPLATE",
    "CHAT_TEMPLATES",
    "CHAT_WORDS",
    "COMMON_WORDS",
    "EVAL_VOCAB",
    "FORGET_WORDS",
    "GEMMA3_TEMPLATE",
    "GEMMA_TEMPLATE",
    "LLAMA2_TEMPLATE",
    "LLAMA3_TEMPLATE",
    "PLANTED_LATENT",
    "PROMPT_WORDS",
    "RETAIN_WORDS",
    "SENTENCE_END_WORDS",
    "SPECIALS",
    "TINY_MODELS",
    "VOCAB",
    "ZEPHYR_TEMPLATE",
    "chat_tokenizer",
    "corpus",
    "eval_llama",
    "eval_tokenizer",
    "fast_tokenizer",
    "make_guard",
    "make_items",
    "make_tokenizer",
    "plant_forget_direction",
    "random_sae",
    "sentence_guard",
    "text_tokenizer",
    "tiny_decoder",
    "tiny_gemma2",
    "tiny_gpt2",
    "tiny_llama",
    "tiny_qwen2",
    "word_level",
]
