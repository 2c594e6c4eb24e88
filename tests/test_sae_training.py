"""SAE training through SAELens's trainer on a tiny model."""

from __future__ import annotations

import json

from saeguard import Guardrail
from saeguard.core.sae import load_sae
from saeguard.sae_training import SAETrainingConfig, harvest_activations, train_and_save
from saeguard.testing import FORGET_WORDS, RETAIN_WORDS, corpus, tiny_llama


def test_harvest_skips_special_tokens_and_stops_at_budget(tokenizer):
    docs = corpus(FORGET_WORDS + RETAIN_WORDS, 20, 30, seed=0)
    acts = harvest_activations(
        tiny_llama(), tokenizer, [0, 1], docs, tokens=300, seq_len=32, batch_size=4, show_progress=False
    )
    assert acts[0].shape == (300, 32) and acts[1].shape == (300, 32)


def test_trained_sae_saves_in_saelens_format_and_fits_a_guardrail(tokenizer, tmp_path):
    model = tiny_llama()
    docs = corpus(FORGET_WORDS + RETAIN_WORDS, 60, 40, seed=0)
    config = SAETrainingConfig(
        layer=1,
        width=64,
        k=4,
        tokens=2048,
        heldout_tokens=256,
        batch_size=128,
        seq_len=32,
        harvest_batch_size=8,
    )
    [result] = train_and_save(
        model, tokenizer, docs, docs[:8], [config], [tmp_path / "sae"], show_progress=False
    )
    metrics = result["metrics"]
    assert 0.0 <= metrics["fraction_variance_unexplained"] < 1.0
    assert 0.0 <= metrics["dead_fraction"] <= 1.0
    assert 0 < metrics["dead_window_tokens"] <= 256  # counted on harvested tokens never trained on
    assert 0.0 <= metrics["heldout_fraction_variance_unexplained"] < 1.0
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["normalize_activations"] == "none"  # the training scale is folded into the weights
    assert cfg["metadata"]["saeguard"]["layer"] == 1
    sae = load_sae(tmp_path / "sae")
    guard = Guardrail.fit(
        model,
        tokenizer,
        str(tmp_path / "sae"),
        forget=corpus(FORGET_WORDS, 10, 30, 1),
        retain=corpus(RETAIN_WORDS, 10, 30, 2),
        n_features=2,
        ratio_percentile=80,
        seq_len=32,
        show_progress=False,
    )
    assert guard.layer == 1 and sae.cfg.d_sae == 64
