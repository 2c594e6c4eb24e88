"""The gate and clamp: exactness, batching, generation, forced gate."""

from __future__ import annotations

import pytest
import torch

from saeguard import Guardrail, token_scope
from saeguard.core.sae import encode_all
from saeguard.hf.corpus import pad_batch
from saeguard.hf.layers import decoder_blocks, residual_at
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    plant_forget_direction,
    random_sae,
    tiny_gpt2,
    tiny_llama,
)

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, gate_percentile=90, show_progress=False)
PROMPTS = [
    "what is the cell virus gene protein",
    "the king of the city",
    "what is dna and rna in the membrane of a cell",
    "a poem about the ocean and a river and a mountain castle",
    "enzyme",
]


def fitted(model_kind: str, architecture: str, tokenizer, **overrides):
    model = tiny_llama() if model_kind == "llama" else tiny_gpt2()
    model, sae = plant_forget_direction(model, random_sae(architecture))
    guard = Guardrail.fit(
        model,
        tokenizer,
        sae,
        forget=corpus(FORGET_WORDS, 24, 40, 1),
        retain=corpus(RETAIN_WORDS, 24, 40, 2),
        **(FIT | overrides),
    )
    return model, sae, guard


def block_output(model, layer, ids, mask):
    """The residual after ``layer`` as the rest of the model sees it (after any guard hook)."""
    seen = []
    handle = decoder_blocks(model)[layer].register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    finally:
        handle.remove()
    out = seen[0]
    return (out if isinstance(out, torch.Tensor) else out[0]), logits


@pytest.mark.parametrize("model_kind", ["llama", "gpt2"])
def test_efficient_clamp_equals_dense_sae_edit_in_float64(model_kind, architecture, tokenizer):
    model, sae, guard = fitted(model_kind, architecture, tokenizer, clamp=50.0)
    ids, mask = pad_batch([tokenizer(p)["input_ids"] for p in PROMPTS], 0)
    clean = residual_at(model, 1, ids, mask)
    with guard.attached(model) as hook:
        hook.forced = True
        patched, _ = block_output(model, 1, ids, mask)

    h = clean.double()
    sae64 = sae.to(torch.float64)
    f = encode_all(sae64, h)
    chosen = guard.latents.ids
    fires = (f[..., chosen] > 0).any(-1) & mask.bool() & ~torch.isin(ids, torch.tensor(guard.special_ids))
    f_edit = f.clone()
    f_edit[..., chosen] = -guard.clamp_value
    dense = sae64.decode(f_edit) + (h - sae64.decode(f))
    expected = torch.where(fires.unsqueeze(-1), dense, h)
    assert fires.any() and not fires.all()
    scale = expected.abs().max()
    assert ((patched.double() - expected).abs().max() / scale) < 1e-5


@pytest.mark.parametrize("model_kind", ["llama", "gpt2"])
@pytest.mark.parametrize("left", [False, True])
def test_each_prompt_gets_same_decision_and_output_alone_and_in_padded_batch(model_kind, left, tokenizer):
    model, _, guard = fitted(model_kind, "jumprelu", tokenizer)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ids, mask = pad_batch(sequences, 0, left=left)
    with guard.attached(model) as hook:
        hook.recording = True
        _, batch_logits = block_output(model, 1, ids, mask)
        batch_flags = hook.records[-1].flagged
        for row, seq in enumerate(sequences):
            one_ids, one_mask = pad_batch([seq], 0)
            _, logits = block_output(model, 1, one_ids, one_mask)
            assert bool(hook.records[-1].flagged[0]) == bool(batch_flags[row])
            real = mask[row].bool()
            torch.testing.assert_close(batch_logits[row][real], logits[0], rtol=1e-4, atol=1e-4)
    assert batch_flags.any() and not batch_flags.all()


@pytest.mark.parametrize("model_kind", ["llama", "gpt2"])
def test_gate_forced_off_leaves_outputs_bit_identical(model_kind, tokenizer):
    model, _, guard = fitted(model_kind, "jumprelu", tokenizer)
    ids, mask = pad_batch([tokenizer(p)["input_ids"] for p in PROMPTS], 0)
    _, plain = block_output(model, 1, ids, mask)
    with guard.attached(model) as hook:
        hook.forced = False
        _, guarded = block_output(model, 1, ids, mask)
        hook.forced = None
        _, gated = block_output(model, 1, ids, mask)
    assert torch.equal(plain, guarded)
    assert not torch.equal(plain, gated)


@pytest.mark.parametrize("model_kind", ["llama", "gpt2"])
def test_cached_generation_clamps_exactly_what_full_recomputation_clamps(model_kind, tokenizer):
    model, _, guard = fitted(model_kind, "jumprelu", tokenizer)
    prompts = PROMPTS[:4]
    texts, _ = guard.generate(model, tokenizer, prompts, max_new_tokens=6)
    from saeguard.hf.prompts import encode_prompts

    encoded = encode_prompts(tokenizer, prompts)
    with guard.attached(model) as hook, token_scope(encoded.content_mask):
        hook.recording = True
        output = model.generate(
            input_ids=encoded.input_ids,
            attention_mask=encoded.attention_mask,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
        cached = torch.cat([r.clamped for r in hook.records], dim=1)
        cached_flags = hook.records[-1].flagged
    # generate() runs the last token's forward only if it needs its logits: align on what ran.
    steps = cached.shape[1]
    full_ids = output[:, :steps]
    full_mask = (full_ids != 0).long()
    content = torch.zeros_like(full_ids, dtype=torch.bool)
    content[:, : encoded.prompt_length] = encoded.content_mask
    content[:, encoded.prompt_length :] = True
    prompt_len = encoded.prompt_length
    with guard.attached(model) as hook, token_scope(content, [prompt_len] * len(prompts)):
        hook.recording = True
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions).logits
        recomputed = hook.records[-1].clamped
        assert torch.equal(hook.records[-1].flagged, cached_flags)
    assert torch.equal(cached, recomputed)
    assert cached.any()
    greedy = logits[:, prompt_len - 1 : steps - 1].argmax(-1)
    assert torch.equal(greedy, output[:, prompt_len:steps])
    assert len(texts) == len(prompts)


def test_sampling_generation_keeps_state_per_row_and_per_call(tokenizer):
    model, _, guard = fitted("llama", "jumprelu", tokenizer)
    torch.manual_seed(0)
    _, first = guard.generate(model, tokenizer, PROMPTS[:2], max_new_tokens=4, do_sample=True)
    _, second = guard.generate(model, tokenizer, PROMPTS[1:2], max_new_tokens=4, do_sample=True)
    assert bool(first[0].flagged[1]) == bool(second[0].flagged[0])


def test_two_guardrails_compose_on_different_layers(tokenizer):
    model, sae, guard = fitted("llama", "jumprelu", tokenizer)
    other = Guardrail.fit(
        model,
        tokenizer,
        sae,
        forget=corpus(RETAIN_WORDS, 24, 40, 3),
        retain=corpus(FORGET_WORDS, 24, 40, 4),
        **(FIT | {"layer": 0}),
    )
    ids, mask = pad_batch([tokenizer(p)["input_ids"] for p in PROMPTS], 0)
    with guard.attached(model) as first, other.attached(model) as second:
        first.recording = second.recording = True
        model(input_ids=ids, attention_mask=mask)
    assert first.records[-1].flagged.tolist() != second.records[-1].flagged.tolist()
    assert first.records[-1].flagged.any() and second.records[-1].flagged.any()


def test_continuations_of_an_expanded_prompt_cache_inherit_the_prompt_decision(tokenizer):
    model, _, guard = fitted("llama", "jumprelu", tokenizer)
    prompts = PROMPTS[:2]
    ids, mask = pad_batch([tokenizer(p)["input_ids"] for p in prompts], 0, left=True)
    options = torch.tensor([[5, 6], [8, 9], [20, 21]])  # three 2-token continuations
    with guard.attached(model) as hook:
        hook.recording = True
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        prompt_flags = hook.records[-1].flagged
        cache = out.past_key_values
        cache.batch_repeat_interleave(3)
        cont_ids = options.repeat(2, 1)
        cont_mask = torch.cat([mask.repeat_interleave(3, 0), torch.ones(6, 2, dtype=mask.dtype)], dim=1)
        with token_scope(freeze=True):
            model(input_ids=cont_ids, attention_mask=cont_mask, past_key_values=cache, use_cache=True)
        assert hook.records[-1].flagged.tolist() == prompt_flags.repeat_interleave(3).tolist()
    assert prompt_flags.tolist() == [True, False]
