"""The gate's per-input statistic: the paper's firing fraction and the activation-weighted variant."""

from __future__ import annotations

import pytest
import torch

from saeguard import Guardrail, SaeguardError
from saeguard.core.calibration import prompt_batches
from saeguard.core.gate import GateStatistic, activation_weights, gate_statistic, token_scope
from saeguard.testing import plant_forget_direction, random_sae, tiny_llama

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, show_progress=False)


def test_activation_evidence_is_weighted_sum_and_rho_its_mean_over_counted_tokens():
    acts = torch.tensor([[[0.0, 2.0], [1.0, 0.0], [3.0, 4.0]]])  # (B=1, T=3, N=2)
    counted = torch.tensor([[True, True, False]])
    weights = activation_weights(torch.tensor([0.5, 2.0]))
    assert weights.tolist() == [2.0, 0.5]
    evidence = GateStatistic("activation", weights).evidence(acts)
    assert evidence.tolist() == [[1.0, 2.0, 8.0]]
    assert gate_statistic(evidence, counted).tolist() == [1.5]  # the uncounted 8.0 is ignored
    fraction = GateStatistic().evidence(acts)
    assert gate_statistic(fraction, counted).tolist() == [1.0]


def test_latent_that_never_fired_on_forget_text_gets_zero_weight():
    assert activation_weights(torch.tensor([0.0, 4.0])).tolist() == [0.0, 0.25]


def test_hook_rho_equals_calibration_rho_for_the_activation_statistic(
    tokenizer, forget_corpus, retain_corpus
):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    guard = Guardrail.fit(
        model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, gate_statistic="activation", **FIT
    )
    assert guard.statistic.kind == "activation"
    texts = [forget_corpus[0][:40], retain_corpus[0][:40], forget_corpus[1][:30]]
    from saeguard.core.calibration import gate_rho

    batch = next(prompt_batches(texts, tokenizer, len(texts)))
    expected = gate_rho(
        model, guard.layer, guard.latents, [batch], statistic=guard.statistic, show_progress=False
    )
    with guard.attached(model) as hook, token_scope(batch.counted):
        hook.recording = True
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(hook.records[0].rho, expected)
    assert hook.records[0].flagged.tolist() == (expected > guard.tau).tolist()
    # A different statistic gives different rho on the same inputs.
    fraction = gate_rho(model, guard.layer, guard.latents, [batch], show_progress=False)
    assert not torch.allclose(fraction, expected)


def test_activation_statistic_survives_save_and_load(tokenizer, forget_corpus, retain_corpus, tmp_path):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    guard = Guardrail.fit(
        model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, gate_statistic="activation", **FIT
    )
    guard.save(tmp_path / "guard")
    loaded = Guardrail.load(tmp_path / "guard", model)
    assert loaded.config.gate_statistic == "activation"
    torch.testing.assert_close(loaded.statistic.weights, guard.statistic.weights)


def test_unknown_gate_statistic_is_a_one_line_error(tokenizer, forget_corpus, retain_corpus):
    model, sae = tiny_llama(), random_sae("jumprelu")
    with pytest.raises(
        SaeguardError, match="gate_statistic must be one of 'fraction', 'activation'"
    ) as error:
        Guardrail.fit(
            model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, gate_statistic="max", **FIT
        )
    assert "\n" not in str(error.value)


def test_input_scope_clamps_every_counted_token_of_a_flagged_input(tokenizer, forget_corpus, retain_corpus):
    from dataclasses import replace

    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    guard = Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **FIT)
    guard.tau = -1.0  # flag everything
    batch = next(prompt_batches([forget_corpus[0][:60], retain_corpus[0][:60]], tokenizer, 2))
    clamped = {}
    for scope in ("fired", "input"):
        scoped = replace(guard, config=replace(guard.config, clamp_scope=scope))
        with scoped.attached(model) as hook, token_scope(batch.counted):
            hook.recording = True
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        clamped[scope] = hook.records[0]
    counted = batch.counted & batch.attention_mask.bool()
    assert torch.equal(clamped["input"].clamped, counted)
    assert torch.equal(clamped["fired"].clamped, clamped["fired"].fired & counted)
    assert clamped["fired"].clamped.sum() < clamped["input"].clamped.sum()
