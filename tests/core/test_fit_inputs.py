"""A fit checks its inputs before any forward pass (issue 11 §4-§5)."""

from __future__ import annotations

import pytest

from saeguard import FitConfig, Guardrail, SaeguardError
from saeguard.core.fit import corpus_statistics, prepare_fit
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    VOCAB,
    corpus,
    make_tokenizer,
    random_sae,
    tiny_gpt2,
    tiny_llama,
)

FORGET, RETAIN = corpus(FORGET_WORDS, 8, 30, 1), corpus(RETAIN_WORDS, 8, 30, 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_features": 2.5}, "n_features must be an integer"),
        ({"seq_len": 1024}, "seq_len 1024 exceeds the model's 256 positions"),
        ({"no_such_setting": 1}, "unknown fit setting no_such_setting"),
        ({"clamp": "ten"}, "cannot read clamp 'ten'"),
    ],
)
def test_bad_settings_fail_before_any_forward(overrides, message):
    with pytest.raises(SaeguardError, match=message):
        Guardrail.fit(
            tiny_gpt2(),
            make_tokenizer(),
            random_sae("standard"),
            forget=FORGET,
            retain=RETAIN,
            layer=1,
            **overrides,
        )


def test_a_fit_needs_a_tokenizer():
    with pytest.raises(SaeguardError, match="needs the model's tokenizer"):
        Guardrail.fit(tiny_llama(), None, random_sae("standard"), forget=FORGET, retain=RETAIN, layer=1)


def test_an_sae_of_another_layer_is_refused(tmp_path):
    sae = random_sae("standard")
    sae.cfg.metadata.hook_name = "model.layers.0"
    with pytest.raises(
        SaeguardError, match=r"the SAE reads layer 0 \(model.layers.0\) but layer 1 was asked for"
    ):
        prepare_fit(tiny_llama(), make_tokenizer(), sae, FORGET, RETAIN, FitConfig(layer=1, seq_len=32))
    inputs = prepare_fit(tiny_llama(), make_tokenizer(), sae, FORGET, RETAIN, FitConfig(seq_len=32))
    assert inputs.layer == 0  # no layer given: the SAE's own


def test_statistics_cache_is_keyed_by_the_tokenizer(tmp_path):
    model, sae = tiny_llama(), random_sae("standard")
    config = FitConfig(layer=1, seq_len=32)
    plain = prepare_fit(model, make_tokenizer(), sae, FORGET, RETAIN, config)
    other_vocab = VOCAB[:-1] + ["extra", "<unk>"]
    other = prepare_fit(model, make_tokenizer(vocab=other_vocab), sae, FORGET, RETAIN, config)
    first = corpus_statistics(plain, "forget", config, cache=tmp_path, show_progress=False)
    corpus_statistics(other, "forget", config, cache=tmp_path, show_progress=False)
    assert len(list(tmp_path.glob("stats-*.safetensors"))) == 2
    again = corpus_statistics(plain, "forget", config, cache=tmp_path, show_progress=False)
    assert again.token_count == first.token_count


def test_a_truncated_statistics_cache_is_recomputed(tmp_path):
    model, sae = tiny_llama(), random_sae("standard")
    config = FitConfig(layer=1, seq_len=32)
    inputs = prepare_fit(model, make_tokenizer(), sae, FORGET, RETAIN, config)
    first = corpus_statistics(inputs, "forget", config, cache=tmp_path, show_progress=False)
    (path,) = tmp_path.glob("stats-*.safetensors")
    path.write_bytes(path.read_bytes()[:50])
    again = corpus_statistics(inputs, "forget", config, cache=tmp_path, show_progress=False)
    assert again.token_count == first.token_count
    assert (again.activation_sum == first.activation_sum).all()


def test_lengths_within_lowers_what_a_short_context_model_cannot_hold_and_says_so():
    from saeguard.config import preset
    from saeguard.core.fit_inputs import lengths_within

    demo = preset("demo")  # seq_len 256, long runs 2,000, prompts 64 + answers 64
    lowered, notes = lengths_within(demo, 256)
    assert (lowered.seq_len, lowered.calibration_long_tokens, lowered.calibration_answer_tokens) == (
        256,
        128,
        64,
    )
    assert notes == ["calibration_long_tokens 2000 -> 128 (256 positions)"]
    lowered, notes = lengths_within(demo, 160)
    assert (lowered.seq_len, lowered.calibration_long_tokens, lowered.calibration_answer_tokens) == (
        160,
        80,
        16,
    )
    assert notes[0] == "seq_len 256 -> 160 (160 positions)" and len(notes) == 3
    assert lengths_within(demo, None) == (demo, []) and lengths_within(demo, 8192) == (demo, [])


def test_a_prompt_and_its_calibration_answer_must_fit_half_the_positions(
    tokenizer, forget_corpus, retain_corpus
):
    """Regression (break-it pass): 16 + 47 tokens on a 64-position model failed after the statistics."""
    import pytest

    from saeguard.config import FitConfig
    from saeguard.core.fit_inputs import prepare_fit
    from saeguard.errors import SaeguardError
    from saeguard.testing import random_sae, tiny_llama

    config = FitConfig(
        layer=1, seq_len=32, prompt_min_tokens=8, prompt_max_tokens=16, calibration_answer_tokens=47
    )
    with pytest.raises(SaeguardError, match="calibration_answer_tokens=16 or less"):
        prepare_fit(
            tiny_llama(max_positions=64),
            tokenizer,
            random_sae("jumprelu"),
            forget_corpus,
            retain_corpus,
            config,
        )
