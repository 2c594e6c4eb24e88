"""The demo pipeline end to end on the real default model, scaled down (integration)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.integration


def _random_sae(path):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=576, d_sae=512))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(576, 512, generator=generator) * 0.02)
        sae.W_dec.copy_(torch.randn(512, 576, generator=generator) / 24)
        sae.b_enc.fill_(-0.5)
        sae.threshold.fill_(0.0)
    sae.save_model(path)
    return path


def test_demo_writes_table_report_and_generations_on_the_default_model(tmp_path):
    from saeguard.demo import DemoConfig, run_demo

    config = DemoConfig(
        layer=3,
        sae=str(_random_sae(tmp_path / "sae")),
        forget_items=6,
        items_per_other_set=3,
        max_forget_chunks=8,
        max_retain_chunks=8,
        retain_documents_per_source=40,
        max_new_tokens=4,
        text_chunks=2,
        text_prompts=8,
        ratio_percentile=50,
        n_features=5,
        seq_len=128,
    )
    result = run_demo(config, tmp_path / "report", show_progress=False, guard_cache=tmp_path / "guards")
    assert set(result.accuracy) == {"forget", "retain", "near"}
    assert len(result.generations) == 6
    saved = json.loads((tmp_path / "report" / "demo.json").read_text())
    assert saved["kind"] == "saeguard-demo" and saved["config"]["n_features"] == 5
    assert (tmp_path / "report" / "demo.html").is_file() and (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "report" / "guardrail" / "guardrail.json").is_file()

    # A rerun reuses the fitted guardrail from the cache: same latents and tau, no new fit.
    from saeguard.demo import fit_demo_guard
    from saeguard.hf.models import load_model

    [cached] = list((tmp_path / "guards").iterdir())
    model, tokenizer = load_model("default")
    again = fit_demo_guard(
        model, tokenizer, config.sae, config, show_progress=False, cache=tmp_path / "guards"
    )
    assert again.tau == result.guard["tau"]
    assert [int(i) for i in again.latents.ids] == result.guard["latent_ids"]
    assert list((tmp_path / "guards").iterdir()) == [cached]
