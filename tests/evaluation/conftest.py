"""Fixtures for evaluation tests: a tokenizer that knows the MCQ prompt's words, tiny models.

The core's word-level tokenizer has no "A"/"Answer"/punctuation tokens, so the MCQ
prompt would be all <unk>; this one splits punctuation and knows those words.
"""

from __future__ import annotations

import pytest
import torch
from conftest import COMMON_WORDS, FORGET_WORDS, RETAIN_WORDS, SPECIALS, make_tokenizer, tiny_llama
from sae_lens import StandardSAE, StandardSAEConfig
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from saeguard.evaluation.items import McqItem
from saeguard.fit import FitConfig
from saeguard.guardrail import Guardrail
from saeguard.sae import SelectedLatents

PROMPT_WORDS = [
    "A",
    "B",
    "C",
    "D",
    ".",
    ":",
    "(",
    ")",
    "Answer",
    "The",
    "following",
    "are",
    "multiple",
    "choice",
    "questions",
    "with",
    "answers",
    "biology",
    "history",
]
EVAL_VOCAB = SPECIALS + ["user", "assistant", "system"] + FORGET_WORDS + RETAIN_WORDS + COMMON_WORDS
EVAL_VOCAB = EVAL_VOCAB + PROMPT_WORDS + ["<unk>"]


def eval_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    return make_tokenizer(chat=chat, vocab=EVAL_VOCAB, split_punctuation=True)


def eval_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(seed=seed, vocab_size=len(EVAL_VOCAB))


def make_items(n: int = 6, seed: int = 0) -> list[McqItem]:
    """Questions made of forget or retain words, options of 1-3 words."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(n):
        pool = FORGET_WORDS if index % 2 == 0 else RETAIN_WORDS
        words = [pool[int(i)] for i in torch.randint(len(pool), (5,), generator=generator)]
        choices = tuple(
            " ".join(pool[int(i)] for i in torch.randint(len(pool), (1 + k % 3,), generator=generator))
            for k in range(4)
        )
        subject = "biology" if index % 2 == 0 else "history"
        items.append(McqItem(f"what is the {' '.join(words)}", choices, index % 4, subject, f"q{index}"))
    return items


def make_guard(
    model,
    tokenizer,
    *,
    layer: int = 0,
    ids=(0, 1, 2, 3),
    threshold: float = 0.5,
    clamp: float = 50.0,
    seed: int = 0,
) -> Guardrail:
    """A guardrail built directly (no fit) from a random standard SAE."""
    generator = torch.Generator().manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(32, 16, generator=generator) * 4.0)
        sae.W_dec.copy_(torch.randn(16, 32, generator=generator) / 32**0.5)
        sae.b_enc.copy_(torch.randn(16, generator=generator) * 0.1 - 0.1)
        sae.b_dec.zero_()
    return Guardrail(
        latents=SelectedLatents.from_sae(sae, list(ids)),
        layer=layer,
        threshold=threshold,
        clamp=clamp,
        config=FitConfig(),
        special_ids=sorted(tokenizer.all_special_ids),
    )


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    return eval_tokenizer()


@pytest.fixture
def llama() -> LlamaForCausalLM:
    return eval_llama()
