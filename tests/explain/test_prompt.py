"""The per-token latent trace agrees with the gate: rho, the decision, fired tokens and clamped tokens."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saeguard.core.gate import token_scope
from saeguard.explain.prompt import trace_latents
from saeguard.hf.prompts import encode_prompts

PROMPTS = ["what is the cell virus gene protein", "the king of the river city", "the cell of the king"]


def _gate_record(model, tokenizer, guard, prompt):
    """The gate's own record of the prompt's forward (as Guardrail.generate encodes it)."""
    encoded = encode_prompts(tokenizer, [prompt], chat=guard.config.chat_template)
    hook = guard.hook()
    with hook.session(model), token_scope(encoded.content_mask):
        hook.reset()
        hook.recording = True
        model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask)
        record = hook.records[0]
        hook.reset()
    return record


@pytest.mark.parametrize("scope", ["fired", "input"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_trace_rho_decision_and_clamp_equal_the_gates(fitted, tokenizer, prompt, scope):
    model, guard = fitted
    guard = dataclasses.replace(guard, config=dataclasses.replace(guard.config, clamp_scope=scope))
    trace = trace_latents(model, tokenizer, guard, prompt)
    record = _gate_record(model, tokenizer, guard, prompt)
    assert trace.trace.rho == pytest.approx(float(record.rho[0]), abs=1e-12)
    assert trace.trace.flagged == bool(record.flagged[0])
    assert trace.clamped == record.clamped[0].tolist()
    fired_from_latents = [any(v > 0 for v in row) for row in trace.activations]
    assert fired_from_latents == record.fired[0].tolist()


def test_forget_prompt_is_flagged_and_shows_the_planted_latent(fitted, tokenizer):
    model, guard = fitted
    trace = trace_latents(model, tokenizer, guard, PROMPTS[0])
    assert trace.trace.flagged and trace.trace.rho > trace.trace.tau
    position = trace.trace.tokens.index("cell")
    assert int(guard.latents.ids[0]) in trace.fired_latents(position)
    assert trace.clamped[position]
    data = trace.to_dict()
    assert data["rho"] == trace.trace.rho and len(data["activations"]) == len(data["tokens"])
    assert torch.tensor(data["activations"]).shape == (len(data["tokens"]), len(guard.latents.ids))


def test_retain_prompt_passes_and_nothing_is_clamped(fitted, tokenizer):
    model, guard = fitted
    trace = trace_latents(model, tokenizer, guard, PROMPTS[1])
    assert not trace.trace.flagged and not any(trace.clamped)
