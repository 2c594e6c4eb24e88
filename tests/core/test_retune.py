"""retune: a new tau / clamp from the recorded rho equals a full fit with those settings."""

from __future__ import annotations

import pytest

from saeguard import Guardrail, SaeguardError
from saeguard.core.fit import retune
from saeguard.testing import plant_forget_direction, random_sae, tiny_llama

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, show_progress=False)


@pytest.fixture
def setup(tokenizer, forget_corpus, retain_corpus):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))

    def fit(**settings) -> Guardrail:
        return Guardrail.fit(
            model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **(FIT | settings)
        )

    return fit


def _same_tuning(retuned: Guardrail, fitted: Guardrail) -> None:
    assert retuned.tau == fitted.tau
    assert retuned.clamp_value == pytest.approx(fitted.clamp_value, rel=1e-12)
    assert retuned.config == fitted.config
    assert retuned.provenance.tau_estimate == fitted.provenance.tau_estimate
    assert retuned.provenance.calibration == fitted.provenance.calibration
    assert retuned.latents.ids.tolist() == fitted.latents.ids.tolist()


def test_retune_with_the_same_settings_reproduces_the_fit(setup):
    guard = setup(gate_percentile=90.0, clamp="10.0x")
    _same_tuning(retune(guard), guard)
    _same_tuning(retune(guard, gate_percentile=90.0, clamp="10.0x"), guard)


def test_retune_to_another_percentile_and_clamp_equals_a_full_fit(setup):
    template = setup(gate_percentile=95.0, clamp=500.0)
    target = setup(gate_percentile=60.0, clamp="5.0x")
    retuned = retune(template, gate_percentile=60.0, clamp="5.0x")
    _same_tuning(retuned, target)
    assert retuned.tau != template.tau  # the template itself is unchanged
    assert template.config.gate_percentile == 95.0 and template.clamp_value == 500.0
    assert retune(retuned, clamp=25.0).clamp_value == 25.0


def test_retune_needs_the_recorded_rho(setup):
    guard = setup()
    with pytest.raises(SaeguardError, match="gate_percentile must be a percentile"):
        retune(guard, gate_percentile=120.0)
    guard.distributions = {}
    with pytest.raises(SaeguardError, match="no retain calibration rho"):
        retune(guard, gate_percentile=50.0)
