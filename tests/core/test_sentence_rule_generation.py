"""The sentence rule in every generation path: batched vs alone, cache vs recompute, beams,
chunked prefill, continued conversations, inputs_embeds, threads, and answer calibration
(issue 13; break-it review of 6d1141d).

Regression inputs: ``model.generate(inputs_embeds=...)`` with a guard attached once raised
transformers' "doesn't have its forwarding implemented" (the wrapped prepare_inputs_for_generation
lost its signature); a right-padded answer batch once closed a shorter row's open sentence at the
padding, so an answer's calibration rho depended on the rows batched with it.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from saeguard import Guardrail, token_scope
from saeguard.core.calibration import gate_rho
from saeguard.core.state import thread_store
from saeguard.errors import SaeguardError
from saeguard.hf.corpus import TokenBatch
from saeguard.hf.prompts import encode_prompts
from saeguard.testing import sentence_guard

pytestmark = pytest.mark.filterwarnings("ignore::saeguard.errors.CalibrationWarning")

PROMPTS = [
    "the king of the city and " * 3 + "what is the cell",
    "the king of the river",
    "the river is dna",
    "cell and the river is the king of the city and a poem",
    "the cell",
    "a poem about the ocean and the mountain and the dna of a cell",
]


@pytest.fixture(scope="module")
def planted():
    return sentence_guard()


def _steps(records) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, steps) flags and rho of one generate call's records."""
    return torch.stack([r.flagged for r in records], 1), torch.stack([r.rho for r in records], 1)


def test_end_ids_change_the_decisions_so_the_checks_below_are_not_vacuous(planted):
    tok, model, _, guard = planted
    flags, rho = _steps(guard.generate(model, tok, PROMPTS, max_new_tokens=10)[1])
    no_ends, rho_no_ends = _steps(
        replace(guard, sentence_end_ids=()).generate(model, tok, PROMPTS, max_new_tokens=10)[1]
    )
    assert not torch.equal(rho, rho_no_ends)
    assert flags.any() and not flags.all()  # decides both ways
    assert not torch.equal(flags[:, 0], flags[:, -1])  # some row is flagged by the running rule only


def _min_sentence(guard: Guardrail, tokens: int) -> Guardrail:
    return replace(guard, config=replace(guard.config, min_sentence_tokens=tokens))


@pytest.mark.parametrize("min_sentence", [1, 3])
def test_batched_rows_decide_as_alone_with_left_padding(planted, min_sentence):
    tok, model, _, guard = planted
    guard = _min_sentence(guard, min_sentence)
    texts, records = guard.generate(model, tok, PROMPTS, max_new_tokens=10)
    flags, rho = _steps(records)
    for row, prompt in enumerate(PROMPTS):
        alone_texts, alone = guard.generate(model, tok, [prompt], max_new_tokens=10)
        alone_flags, alone_rho = _steps(alone)
        assert alone_texts[0] == texts[row]
        assert alone_flags[0].tolist() == flags[row].tolist(), row
        assert alone_rho[0].tolist() == pytest.approx(rho[row].tolist(), abs=1e-9), row
        assert bool(alone[0].prompt_flagged[0]) == bool(records[0].prompt_flagged[row])


def test_cached_and_uncached_generation_decide_the_same(planted):
    tok, model, _, guard = planted
    texts, records = guard.generate(model, tok, PROMPTS, max_new_tokens=10)
    texts_nc, records_nc = guard.generate(model, tok, PROMPTS, max_new_tokens=10, use_cache=False)
    assert texts == texts_nc
    assert torch.equal(_steps(records)[0], _steps(records_nc)[0])
    torch.testing.assert_close(_steps(records)[1], _steps(records_nc)[1])


@pytest.mark.parametrize(
    "settings",
    [
        {"num_beams": 3, "num_return_sequences": 2},
        {"do_sample": True, "num_return_sequences": 3},
        {"do_sample": True, "num_beams": 2},
    ],
)
def test_beams_and_several_sequences_decide_as_without_cache(planted, settings):
    tok, model, _, guard = planted
    torch.manual_seed(0)
    cached, records = guard.generate(model, tok, PROMPTS, max_new_tokens=8, **settings)
    torch.manual_seed(0)
    uncached, records_nc = guard.generate(model, tok, PROMPTS, max_new_tokens=8, use_cache=False, **settings)
    assert cached == uncached
    assert records[-1].flagged.tolist() == records_nc[-1].flagged.tolist()


def _guarded_generate(model, guard, tok, prompts, **kwargs):
    enc = encode_prompts(tok, prompts)
    with guard.attached(model) as hook, token_scope(enc.content_mask):
        out = model.generate(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            pad_token_id=0,
            do_sample=False,
            **kwargs,
        )
        history = thread_store().histories[hook]
    return enc, out, history


@pytest.mark.parametrize("min_sentence", [1, 3])
def test_per_position_flags_equal_one_replay_without_cache(planted, min_sentence):
    tok, model, _, guard = planted
    guard = _min_sentence(guard, min_sentence)
    enc, out, history = _guarded_generate(model, guard, tok, PROMPTS, max_new_tokens=10)
    prompt_length = enc.input_ids.shape[1]
    mask = torch.cat([enc.attention_mask, torch.ones(len(PROMPTS), out.shape[1] - prompt_length)], 1)
    mask = mask[:, :-1].long()
    with guard.attached(model) as hook, token_scope(enc.content_mask):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=out[:, :-1], attention_mask=mask, position_ids=positions, use_cache=False)
        replay = thread_store().histories[hook]
    assert torch.equal(history.flag, replay.flag)
    assert history.flag[:, prompt_length:].any() and not history.flag[:, prompt_length:].all()


def _manual(model, guard, ids: torch.Tensor, chunks: list[int], decode: int, end: int):
    """Feed ``ids`` (1, T) in prefill ``chunks`` reusing the KV cache, then ``decode`` greedy tokens."""
    with guard.attached(model) as hook, token_scope(decision_end=[end]):
        past, start, logits = None, 0, None
        for size in chunks:
            piece = ids[:, start : start + size]
            out = model(input_ids=piece, past_key_values=past, use_cache=True)
            past, logits, start = out.past_key_values, out.logits, start + size
        tokens = []
        for _ in range(decode):
            token = logits[:, -1:].argmax(-1)
            tokens.append(int(token))
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits
        history = thread_store().histories[hook]
    return tokens, history


@pytest.mark.parametrize("chunks", [[3, 100], [5, 1, 2, 100], [1] * 40])
def test_chunked_prefill_decides_as_one_prefill(planted, chunks):
    """A prompt fed in chunks (with its decision_end) then decoded gives the one-prefill decisions
    from the last chunk on (the first chunks' own tokens are judged before the prompt is complete)."""
    tok, model, _, guard = planted
    ids = tok(PROMPTS[3] + " what is the cell", return_tensors="pt").input_ids
    end = ids.shape[1]
    chunks = [c for c in chunks if c] if sum(chunks) <= end else chunks
    whole_tokens, whole = _manual(model, guard, ids, [end], 8, end)
    sizes, left = [], end
    for size in chunks:
        sizes.append(min(size, left))
        left -= sizes[-1]
        if not left:
            break
    tokens, chunked = _manual(model, guard, ids, sizes, 8, end)
    assert tokens == whole_tokens
    assert torch.equal(chunked.prompt_flag, whole.prompt_flag)
    assert torch.equal(chunked.flag[:, end - sizes[-1] :], whole.flag[:, end - sizes[-1] :])
    torch.testing.assert_close(chunked.cum_e, whole.cum_e)


def test_a_continued_conversation_on_the_cache_decides_as_one_forward(planted):
    """Prompt, decoded tokens, then a new user turn fed on the same KV cache, then decoding: the
    flags equal one forward over the whole sequence (same decision_end)."""
    tok, model, _, guard = planted
    first = tok("the king of the river", return_tensors="pt").input_ids
    follow_up = tok("and what is the cell dna virus gene", return_tensors="pt").input_ids
    end = first.shape[1]
    with guard.attached(model) as hook, token_scope(decision_end=[end]):
        out = model(input_ids=first, use_cache=True)
        past, seq = out.past_key_values, first
        for turn in range(2):
            for _ in range(4):
                token = out.logits[:, -1:].argmax(-1)
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past, seq = out.past_key_values, torch.cat([seq, token], 1)
            if turn == 0:
                out = model(input_ids=follow_up, past_key_values=past, use_cache=True)
                past, seq = out.past_key_values, torch.cat([seq, follow_up], 1)
        cached = thread_store().histories[hook]
    with guard.attached(model) as hook, token_scope(decision_end=[end]):
        model(input_ids=seq, use_cache=False)
        replay = thread_store().histories[hook]
    assert torch.equal(cached.flag, replay.flag)
    assert not cached.flag[0, 0] and cached.flag[0, -1]  # the follow-up is caught by the running rule


def test_generate_with_prefill_chunks_decides_as_without(planted):
    """transformers' ``prefill_chunk_size``: the prompt is prefilled in chunks inside generate.
    FAILS if it gives other texts/decisions than one prefill (or a traceback instead of a
    one-line SaeguardError refusing the option)."""
    tok, model, _, guard = planted
    texts, records = guard.generate(model, tok, PROMPTS[:1], max_new_tokens=6)
    try:
        chunked, records_c = guard.generate(model, tok, PROMPTS[:1], max_new_tokens=6, prefill_chunk_size=4)
    except SaeguardError:
        return  # refused clearly: fine
    assert chunked == texts
    assert records_c[-1].flagged.tolist() == records[-1].flagged.tolist()


# -- 2. inputs_embeds ------------------------------------------------------------------------------------
def test_inputs_embeds_forwards_close_sentences_only_at_uncounted_tokens(planted):
    tok, model, _, guard = planted
    enc = encode_prompts(tok, PROMPTS, chat=False)
    embeds = model.get_input_embeddings()(enc.input_ids)
    with guard.attached(model) as hook:
        model(inputs_embeds=embeds, attention_mask=enc.attention_mask, use_cache=False)
        by_embeds = thread_store().histories[hook]
    assert bool((by_embeds.ids == -1).all())
    no_ends = replace(guard, sentence_end_ids=())
    with no_ends.attached(model) as hook:  # with ids, but no end id: only padding closes
        model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
        by_ids = thread_store().histories[hook]
    assert torch.equal(by_embeds.flag, by_ids.flag)
    torch.testing.assert_close(by_embeds.cum_e, by_ids.cum_e)


def test_generate_from_inputs_embeds_runs(planted):
    """FAILS (any guard, not only the sentence rule): with a guard attached,
    ``model.generate(inputs_embeds=...)`` raises transformers' ValueError "doesn't have its
    forwarding implemented": core/dispatch.py wraps ``prepare_inputs_for_generation`` as
    ``prepare(input_ids, *args, **kwargs)``, and generate looks for an ``inputs_embeds``
    parameter in its signature (functools.wraps on the wrapper would keep it)."""
    tok, model, _, guard = planted
    enc = encode_prompts(tok, PROMPTS, chat=False)
    embeds = model.get_input_embeddings()(enc.input_ids)
    with guard.attached(model) as hook:
        hook.recording = True
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=enc.attention_mask,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
        assert out.shape == (len(PROMPTS), 6)
        assert len(hook.records) == 6


def test_an_embeds_prefill_then_decoding_by_ids_runs_and_reads_ends_only_where_ids_are_known(planted):
    tok, model, _, guard = planted
    enc = encode_prompts(tok, PROMPTS, chat=False)
    embeds = model.get_input_embeddings()(enc.input_ids)
    with guard.attached(model) as hook:
        out = model(inputs_embeds=embeds, attention_mask=enc.attention_mask, use_cache=True)
        mask = enc.attention_mask
        for _ in range(4):
            token = out.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, torch.ones_like(token)], 1)
            out = model(
                input_ids=token, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True
            )
        history = thread_store().histories[hook]
    length = enc.input_ids.shape[1]
    assert bool((history.ids[:, :length] == -1).all()) and bool((history.ids[:, length:] >= 0).all())
    ends = guard.rule.sentence_ends(history.ids)
    assert not ends[:, :length].any()
    assert history.flag.shape == (len(PROMPTS), length + 4)


# -- 4. threads ----------------------------------------------------------------------------------------
def test_two_threads_generating_at_once_decide_as_one_after_the_other(planted):
    tok, model, _, guard = planted
    halves = [PROMPTS[:3], PROMPTS[3:]]
    sequential = [guard.generate(model, tok, half, max_new_tokens=8) for half in halves]
    for _ in range(3):
        results: list = [None, None]
        barrier = threading.Barrier(2)

        def work(index: int, barrier=barrier, results=results) -> None:
            barrier.wait()
            results[index] = guard.generate(model, tok, halves[index], max_new_tokens=8)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for (texts, records), (expected_texts, expected) in zip(results, sequential, strict=True):
            assert texts == expected_texts
            assert torch.equal(_steps(records)[0], _steps(expected)[0])
            torch.testing.assert_close(_steps(records)[1], _steps(expected)[1])


def test_two_threads_on_one_attached_guard_decide_as_one_after_the_other(planted):
    tok, model, _, guard = planted
    halves = [PROMPTS[:3], PROMPTS[3:]]
    encoded = [encode_prompts(tok, half) for half in halves]

    def run(index: int):
        enc = encoded[index]
        with token_scope(enc.content_mask):
            out = model.generate(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask,
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=0,
            )
        return out, thread_store().histories[hook].flag.clone()

    with guard.attached(model) as hook:
        sequential = [run(0), run(1)]
        results: list = [None, None]
        barrier = threading.Barrier(2)

        def work(index: int) -> None:
            barrier.wait()
            results[index] = run(index)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for (out, flags), (expected_out, expected_flags) in zip(results, sequential, strict=True):
        assert torch.equal(out, expected_out)
        assert torch.equal(flags, expected_flags)


def test_an_answers_rho_does_not_depend_on_the_rows_batched_with_it(planted):
    """FAILS if answer calibration (``gate_rho(..., input_end=False)``, right-padded batches from
    ``answers.answered_batches``) reads a row's open last sentence when a longer row pads it:
    the padding (uncounted) closes the sentence, so the same answer gets another rho alone than
    beside a longer answer. The running gate never sees that padding (it pads on the left)."""
    tok, model, _, guard = planted
    latents, rule = guard.latents, guard.rule
    ids = tok("the king of the river is dna", return_tensors="pt").input_ids  # open at the end
    longer = tok("the king of the river and the city of the ocean is a poem", return_tensors="pt").input_ids
    pad = tok.pad_token_id
    alone = TokenBatch(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool))
    width = longer.shape[1]
    padded = torch.full((2, width), pad)
    padded[0, : ids.shape[1]], padded[1] = ids[0], longer[0]
    attention = (torch.arange(width) < torch.tensor([[ids.shape[1]], [width]])).long()
    batch = TokenBatch(padded, attention, attention.bool())
    kwargs = dict(statistic=guard.statistic, rule=rule, show_progress=False, input_end=False)
    rho_alone = gate_rho(model, guard.layer, latents, [alone], **kwargs)
    rho_batched = gate_rho(model, guard.layer, latents, [batch], **kwargs)
    assert rho_batched[0].item() == pytest.approx(rho_alone[0].item(), abs=1e-9)
