"""The demo: its fit settings are the demo preset, and the pipeline end to end (integration)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from saeguard.config import FitConfig, preset
from saeguard.core.guardrail import Guardrail
from saeguard.demo import DemoConfig, fit_demo_guard, retain_documents


def test_demo_guard_is_fitted_with_the_demo_preset(monkeypatch):
    import saeguard.data.corpora as corpora

    monkeypatch.setattr(corpora, "load_corpus", lambda name, split: [f"{name} {split} {i}" for i in range(3)])
    seen: list[FitConfig] = []
    monkeypatch.setattr(Guardrail, "fit", classmethod(lambda cls, *a, config=None, **kw: seen.append(config)))
    fit_demo_guard(None, None, "sae", DemoConfig(), show_progress=False, cache=None)
    # The demo fits with preset("demo"): the table's settings plus the gate rule chosen in docs/attacks.md.
    assert seen == [
        FitConfig(
            layer=6,
            n_features=20,
            ratio_percentile=95.0,
            gate_percentile=85.0,
            clamp="5x",
            gate_statistic="activation",
            clamp_scope="input",
            seq_len=256,
            max_forget_chunks=400,
            max_retain_chunks=800,
            gate_rule="sentence",
            window_tokens=16,
            min_window_tokens=8,
            min_sentence_tokens=1,
            calibration_long_tokens=2000,
            calibration_answer_tokens=64,
            seed=0,
        )
    ]


def test_retain_documents_are_sampled_with_the_fit_seed(monkeypatch):
    import saeguard.data.corpora as corpora

    monkeypatch.setattr(corpora, "load_corpus", lambda name, split: [f"{name} {i}" for i in range(50)])
    config = DemoConfig(retain=("austen",), retain_documents_per_source=5)
    again = retain_documents(config, "train")
    assert retain_documents(config, "train") == again and len(again) == 5
    reseeded = replace(config, fit=replace(config.fit, seed=1))
    assert retain_documents(reseeded, "train") != again


def test_demo_config_json_keeps_the_clamp_readable():
    data = DemoConfig().to_dict()
    assert data["fit"]["clamp"] == "5x" and FitConfig.from_dict(data["fit"]) == preset("demo")
    assert data["permutations"] == "cyclic" and data["retain"] == ["wiki:not-biology", "austen", "wordnet"]


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


@pytest.mark.integration
def test_demo_writes_table_report_and_generations_on_the_default_model(tmp_path):
    from saeguard.demo import run_demo

    fit = replace(
        preset("demo"),
        layer=3,
        max_forget_chunks=8,
        max_retain_chunks=8,
        ratio_percentile=50,
        n_features=5,
        seq_len=128,
    )
    config = DemoConfig(
        fit=fit,
        sae=str(_random_sae(tmp_path / "sae")),
        forget_items=6,
        items_per_other_set=3,
        retain_documents_per_source=40,
        max_new_tokens=4,
        text_chunks=2,
        text_prompts=8,
    )
    result = run_demo(config, tmp_path / "report", show_progress=False, guard_cache=tmp_path / "guards")
    assert set(result.accuracy) == {"forget", "retain", "near"}
    assert len(result.generations) == 6
    # the attack rows: clean, 400 benign tokens before the question, 3 user turns (on known items)
    expected = ["clean", "dilution", "multiturn"] if result.accuracy["forget"]["known"] else []
    assert [row["family"] for row in result.attacks] == expected
    saved = json.loads((tmp_path / "report" / "demo.json").read_text())
    assert saved["kind"] == "saeguard-demo" and saved["config"]["fit"]["n_features"] == 5
    assert saved["config"]["fit"]["clamp"] == "5x"
    assert (tmp_path / "report" / "demo.html").is_file() and (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "report" / "guardrail" / "guardrail.json").is_file()

    # A rerun reuses the fitted guardrail from the cache: same latents and tau, no new fit.
    from saeguard.hf.models import load_model

    [cached] = list((tmp_path / "guards").iterdir())
    model, tokenizer = load_model("default")
    again = fit_demo_guard(
        model, tokenizer, config.sae, config, show_progress=False, cache=tmp_path / "guards"
    )
    assert again.tau == result.guard["tau"]
    assert [int(i) for i in again.latents.ids] == result.guard["latent_ids"]
    assert list((tmp_path / "guards").iterdir()) == [cached]
