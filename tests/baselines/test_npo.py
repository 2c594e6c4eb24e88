"""NPO lowers forget likelihood relative to the reference, with an NLL or KL retain term."""

from __future__ import annotations

import math

import pytest

from saeguard.baselines import NPOConfig, TrainConfig, unlearn
from saeguard.baselines.npo import retain_kl
from saeguard.baselines.training import Reference
from saeguard.errors import SaeguardError


def _train(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-2, steps=6, batch_size=2, seq_len=16, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
def test_npo_lowers_forget_likelihood(retain_loss, unlearn_forget_nll):
    config = NPOConfig(train=_train(), beta=0.1, retain_weight=1.0, retain_loss=retain_loss)
    before, after, result = unlearn_forget_nll("npo", config)
    assert after > before + 0.1, (before, after)
    assert len(result.losses) == 6
    key = f"retain_{retain_loss}"
    assert all(math.isfinite(logs[key]) for logs in result.logs)
    assert any(logs[key] > 0 for logs in result.logs)


def test_npo_starts_at_log2_with_zero_ratio(tiny_model, tokenizer, forget_texts, retain_texts):
    config = NPOConfig(train=_train(steps=1), beta=0.5, retain_weight=0.0)
    _, result = unlearn(tiny_model, tokenizer, "npo", forget_texts, retain_texts, config)
    assert result.logs[0]["log_ratio"] == pytest.approx(0.0, abs=1e-4)
    assert result.losses[0] == pytest.approx((2 / 0.5) * math.log(2), rel=1e-4)


def test_retain_kl_is_zero_against_itself(tiny_model, retain_texts, make_batch):
    batch = make_batch(retain_texts)
    kl = retain_kl(tiny_model, Reference(tiny_model), batch)
    assert float(kl.detach()) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"beta": 0.0}, "beta must be greater than 0"),
        ({"retain_loss": "mse"}, "retain_loss must be one of 'nll', 'kl'"),
        ({"retain_weight": -0.5}, "retain_weight must be at least 0"),
    ],
)
def test_bad_settings_raise(settings, match, tiny_model, tokenizer, forget_texts, retain_texts):
    config = NPOConfig(train=_train(), **settings)
    with pytest.raises(SaeguardError, match=match):
        unlearn(tiny_model, tokenizer, "npo", forget_texts, retain_texts, config)
