"""Masked log-likelihoods count only real, non-special targets."""

from __future__ import annotations

import pytest
import torch

from saeguard.baselines.likelihood import masked_mean, mean_nll, sequence_logprob
from saeguard.hf.corpus import TokenBatch


def test_nll_ignores_padding_and_special_tokens(tiny_model, forget_texts, make_batch):
    batch = make_batch(forget_texts[:1], seq_len=64)
    padded = TokenBatch(
        torch.nn.functional.pad(batch.input_ids, (0, 5), value=0),
        torch.nn.functional.pad(batch.attention_mask, (0, 5), value=0),
        torch.nn.functional.pad(batch.counted, (0, 5), value=False),
    )
    with torch.no_grad():
        assert float(mean_nll(tiny_model, padded)) == pytest.approx(
            float(mean_nll(tiny_model, batch)), rel=1e-5
        )


def test_sequence_logprob_sums_what_mean_nll_averages(tiny_model, forget_texts, make_batch):
    batch = make_batch(forget_texts)
    with torch.no_grad():
        total = float(sequence_logprob(tiny_model, batch).sum())
        mean = float(mean_nll(tiny_model, batch))
    counted = int(batch.counted[:, 1:].sum())
    assert total == pytest.approx(-mean * counted, rel=1e-4)


def test_masked_mean_weights_only_counted_and_is_zero_when_empty():
    values = torch.tensor([[1.0, 2.0, 100.0]])
    assert float(masked_mean(values, torch.tensor([[True, True, False]]))) == pytest.approx(1.5)
    assert float(masked_mean(values, torch.zeros(1, 3, dtype=torch.bool))) == 0.0
