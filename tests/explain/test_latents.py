"""Per-latent explanations: the streamed top contexts equal a brute-force ranking, decoder logits, links."""

from __future__ import annotations

import numpy as np
import torch

from saeguard.core.provenance import SaeRecord
from saeguard.core.statistics import token_batches
from saeguard.explain.latents import (
    ScanConfig,
    _Reservoir,
    decoder_logits,
    neuronpedia_url,
    scan_latents,
)
from saeguard.hf.corpus import iter_chunks
from saeguard.hf.layers import residual_at
from saeguard.testing import FORGET_WORDS, PLANTED_LATENT


def _brute_force(model, tokenizer, guard, documents, config: ScanConfig):
    """Every counted token's activation of every latent, sorted by (-activation, chunk, position)."""
    chunks = list(iter_chunks(documents, tokenizer, config.seq_len, max_chunks=config.max_chunks))
    entries: list[list[tuple[float, int, int]]] = [[] for _ in range(len(guard.latents.ids))]
    counts = [0] * len(entries)
    index = 0
    for batch in token_batches(chunks, tokenizer, config.batch_size):  # the scan's forwards, ranked by hand
        hidden = residual_at(model, guard.layer, batch.input_ids, batch.attention_mask)
        acts = guard.latents.activations(hidden)
        for row in range(acts.shape[0]):
            for position in range(acts.shape[1]):
                for j in range(acts.shape[2]):
                    value = float(acts[row, position, j])
                    if bool(batch.counted[row, position]) and value > 0:
                        entries[j].append((value, index, position))
                        counts[j] += 1
            index += 1
    ranked = [sorted(e, key=lambda t: (-t[0], t[1], t[2]))[: config.top_k] for e in entries]
    return ranked, counts


def test_top_contexts_equal_a_brute_force_ranking(fitted, tokenizer, forget_corpus, retain_corpus):
    model, guard = fitted
    documents = forget_corpus[:10] + retain_corpus[:10]
    config = ScanConfig(top_k=5, seq_len=16, max_chunks=40, batch_size=3, before=3, after=2)
    scans = scan_latents(model, tokenizer, guard, documents, config)
    expected, counts = _brute_force(model, tokenizer, guard, documents, config)
    assert len(scans) == len(guard.latents.ids)
    for scan, ranked, fired in zip(scans, expected, counts, strict=True):
        assert scan.fired == fired
        assert [(c.chunk, c.position) for c in scan.contexts] == [(r[1], r[2]) for r in ranked]
        np.testing.assert_allclose([c.activation for c in scan.contexts], [r[0] for r in ranked], rtol=1e-5)
    assert int(guard.latents.ids[0]) == PLANTED_LATENT and scans[0].fired > 0  # fires on forget words


def test_ties_go_to_the_earlier_chunk_and_position(fitted, tokenizer):
    model, guard = fitted
    documents = ["cell virus gene"] * 6  # six identical 5-token chunks: the top activation ties six ways
    config = ScanConfig(top_k=4, seq_len=5, batch_size=3)
    scan = scan_latents(model, tokenizer, guard, documents, config)[0]
    expected, _ = _brute_force(model, tokenizer, guard, documents, config)
    assert [(c.chunk, c.position) for c in scan.contexts] == [(r[1], r[2]) for r in expected[0]]
    peak = scan.contexts[0].position
    assert [(c.chunk, c.position) for c in scan.contexts] == [(0, peak), (1, peak), (2, peak), (3, peak)]


def test_context_window_marks_the_top_token_and_its_activation(fitted, tokenizer, forget_corpus):
    model, guard = fitted
    config = ScanConfig(top_k=3, seq_len=32, before=4, after=2)
    scan = scan_latents(model, tokenizer, guard, forget_corpus[:4], config)[0]
    context = scan.contexts[0]
    assert context.activations[context.mark] == context.activation
    assert len(context.tokens) == len(context.activations) <= config.before + config.after + 1
    assert context.tokens[context.mark].strip() in set(FORGET_WORDS)


def test_reservoir_keeps_everything_under_capacity_and_a_uniform_sample_over_it():
    small = _Reservoir(10, np.random.default_rng(0))
    small.add(np.arange(4.0))
    small.add(np.arange(4.0, 7.0))
    assert small.sample() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    means = []
    for seed in range(200):
        reservoir = _Reservoir(20, np.random.default_rng(seed))
        for start in range(0, 1000, 37):
            reservoir.add(np.arange(start, min(start + 37, 1000), dtype=float))
        assert len(reservoir.sample()) == 20 and reservoir.seen == 1000
        means.append(np.mean(reservoir.sample()))
    assert abs(np.mean(means) - 499.5) < 15  # uniform over the stream, not biased to its start


def test_decoder_logits_rank_tokens_by_decoder_row_times_unembedding(fitted, tokenizer):
    model, guard = fitted
    ranked = decoder_logits(model, tokenizer, guard, top=5)
    scores = guard.latents.decoder @ model.get_output_embeddings().weight.T
    for (promoted, suppressed), row in zip(ranked, scores, strict=True):
        assert [t.token_id for t in promoted] == torch.topk(row, 5).indices.tolist()
        assert [t.token_id for t in suppressed] == torch.topk(row, 5, largest=False).indices.tolist()
        assert promoted[0].score >= promoted[-1].score > suppressed[-1].score >= suppressed[0].score
        assert promoted[0].token == tokenizer.decode([promoted[0].token_id])


def test_neuronpedia_links_only_for_known_saelens_releases():
    def record(**kwargs) -> SaeRecord:
        return SaeRecord(architecture="jumprelu", d_in=2304, d_sae=16384, fingerprint="x", **kwargs)

    known = record(
        kind="pretrained", release="gemma-scope-2b-pt-res-canonical", sae_id="layer_3/width_16k/canonical"
    )
    assert neuronpedia_url(known, 123) == "https://www.neuronpedia.org/gemma-2-2b/3-gemmascope-res-16k/123"
    assert neuronpedia_url(record(kind="pretrained", release="no-such-release", sae_id="x"), 1) is None
    assert neuronpedia_url(record(kind="disk", path="/tmp/sae"), 1) is None
    assert neuronpedia_url(None, 1) is None
