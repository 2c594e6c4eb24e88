"""GradDiff raises forget NLL while training on retain NLL."""

from __future__ import annotations

import math

import pytest

from saeguard.baselines import GradDiffConfig, TrainConfig, unlearn
from saeguard.baselines.graddiff import graddiff_loss
from saeguard.errors import SaeguardError


def _train(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-2, steps=6, batch_size=2, seq_len=16, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def test_graddiff_lowers_forget_likelihood(unlearn_forget_nll):
    before, after, result = unlearn_forget_nll("graddiff", GradDiffConfig(train=_train(), retain_weight=1.0))
    assert after > before + 0.1, (before, after)
    assert len(result.losses) == 6
    assert all(math.isfinite(logs["retain_nll"]) for logs in result.logs)
    assert any(logs["retain_nll"] > 0 for logs in result.logs)


def test_graddiff_loss_weights_retain_term(tiny_model, make_batch, forget_texts, retain_texts):
    forget, retain = make_batch(forget_texts), make_batch(retain_texts)
    loss, logs = graddiff_loss(GradDiffConfig(retain_weight=5.0))(tiny_model, forget, retain)
    assert float(loss.detach()) == pytest.approx(-logs["forget_nll"] + 5.0 * logs["retain_nll"], rel=1e-5)


def test_negative_retain_weight_raises(tiny_model, tokenizer, forget_texts, retain_texts):
    config = GradDiffConfig(train=_train(), retain_weight=-1.0)
    with pytest.raises(SaeguardError, match="retain_weight must be at least 0"):
        unlearn(tiny_model, tokenizer, "graddiff", forget_texts, retain_texts, config)
