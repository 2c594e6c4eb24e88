"""Guardrail.fit checks every argument's type and the lengths it chooses (issue 11 §4-§5, reliability probe).

Each input below gave a raw AttributeError/TypeError/IndexError before, or ran a whole
statistics pass before failing.
"""

from __future__ import annotations

import pytest
import torch

from saeguard import Guardrail, SaeguardError
from saeguard.config import FitConfig
from saeguard.testing import (
    CHAT_TEMPLATES,
    FORGET_WORDS,
    RETAIN_WORDS,
    chat_tokenizer,
    corpus,
    make_tokenizer,
    random_sae,
    tiny_gpt2,
    tiny_llama,
)

FAST = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, calibration_size=8, show_progress=False)


def _fit(model=None, tokenizer=None, sae=None, **kw):
    return Guardrail.fit(
        tiny_llama() if model is None else model,
        make_tokenizer() if tokenizer is None else tokenizer,
        random_sae("jumprelu") if sae is None else sae,
        forget=kw.pop("forget", corpus(FORGET_WORDS, 4, 20, 1)),
        retain=kw.pop("retain", corpus(RETAIN_WORDS, 4, 20, 2)),
        **{**FAST, **kw},
    )


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"model": "llama"}, "model must be a loaded language model"),
        ({"model": torch.nn.Linear(32, 32)}, "has no config"),
        ({"tokenizer": "tok"}, "a fit needs the model's tokenizer"),
        ({"config": "paper"}, "config must be a FitConfig, got str"),
        ({"config": {"n_features": 3}}, "config must be a FitConfig, got dict"),
        ({"statistics_cache": 123}, "statistics_cache must be a path"),
    ],
)
def test_an_argument_of_the_wrong_type_is_named(kw, named):
    with pytest.raises(SaeguardError, match=named):
        _fit(**kw)


def test_a_model_on_the_meta_device_is_refused_and_the_sae_stays_where_it_was():
    with torch.device("meta"):
        meta = tiny_llama()
    sae = random_sae("jumprelu")
    with pytest.raises(SaeguardError, match="meta device"):
        _fit(model=meta, sae=sae)
    assert sae.W_enc.device.type == "cpu"


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        (
            {"prompt_min_tokens": 300, "prompt_max_tokens": 400},
            "prompt_max_tokens 400 exceeds the model's 256",
        ),
        ({"calibration_long_tokens": 600}, "calibration_long_tokens 600 exceeds the model's 256"),
        ({"seq_len": 1024}, "seq_len 1024 exceeds the model's 256 positions"),
    ],
)
def test_a_length_beyond_the_model_positions_is_refused_before_any_forward(kw, named):
    with pytest.raises(SaeguardError, match=named):
        _fit(model=tiny_gpt2(max_positions=256), **kw)


def test_a_corpus_of_unknown_tokens_only_is_refused_before_the_statistics():
    emoji = ["\U0001f9ec\U0001f9a0 \u200b zalgo c\u0334e\u0335l\u0336l " * 20]
    with pytest.raises(SaeguardError, match="the forget corpus has no document with at least 2 tokens"):
        _fit(forget=emoji)


def test_a_tokenizer_whose_ids_the_model_lacks_is_refused():
    larger = chat_tokenizer(CHAT_TEMPLATES["chatml"])  # 53 tokens; "about" is id 52
    words = ["what about the cell and the gene about"] * 4
    with pytest.raises(SaeguardError, match="token id 52 but the model embeds ids 0..39"):
        _fit(tokenizer=larger, forget=words, retain=["the gene about the cell"] * 4)


def test_an_artifact_config_error_names_the_file():
    with pytest.raises(SaeguardError, match=r"^guard.json: config: n_features must be at least 1"):
        FitConfig.from_dict({"n_features": -3}, where="guard.json: config")


def test_a_statistics_cache_that_is_a_file_is_refused_before_the_fit(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("x")
    with pytest.raises(SaeguardError, match="statistics_cache .* is a file"):
        _fit(statistics_cache=cache)
    assert cache.read_text() == "x"
