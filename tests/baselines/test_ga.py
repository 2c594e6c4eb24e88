"""Gradient Ascent raises forget NLL and only monitors retain NLL."""

from __future__ import annotations

import math

import pytest

from saeguard.baselines import GAConfig, TrainConfig
from saeguard.baselines.ga import ga_loss


def _train(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-2, steps=6, batch_size=2, seq_len=16, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def test_ga_lowers_forget_likelihood(unlearn_forget_nll):
    before, after, result = unlearn_forget_nll("ga", GAConfig(train=_train()))
    assert after > before + 0.1, (before, after)
    assert len(result.losses) == 6
    assert all(math.isfinite(logs["retain_nll"]) for logs in result.logs)
    assert result.losses[0] == pytest.approx(-result.logs[0]["forget_nll"], rel=1e-5)


def test_ga_without_monitoring_logs_no_retain(tiny_model, make_batch, forget_texts, retain_texts):
    loss_fn = ga_loss(GAConfig(monitor_retain=False))
    loss, logs = loss_fn(tiny_model, make_batch(forget_texts), make_batch(retain_texts))
    assert set(logs) == {"forget_nll"}
    assert float(loss.detach()) == pytest.approx(-logs["forget_nll"], rel=1e-5)
