"""Guardrail.generate / attach refuse bad input in one line, and a guard never applies twice (issue 11).

From the reliability probe: before, a wrong model gave AttributeError or a matmul RuntimeError,
``attention_mask=`` a duplicate-keyword TypeError, options transformers rejects a raw
ValueError/ZeroDivisionError, ``return_dict_in_generate`` a TypeError, ids beyond the
embeddings an IndexError; and attaching the same guard twice (or calling ``guard.generate``
inside ``guard.attached``) gated and clamped every token twice without a word.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saeguard import Guardrail, SaeguardError
from saeguard.core.hooks import GateHook
from saeguard.testing import (
    CHAT_TEMPLATES,
    FORGET_WORDS,
    RETAIN_WORDS,
    chat_tokenizer,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

PROMPTS = ["what is the cell virus gene protein", "the king of the city and the river"]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    tok = make_tokenizer()
    guard = Guardrail.fit(
        model,
        tok,
        sae,
        forget=corpus(FORGET_WORDS, 8, 30, 1),
        retain=corpus(RETAIN_WORDS, 8, 30, 2),
        layer=1,
        n_features=2,
        ratio_percentile=90,
        seq_len=32,
        calibration_size=16,
        show_progress=False,
    )
    return model, tok, guard


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (None, "model must be a loaded language model"),
        ("llama", "model must be a loaded language model"),
        (lambda: tiny_llama(hidden_size=64), "hidden size 32, this model has 64"),
        (lambda: tiny_llama(layers=1), r"hook layer 1\), this model has 1"),
    ],
)
def test_generate_refuses_a_model_the_guard_does_not_fit(setup, model, named):
    _, tok, guard = setup
    with pytest.raises(SaeguardError, match=named):
        guard.generate(model() if callable(model) else model, tok, PROMPTS)


def test_generate_refuses_a_tokenizer_that_is_not_one(setup):
    model, _, guard = setup
    with pytest.raises(SaeguardError, match="generate needs the model's tokenizer"):
        guard.generate(model, "tok", PROMPTS)


@pytest.mark.parametrize("name", ["attention_mask", "input_ids", "inputs_embeds"])
def test_generate_refuses_encoded_inputs_it_builds_itself(setup, name):
    model, tok, guard = setup
    with pytest.raises(SaeguardError, match=f"generate encodes the prompts itself: drop {name}"):
        guard.generate(model, tok, PROMPTS, **{name: None})


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"foo": 1}, "ValueError: The following `model_kwargs` are not used"),
        ({"num_beams": 0}, "ZeroDivisionError"),
        ({"num_return_sequences": 3}, "num_return_sequences"),
        ({"streamer": "x"}, "AttributeError"),
        ({"penalty_alpha": 0.6, "top_k": 4}, "trust_remote_code"),
    ],
)
def test_options_generate_rejects_are_one_line(setup, options, named):
    model, tok, guard = setup
    with pytest.raises(SaeguardError) as caught:
        guard.generate(model, tok, PROMPTS, max_new_tokens=2, **options)
    message = str(caught.value)
    assert (
        message.startswith("model.generate refused these options")
        and named in message
        and "\n" not in message
    )


def test_return_dict_in_generate_gives_the_same_texts(setup):
    model, tok, guard = setup
    plain = guard.generate(model, tok, PROMPTS, max_new_tokens=4)[0]
    as_dict = guard.generate(
        model, tok, PROMPTS, max_new_tokens=4, return_dict_in_generate=True, output_scores=True
    )
    assert as_dict[0] == plain


def test_generate_refuses_token_ids_the_model_lacks(setup):
    model, _, guard = setup
    larger = chat_tokenizer(CHAT_TEMPLATES["chatml"])  # 53 tokens on a 40-token model
    with pytest.raises(SaeguardError, match="token id 52 but the model embeds ids 0..39"):
        guard.generate(model, larger, ["what about"], max_new_tokens=1)


def test_the_same_guard_cannot_be_attached_twice(setup):
    model, _, guard = setup
    with guard.attached(model):
        with pytest.raises(SaeguardError, match="already attached"):
            guard.attach(model)
        with pytest.raises(SaeguardError, match="already attached"), guard.attached(model):
            pass
        with pytest.raises(SaeguardError, match="already attached"):
            guard.generate(model, make_tokenizer(), PROMPTS, max_new_tokens=1)
    assert "generate" not in model.__dict__  # every hook left with the outer block


def test_two_different_guards_still_stack(setup):
    model, tok, guard = setup
    other = dataclasses.replace(guard, tau=guard.tau)  # another Guardrail object, same state
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    with guard.attached(model) as first, other.attached(model) as second, torch.no_grad():
        first.recording = second.recording = True
        model(ids)
        assert len(first.records) == len(second.records) == 1


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"tau": float("nan")}, "tau must be a finite number"),
        ({"clamp_value": -5.0}, "clamp_value must be positive"),
        ({"layer": -1}, "layer must be a block index"),
    ],
)
def test_a_gate_with_meaningless_settings_is_refused(setup, kw, named):
    guard = setup[2]
    settings = {"layer": 1, "tau": 0.5, "clamp_value": 50.0, **kw}
    with pytest.raises(SaeguardError, match=named):
        GateHook(guard.latents, **settings)
