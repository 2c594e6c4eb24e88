"""Gates on a model: sessions vs global attachment, threads, chat ids, generate() options."""

from __future__ import annotations

import threading

import pytest
import torch

from saeguard import Guardrail, SaeguardError
from saeguard.core.hooks import dispatcher_for
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

PROMPTS = ["what is the cell virus gene protein", "the king of the city", "what is dna in a cell"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def setup(tok):
    torch.set_num_threads(1)
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    fit = dict(
        layer=1, n_features=2, ratio_percentile=90, seq_len=32, gate_percentile=90, show_progress=False
    )
    guard = Guardrail.fit(
        model, tok, sae, forget=corpus(FORGET_WORDS, 24, 40, 1), retain=corpus(RETAIN_WORDS, 24, 40, 2), **fit
    )
    other = Guardrail.fit(
        model, tok, sae, forget=corpus(RETAIN_WORDS, 24, 40, 3), retain=corpus(FORGET_WORDS, 24, 40, 4), **fit
    )
    return model, guard, other


def test_generate_without_cache_equals_generate_with_cache(setup, tok):
    """Regression: use_cache=False raised 'token scope of shape (2, 11) does not match the batch (2, 12)'."""
    model, guard, _ = setup
    cached, cached_records = guard.generate(model, tok, PROMPTS[:2], max_new_tokens=6)
    plain, plain_records = guard.generate(model, tok, PROMPTS[:2], max_new_tokens=6, use_cache=False)
    assert plain == cached
    assert (
        plain_records[0].prompt_flagged.tolist() == cached_records[0].prompt_flagged.tolist() == [True, False]
    )


def test_concurrent_generate_calls_equal_their_serial_runs(setup, tok):
    """Issue 11 §6: two threads, other guards, one model: no call sees the other's gate or state."""
    model, guard, other = setup
    jobs = [(g, [p]) for _ in range(4) for g in (guard, other, None) for p in PROMPTS]

    def run(job):
        g, prompts = job
        if g is None:
            return guard.generate(model, tok, prompts, max_new_tokens=5, guarded=False)[0]
        return g.generate(model, tok, prompts, max_new_tokens=5)[0]

    serial = [run(job) for job in jobs]
    results: list[list[str] | None] = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def worker(offset: int) -> None:
        barrier.wait()
        try:
            for index in range(offset, len(jobs), 3):
                results[index] = run(jobs[index])
        except BaseException as error:  # noqa: BLE001 - surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == serial
    assert len({tuple(r) for r in serial}) > 1  # the guards really differ on these prompts


def test_a_session_guards_only_its_own_thread(setup, tok):
    model, guard, _ = setup
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    plain = model(input_ids=ids).logits
    inside, outside = threading.Event(), threading.Event()
    seen: dict[str, torch.Tensor] = {}

    def other_thread() -> None:
        inside.wait()
        seen["other"] = model(input_ids=ids).logits
        outside.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with guard.hook().session(model):
        seen["own"] = model(input_ids=ids).logits
        inside.set()
        outside.wait()
    thread.join()
    assert torch.equal(seen["other"], plain)
    assert not torch.allclose(seen["own"], plain)


def test_an_attached_guard_also_guards_a_streaming_worker_thread(setup, tok):
    """attach() is global: generate run in a worker thread (TextIteratorStreamer style) is guarded too."""
    model, guard, _ = setup
    enc = tok([PROMPTS[0]], return_tensors="pt")
    kwargs = dict(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with guard.attached(model):
        expected = model.generate(**kwargs)
        out: dict[str, torch.Tensor] = {}
        worker = threading.Thread(target=lambda: out.setdefault("ids", model.generate(**kwargs)))
        worker.start()
        worker.join()
    assert torch.equal(out["ids"], expected)
    assert not torch.equal(model.generate(**kwargs), expected)


def test_attached_with_the_tokenizer_judges_chat_ids_like_guard_generate(setup, tok):
    """Issue 11 §2: raw chat-formatted ids count only the user's tokens when the tokenizer is given."""
    model, guard, _ = setup
    _, reference = guard.generate(model, tok, PROMPTS, max_new_tokens=1)
    for row, prompt in enumerate(PROMPTS):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with guard.attached(model, tokenizer=tok) as hook:
            hook.recording = True
            model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
        assert hook.records[0].rho.item() == pytest.approx(reference[0].rho[row].item(), rel=1e-9)
        assert hook.records[0].prompt_flagged.item() == reference[0].prompt_flagged[row].item()


def test_hooks_are_removed_when_the_last_guard_leaves(setup):
    model, guard, other = setup
    before = dict(model._forward_pre_hooks)
    with guard.attached(model), other.attached(model):
        assert "generate" in model.__dict__
    assert "generate" not in model.__dict__ and "prepare_inputs_for_generation" not in model.__dict__
    assert dict(model._forward_pre_hooks) == before
    assert not dispatcher_for(model).handles


def test_a_cache_built_without_the_guard_is_refused(setup, tok):
    model, guard, _ = setup
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, use_cache=True)
    with guard.attached(model), pytest.raises(SaeguardError, match="attach it before"):
        model(input_ids=ids[:, :1], past_key_values=out.past_key_values, use_cache=True)


@pytest.mark.parametrize(
    ("prompts", "kwargs", "message"),
    [
        ([], {}, "non-empty list of prompts"),
        ("a string", {}, "non-empty list of prompts"),
        (PROMPTS[:1], {"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        (PROMPTS[:1], {"max_new_tokens": 1000}, "exceeds the model's 256 positions"),
    ],
)
def test_generate_checks_its_arguments(setup, tok, prompts, kwargs, message):
    model, guard, _ = setup
    with pytest.raises(SaeguardError, match=message):
        guard.generate(model, tok, prompts, **kwargs)


def test_generate_needs_a_tokenizer(setup):
    model, guard, _ = setup
    with pytest.raises(SaeguardError, match="needs the model's tokenizer"):
        guard.generate(model, None, PROMPTS[:1])
