"""Guardrails saved by earlier saeguard versions still load and behave the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeguard import Clamp, Guardrail
from saeguard.testing import make_tokenizer, plant_forget_direction, random_sae, tiny_llama

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_guardrail_saved_by_0_1_0_loads_and_decides_the_same():
    expected = json.loads((FIXTURES / "guardrail-v0.1.0.expected.json").read_text())
    model, _sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    tokenizer = make_tokenizer()
    guard = Guardrail.load(FIXTURES / "guardrail-v0.1.0", model)  # strict: same weights as when saved
    assert guard.tau == expected["tau"]
    assert guard.clamp_value == expected["clamp"]
    assert guard.config.clamp == Clamp(5.0, relative=True)
    assert guard.latents.ids.tolist() == expected["latent_ids"]
    assert guard.provenance is not None and guard.provenance.saeguard_version == "0.1.0"
    assert guard.provenance.tau_estimate is not None and guard.provenance.tau_estimate.tau == expected["tau"]
    texts, records = guard.generate(
        model, tokenizer, ["what is the cell and the gene", "the king of the river city"], max_new_tokens=4
    )
    assert records[0].flagged.tolist() == expected["flagged"]
    assert records[0].rho.tolist() == pytest.approx(expected["rho"], rel=1e-9)
    assert texts == expected["texts"]


def test_resaving_an_old_guardrail_writes_the_current_format(tmp_path):
    guard = Guardrail.load(FIXTURES / "guardrail-v0.1.0")
    guard.save(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "guardrail.json").read_text())
    assert meta["format_version"] == 2 and meta["config"]["clamp"] == "5x"
    again = Guardrail.load(tmp_path / "g")
    assert again.tau == guard.tau and again.clamp_value == guard.clamp_value
    assert again.provenance == guard.provenance
