"""Unlearned models round-trip through safetensors + unlearning.json, never pickle."""

from __future__ import annotations

import json

import pytest
import torch

from saeguard.baselines import (
    GAConfig,
    NPOConfig,
    RMUConfig,
    TrainConfig,
    TrainResult,
    load_unlearned,
    save_unlearned,
    unlearn,
)
from saeguard.errors import SaeguardError
from saeguard.testing import tiny_gpt2, tiny_llama


def _train(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-2, steps=4, batch_size=2, seq_len=16, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def test_save_load_round_trip_full(tmp_path, tokenizer, forget_texts, retain_texts, make_batch):
    config = NPOConfig(train=_train(), retain_loss="kl")
    model, result = unlearn(
        tiny_llama(0, len(tokenizer)), tokenizer, "npo", forget_texts, retain_texts, config
    )
    out = save_unlearned(model, tmp_path / "npo", result, config, tokenizer=tokenizer)
    assert not list(out.glob("*.bin")) and list(out.glob("*.safetensors"))
    json.loads((out / "unlearning.json").read_text())
    loaded, record = load_unlearned(out)
    batch = make_batch(forget_texts)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, expected)
    assert record.method == "npo" and record.format == "full"
    assert record.config == config and record.result == result
    save_unlearned(model, out, result, config)  # overwriting an artifact is allowed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_save_load_round_trip_lora(tmp_path, tokenizer, forget_texts, retain_texts, make_batch):
    config = RMUConfig(train=_train(use_lora=True), layer=1, steering_coeff=5.0)
    model, result = unlearn(
        tiny_gpt2(0, len(tokenizer)), tokenizer, "rmu", forget_texts, retain_texts, config
    )
    out = save_unlearned(model, tmp_path / "rmu", result, config)
    assert (out / "adapter_model.safetensors").is_file()
    with pytest.raises(SaeguardError, match="base_model"):
        load_unlearned(out)
    loaded, record = load_unlearned(out, base_model=tiny_gpt2(0, len(tokenizer)))
    batch = make_batch(forget_texts)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, expected)
    assert record.config == config and record.format == "lora"


def test_save_refuses_foreign_folder(tmp_path, tokenizer):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SaeguardError, match="choose a new output path"):
        save_unlearned(tiny_llama(0, len(tokenizer)), tmp_path, None, GAConfig())  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_failed_save_leaves_previous_artifact(tmp_path, tokenizer):
    class Broken(torch.nn.Module):
        def save_pretrained(self, folder):
            (folder / "partial.safetensors").write_bytes(b"x")
            raise OSError("disk full")

    out = tmp_path / "model"
    out.mkdir()
    (out / "unlearning.json").write_text("{}")
    with pytest.raises(OSError, match="disk full"):
        save_unlearned(Broken(), out, TrainResult(method="ga"), GAConfig())
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in out.iterdir()] == ["unlearning.json"]


def test_load_without_record_names_the_fix(tmp_path):
    with pytest.raises(SaeguardError, match="written by save_unlearned"):
        load_unlearned(tmp_path)
