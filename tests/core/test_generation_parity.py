"""Every supported generate() strategy gives what a full recomputation without KV cache gives.

Issue 11 §1: the gate's per-row state must follow the cache (beam reordering,
expansion, rollback), so guarded generation with a cache equals the same call with
``use_cache=False`` (every step a full forward) on Llama-, GPT-2-, Qwen2- and
Gemma2-style models.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saeguard import Guardrail, token_scope
from saeguard.core.state import thread_store
from saeguard.hf.prompts import encode_prompts
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    TINY_MODELS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
)

PROMPTS = [
    "what is the cell virus gene protein",
    "the king of the city and the river",
    "a poem about the ocean and the mountain and the dna of a cell",
]
STRATEGIES = {
    "greedy": {},
    "sample": {"do_sample": True, "num_return_sequences": 2},
    "beam": {"num_beams": 4, "num_return_sequences": 4},
    "beam_sample": {"do_sample": True, "num_beams": 3},
}


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def subject(request, tok):
    torch.set_num_threads(1)
    model, sae = plant_forget_direction(TINY_MODELS[request.param](), random_sae("jumprelu"))
    guard = Guardrail.fit(
        model,
        tok,
        sae,
        forget=corpus(FORGET_WORDS, 24, 40, 1),
        retain=corpus(RETAIN_WORDS, 24, 40, 2),
        layer=0,
        n_features=2,
        ratio_percentile=90,
        seq_len=32,
        gate_percentile=90,
        gate_statistic="activation",
        show_progress=False,
    )
    # tau between the prompts' rho, so the gate decides both ways on every family
    _, records = guard.generate(model, tok, PROMPTS, max_new_tokens=1)
    rho = records[0].rho
    guard = dataclasses.replace(guard, tau=float(rho.min() + rho.max()) / 2)
    return request.param, model, guard


def _generate(model, guard, tok, settings, *, cache, guarded=True, prompts=PROMPTS, **extra):
    enc = encode_prompts(tok, prompts)
    kwargs = {"do_sample": False} | settings | extra
    torch.manual_seed(0)
    inputs = dict(
        input_ids=enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=12, pad_token_id=0
    )
    if not guarded:
        return model.generate(**inputs, **kwargs, use_cache=cache), None
    with guard.attached(model) as hook, token_scope(enc.content_mask):
        hook.recording = True
        out = model.generate(**inputs, **kwargs, use_cache=cache)
        history = thread_store().histories.get(hook)
        return out, (list(hook.records), history)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_cached_generation_equals_generation_without_cache(subject, tok, strategy):
    family, model, guard = subject
    cached, (records, _) = _generate(model, guard, tok, STRATEGIES[strategy], cache=True)
    recomputed, _ = _generate(model, guard, tok, STRATEGIES[strategy], cache=False)
    assert torch.equal(cached, recomputed), f"{family}/{strategy}: cached and recomputed generations differ"
    prompt_flags = records[0].prompt_flagged.tolist()
    assert any(prompt_flags) and not all(prompt_flags)  # the gate decides, both ways


def test_the_guard_changes_the_greedy_text(subject, tok):
    """The parity above is not vacuous: the guard's decisions change what is generated."""
    _, model, guard = subject
    guarded, _ = _generate(model, guard, tok, {}, cache=True)
    unguarded, _ = _generate(model, guard, tok, {}, cache=True, guarded=False)
    assert not torch.equal(guarded, unguarded)


def test_per_position_decisions_equal_a_replay_without_cache(subject, tok):
    _, model, guard = subject
    out, (_, history) = _generate(model, guard, tok, STRATEGIES["sample"], cache=True)
    enc = encode_prompts(tok, PROMPTS)
    prompt_length = enc.input_ids.shape[1]
    mask = torch.cat(
        [enc.attention_mask.repeat_interleave(2, 0), torch.ones(6, out.shape[1] - prompt_length)], 1
    )
    with guard.attached(model) as hook, token_scope(enc.content_mask):
        mask = mask[:, :-1].long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() derives them from the mask
        model(input_ids=out[:, :-1], attention_mask=mask, position_ids=positions, use_cache=False)
        replay = thread_store().histories[hook]
    assert torch.equal(history.flag, replay.flag)
    torch.testing.assert_close(history.cum_e, replay.cum_e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", [{"prompt_lookup_num_tokens": 2}, {"assistant": True}])
@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_assisted_decoding_gives_the_greedy_guarded_text(subject, tok, extra, prompt):
    """Assisted and prompt-lookup decoding roll the cache back after rejected drafts (batch 1 only)."""
    family, model, guard = subject
    greedy, _ = _generate(model, guard, tok, {}, cache=True, prompts=[prompt])
    if extra.get("assistant"):
        extra = {"assistant_model": TINY_MODELS[family](seed=1)}
    assisted, _ = _generate(model, guard, tok, {}, cache=True, prompts=[prompt], **extra)
    assert torch.equal(greedy, assisted)


def test_static_cache_gives_the_dynamic_cache_text(subject, tok):
    _, model, guard = subject
    dynamic, _ = _generate(model, guard, tok, {}, cache=True)
    static, _ = _generate(model, guard, tok, {"cache_implementation": "static"}, cache=True)
    assert torch.equal(dynamic, static)
