"""The per-token trace is the gate's own view: its rho and decision equal the gate's in generate."""

from __future__ import annotations

import pytest

from saeguard.errors import SaeguardError
from saeguard.explain.trace import trace_prompt
from saeguard.testing import tiny_llama

PROMPTS = ["what is the cell virus gene protein", "the king of the city", "what is dna in a cell"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_trace_rho_and_decision_equal_guard_generate(fitted, tokenizer, prompt):
    model, guard = fitted
    _, records = guard.generate(model, tokenizer, [prompt], max_new_tokens=1)
    trace = trace_prompt(model, tokenizer, guard, prompt)
    assert trace.rho == pytest.approx(float(records[0].rho[0]), rel=1e-12, abs=1e-12)
    assert trace.flagged == bool(records[0].prompt_flagged[0])
    assert trace.tau == guard.tau


def test_evidence_averages_to_rho_over_the_counted_user_tokens(fitted, tokenizer):
    model, guard = fitted
    trace = trace_prompt(model, tokenizer, guard, PROMPTS[0])
    assert len(trace.tokens) == len(trace.token_ids) == len(trace.evidence) == len(trace.counted)
    counted = [e for e, c in zip(trace.evidence, trace.counted, strict=True) if c]
    assert len(counted) == len(PROMPTS[0].split())  # the user's words only, not the template
    assert sum(counted) / len(counted) == pytest.approx(trace.rho, abs=1e-12)
    assert all(e == 0 for e, c in zip(trace.evidence, trace.counted, strict=True) if not c)
    assert trace.flagged and trace.rho > trace.tau
    assert [t for t, c in zip(trace.tokens, trace.counted, strict=True) if c] == PROMPTS[0].split()


def test_a_conversation_counts_every_user_turn(fitted, tokenizer):
    model, guard = fitted
    conversation = [
        {"role": "user", "content": "the king of the city"},
        {"role": "assistant", "content": "the cell virus gene"},
        {"role": "user", "content": "what is dna in a cell"},
    ]
    trace = trace_prompt(model, tokenizer, guard, conversation)
    _, records = guard.generate(model, tokenizer, [conversation], max_new_tokens=1)
    counted = [t for t, c in zip(trace.tokens, trace.counted, strict=True) if c]
    assert " ".join(counted) == "the king of the city what is dna in a cell"  # not the assistant turn
    assert trace.rho == pytest.approx(float(records[0].rho[0]), abs=1e-12)


def test_a_prompt_beyond_the_models_positions_says_to_shorten_the_prompt(fitted, tokenizer):
    model, guard = fitted  # the tiny Llama has 256 positions
    with pytest.raises(SaeguardError, match="over the model's 256 positions: shorten the prompt") as caught:
        trace_prompt(model, tokenizer, guard, " ".join(["cell"] * 300))
    assert "seq_len" not in str(caught.value) and "\n" not in str(caught.value)


def test_trace_refuses_a_model_the_guard_was_not_fitted_on(fitted, tokenizer):
    _, guard = fitted
    with pytest.raises(SaeguardError, match="this model has 1"):
        trace_prompt(tiny_llama(layers=1), tokenizer, guard, "the cell")
