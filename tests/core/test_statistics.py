"""Streaming statistics: the fused encoder path equals SAELens's encode summed directly."""

from __future__ import annotations

import pytest
import torch

from saeguard.core.statistics import FeatureStatistics, SaeEncoder, collect_statistics, token_batches
from saeguard.errors import SaeguardError
from saeguard.hf.corpus import iter_chunks
from saeguard.hf.layers import residual_at
from saeguard.testing import random_sae, tiny_llama

RTOL = 1e-6


def _direct(sae, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums, squared sums and firing counts from SAELens's own encode, in float64."""
    acts = sae.encode(tokens).double()
    return acts.sum(0), acts.square().sum(0), (acts > 0).sum(0).double()


def _assert_matches(stats: FeatureStatistics, expected: tuple[torch.Tensor, ...], tokens: int) -> None:
    total, squares, count = expected
    assert stats.token_count == tokens
    assert torch.equal(stats.nonzero_count, count)
    torch.testing.assert_close(stats.activation_sum, total, rtol=RTOL, atol=1e-9)
    torch.testing.assert_close(stats.squared_sum, squares, rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("rows", [1, 255, 600])  # one token, under one block, several blocks + a partial one
def test_fused_sums_equal_saelens_encode_summed_in_float64(architecture, rows):
    sae = random_sae(architecture, d_in=32, d_sae=64)
    if architecture == "jumprelu":  # a negative threshold: relu still zeroes pre <= 0
        with torch.no_grad():
            sae.threshold[:8] = -0.5
    tokens = torch.randn(rows, 32, generator=torch.Generator().manual_seed(rows)) * 2.0
    encoder = SaeEncoder.from_sae(sae)
    assert encoder is not None
    stats = FeatureStatistics.empty(64)
    stats.add_sums(encoder.sums(tokens), rows)
    expected = _direct(sae, tokens)
    assert float(expected[2].sum()) > 0  # some latents fire: the comparison is not of zeros
    _assert_matches(stats, expected, rows)


def test_collect_statistics_equals_direct_computation_over_counted_tokens(
    architecture, tokenizer, forget_corpus
):
    model, sae = tiny_llama(), random_sae(architecture)
    chunks = list(iter_chunks(forget_corpus, tokenizer, 32))
    batches = list(token_batches(chunks, tokenizer, 4))
    stats = collect_statistics(model, sae, 1, batches, show_progress=False)
    tokens = torch.cat([residual_at(model, 1, b.input_ids, b.attention_mask)[b.counted] for b in batches])
    _assert_matches(stats, _direct(sae, tokens), int(tokens.shape[0]))
    assert stats.sequence_count == len(chunks)


def test_update_of_dense_activations_matches_fused_sums():
    sae = random_sae("jumprelu")
    tokens = torch.randn(300, 32, generator=torch.Generator().manual_seed(3))
    dense = FeatureStatistics.empty(64)
    dense.update(sae.encode(tokens))
    fused = FeatureStatistics.empty(64)
    encoder = SaeEncoder.from_sae(sae)
    assert encoder is not None
    fused.add_sums(encoder.sums(tokens), 300)
    _assert_matches(fused, (dense.activation_sum, dense.squared_sum, dense.nonzero_count), 300)


def test_sae_with_a_hook_on_its_activations_is_encoded_by_saelens(tokenizer, forget_corpus):
    sae = random_sae("standard")
    sae.hook_sae_acts_post.register_forward_hook(lambda _module, _inputs, output: output * 2.0)
    assert SaeEncoder.from_sae(sae) is None
    model = tiny_llama()
    batches = list(token_batches(list(iter_chunks(forget_corpus, tokenizer, 32)), tokenizer, 4))
    stats = collect_statistics(model, sae, 1, batches, show_progress=False)
    tokens = torch.cat([residual_at(model, 1, b.input_ids, b.attention_mask)[b.counted] for b in batches])
    _assert_matches(stats, _direct(sae, tokens), int(tokens.shape[0]))  # the doubled activations


def test_encoders_sae_lens_computes_differently_fall_back():
    double = random_sae("standard").double()
    assert SaeEncoder.from_sae(double) is None
    rescaled = random_sae("topk")
    rescaled.cfg.rescale_acts_by_decoder_norm = True
    assert SaeEncoder.from_sae(rescaled) is None
    assert SaeEncoder.from_sae(object()) is None


def test_statistics_pass_rejects_infinite_activations(tokenizer, forget_corpus):
    model = tiny_llama()
    with torch.no_grad():
        model.get_input_embeddings().weight[:] = float("inf")
    batches = token_batches(list(iter_chunks(forget_corpus, tokenizer, 32)), tokenizer, 4)
    with pytest.raises(SaeguardError, match="non-finite"):
        collect_statistics(model, random_sae("jumprelu"), 1, batches, show_progress=False)
