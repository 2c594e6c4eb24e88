"""retune: a new tau / clamp from the recorded rho equals a full fit with those settings."""

from __future__ import annotations

import pytest
import torch

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


MULTISCALE = dict(gate_rule="multiscale", window_tokens=8, min_window_tokens=2, calibration_long_tokens=64)


def test_a_multiscale_fit_scales_each_window_to_its_retain_level_and_retunes_like_a_fit(setup, tmp_path):
    guard = setup(gate_percentile=90.0, **MULTISCALE)
    assert guard.rule.windows == (2, 4, 8) and len(guard.window_scales) == 3
    retain = guard.window_rho["retain"]
    for column, scale in zip(retain.T, guard.window_scales, strict=True):  # each size: its 90th percentile
        read = column[~column.isnan()]
        assert scale == pytest.approx(float(read.quantile(0.9)), rel=1e-9) or scale == float(
            read[read > 0].min()
        )
    # the retain rho are the scaled maximum, and tau flags at most 10% of them
    rho = guard.distributions["retain_rho"]
    expected = (retain / torch.tensor(guard.window_scales, dtype=torch.float64)).nan_to_num(0.0).amax(-1)
    assert torch.allclose(rho, expected)
    assert float((rho > guard.tau).double().mean()) <= 0.1 + 1e-9
    _same_tuning(retune(setup(gate_percentile=60.0, **MULTISCALE), gate_percentile=90.0), guard)
    assert retune(guard, gate_percentile=60.0).window_scales != guard.window_scales
    guard.save(tmp_path / "g")
    loaded = Guardrail.load(tmp_path / "g")
    assert loaded.window_scales == guard.window_scales and loaded.tau == guard.tau
    assert torch.equal(loaded.window_rho["retain"].isnan(), retain.isnan())
    assert loaded.rule == guard.rule
    summary = loaded.summary()  # inspect shows what rho and tau are measured in
    assert summary["gate_rule"] == "multiscale" and summary["windows"] == [2, 4, 8]
    assert summary["window_scales"] == list(guard.window_scales)


def test_a_multiscale_guard_without_its_window_rho_cannot_be_retuned(setup):
    guard = setup(**MULTISCALE)
    guard.window_rho = {}
    with pytest.raises(SaeguardError, match="no retain window rho"):
        retune(guard, gate_percentile=50.0)
