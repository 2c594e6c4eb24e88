"""A tiny Llama with a planted forget latent, guards built by hand on it, benign padding text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from saeguard.attacks import BenignText
from saeguard.config import FitConfig, GateRule
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import SelectedLatents
from saeguard.eval.items import McqItem
from saeguard.eval.mcq import McqConfig, score_items
from saeguard.testing import (
    EVAL_VOCAB,
    PLANTED_LATENT,
    RETAIN_WORDS,
    corpus,
    eval_tokenizer,
    make_items,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

GuardFactory = Callable[..., Guardrail]


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    return eval_tokenizer()


@pytest.fixture
def planted():
    """(model, sae): forget words carry a private direction that only latent 37 reads."""
    model = tiny_llama(vocab_size=len(EVAL_VOCAB), max_positions=1024)
    return plant_forget_direction(model, random_sae("standard"))


@pytest.fixture
def model(planted) -> LlamaForCausalLM:
    return planted[0]


@pytest.fixture
def make_planted_guard(planted, tok) -> GuardFactory:
    """``make_planted_guard(rule="mean", tau=0.2)``: the planted latent, a huge clamp on the whole input.

    On the test items rho is 0.33 (mean) / 0.75 (window of 8) on forget questions and 0 on
    retain ones; 150 tokens of retain words before a forget question bring the mean to 0.06.
    """
    _, sae = planted

    def build(rule: GateRule = "mean", tau: float = 0.2) -> Guardrail:
        return Guardrail(
            latents=SelectedLatents.from_sae(sae, [PLANTED_LATENT]),
            layer=0,
            tau=tau,
            clamp_value=1000.0,
            config=FitConfig(gate_rule=rule, window_tokens=8, clamp_scope="input"),
            special_ids=sorted(tok.all_special_ids),
        )

    return build


@pytest.fixture
def benign(tok) -> BenignText:
    """Padding from texts of retain words only (the tiny vocabulary has no real prose)."""
    return BenignText(tok, {"retain": corpus(RETAIN_WORDS, 12, 40, seed=7)})


CLOZE = McqConfig(scorer="cloze")


@pytest.fixture
def question_sets():
    """(forget, retain): 30 forget-word and 30 retain-word questions of ``testing.make_items``."""
    items = make_items(60)
    return [it for it in items if it.subject == "biology"], [it for it in items if it.subject != "biology"]


@pytest.fixture
def blocked_and_answerable(model, tok) -> Callable[..., list[McqItem]]:
    """``blocked_and_answerable(guard, attack, items)``: items set up so the metric's preconditions hold.

    The answer becomes the base model's prediction when the base predicts the same option with
    and without ``attack`` (known, and still answerable under it) and the guarded model, without
    the attack, predicts another (blocked). Predictions never depend on the answer index.
    """

    def select(guard: Guardrail, attack, items: list[McqItem]) -> list[McqItem]:
        plain = score_items(model, tok, items, CLOZE)
        attacked = score_items(model, tok, [attack.item(it) for it in items], CLOZE)
        guarded = score_items(model, tok, items, CLOZE, guard=guard)
        return [
            replace(item, answer=p.prediction)
            for item, p, a, g in zip(items, plain, attacked, guarded, strict=True)
            if p.prediction == a.prediction != g.prediction
        ]

    return select
