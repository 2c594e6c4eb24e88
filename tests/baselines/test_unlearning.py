"""``unlearn`` resolves the method, checks the config and reports user errors in one line."""

from __future__ import annotations

import pytest

from saeguard.baselines import GAConfig, TrainConfig, unlearn
from saeguard.errors import SaeguardError
from saeguard.testing import tiny_llama


def _train(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-2, steps=4, batch_size=2, seq_len=16, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize(
    ("method", "config", "match"),
    [
        ("sgd", None, "unknown unlearning method"),
        ("npo", GAConfig(), "needs a NPOConfig"),
        ("ga", GAConfig(train=_train(steps=0)), "steps"),
        ("ga", GAConfig(train=_train(dtype="int8")), "dtype"),
        ("ga", GAConfig(train=_train(device="tpu9")), "unknown device"),
    ],
)
def test_user_errors_raise(method, config, match, tokenizer, forget_texts, retain_texts):
    with pytest.raises(SaeguardError, match=match):
        unlearn(tiny_llama(0, len(tokenizer)), tokenizer, method, forget_texts, retain_texts, config)


def test_empty_corpus_raises(tokenizer, retain_texts):
    with pytest.raises(SaeguardError, match="no token chunks"):
        unlearn(
            tiny_llama(0, len(tokenizer)),
            tokenizer,
            "ga",
            ["   "],
            retain_texts,
            GAConfig(train=_train()),
        )


def test_method_name_is_normalised_in_the_result(tokenizer, forget_texts, retain_texts):
    _, result = unlearn(
        tiny_llama(0, len(tokenizer)), tokenizer, " GA ", forget_texts, retain_texts, GAConfig(train=_train())
    )
    assert result.method == "ga" and len(result.losses) == 4
