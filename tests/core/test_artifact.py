"""Saving and loading guardrails."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from saeguard import Guardrail, SaeguardError
from saeguard.hf.corpus import pad_batch
from saeguard.testing import PLANTED_LATENT, plant_forget_direction, random_sae, tiny_gpt2, tiny_llama

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, show_progress=False)
PROMPTS = ["what is the cell virus gene protein", "the king of the city"]


def _logits(model, guard, tokenizer):
    ids, mask = pad_batch([tokenizer(p)["input_ids"] for p in PROMPTS], 0)
    with guard.attached(model):
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2])
def test_save_then_load_gives_identical_outputs(
    make_model, tokenizer, forget_corpus, retain_corpus, tmp_path
):
    model, sae = plant_forget_direction(make_model(), random_sae("jumprelu"))
    guard = Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **FIT)
    guard.save(tmp_path / "guard")
    loaded = Guardrail.load(tmp_path / "guard", model)
    assert torch.equal(_logits(model, guard, tokenizer), _logits(model, loaded, tokenizer))
    assert int(loaded.latents.ids[0]) == PLANTED_LATENT
    meta = json.loads((tmp_path / "guard" / "guardrail.json").read_text())
    assert meta["format_version"] == 2 and meta["provenance"]["model"]["fingerprint"]
    assert set(loaded.distributions) == {"retain_rho", "forget_rho"}
    assert not list(tmp_path.glob(".guard.*"))


def test_topk_guardrail_loads_only_with_its_sae_given_explicitly(
    tokenizer, forget_corpus, retain_corpus, tmp_path
):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("topk"))
    sae.save_model(tmp_path / "sae")
    guard = Guardrail.fit(
        model, tokenizer, str(tmp_path / "sae"), forget=forget_corpus, retain=retain_corpus, **FIT
    )
    guard.save(tmp_path / "guard")
    with pytest.raises(SaeguardError, match="needs its full SAE"):
        Guardrail.load(tmp_path / "guard", model)
    loaded = Guardrail.load(tmp_path / "guard", model, sae=tmp_path / "sae")
    torch.testing.assert_close(_logits(model, guard, tokenizer), _logits(model, loaded, tokenizer))
    other = random_sae("topk", seed=3)
    other.save_model(tmp_path / "other")
    with pytest.raises(SaeguardError, match="differs from the one it was fitted with"):
        Guardrail.load(tmp_path / "guard", model, sae=tmp_path / "other")


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (lambda: tiny_gpt2(), "hidden size"),
        (
            lambda: LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=40,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=3,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                )
            ),
            "layers",
        ),
        (lambda: tiny_llama(seed=9), "weights differ"),
    ],
)
def test_loading_onto_another_model_fails_clearly(
    other, message, tokenizer, forget_corpus, retain_corpus, tmp_path
):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **FIT).save(
        tmp_path / "g"
    )
    wrong = other()
    if message == "hidden size":
        wrong = type(wrong)(type(wrong.config)(**{**wrong.config.to_dict(), "n_embd": 48}))
    with pytest.raises(SaeguardError, match=message):
        Guardrail.load(tmp_path / "g", wrong)


def test_loading_a_folder_that_is_not_a_guardrail_fails_clearly(tmp_path):
    with pytest.raises(SaeguardError, match="is not a saeguard guardrail"):
        Guardrail.load(tmp_path)


def test_saving_over_a_guardrail_folder_with_other_files_keeps_them(tmp_path, tokenizer):
    # Regression (new-user probe): `fit -o DIR --force` deleted the user's notes.txt kept beside
    # the guard files.
    from saeguard import SaeguardError
    from saeguard.testing import make_guard, tiny_llama

    guard = make_guard(tiny_llama(), tokenizer)
    guard.save(tmp_path / "g")
    guard.save(tmp_path / "g")  # only the guard's own files: replaced
    (tmp_path / "g" / "notes.txt").write_text("mine")
    with pytest.raises(SaeguardError, match="exists and is not an output of this kind"):
        guard.save(tmp_path / "g")
    assert (tmp_path / "g" / "notes.txt").read_text() == "mine"
