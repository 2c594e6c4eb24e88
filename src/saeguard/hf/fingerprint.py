"""Cheap, stable fingerprints of weights and corpora.

Artifacts record which model weights and SAE they were fitted on; a strided
sample of every tensor (plus shapes and dtypes) identifies a checkpoint without
hashing gigabytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from saeguard.hf.layers import decoder_blocks
from saeguard.io import text_fingerprint

_SAMPLE = 65_536


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """16 hex characters identifying named tensors of any shape and dtype.

    Hashes each name, shape and dtype plus a strided sample of at most ~65,536
    values (cast to float32), so gigabyte checkpoints hash in milliseconds. Equal
    tensors give equal fingerprints; a change confined to unsampled values is missed.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLE)
        sample = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _read_weights(model: nn.Module, layer: int) -> dict[str, torch.Tensor]:
    """The weights the guard reads: the input embeddings and blocks 0..layer, by name."""
    tensors: dict[str, torch.Tensor] = {}
    get_embeddings = getattr(model, "get_input_embeddings", None)  # transformers models only
    embeddings = get_embeddings() if get_embeddings is not None else None
    if embeddings is not None:
        tensors.update({f"embed.{k}": v for k, v in embeddings.state_dict().items()})
    for index, block in enumerate(_blocks(model)[: layer + 1]):
        tensors.update({f"block{index}.{k}": v for k, v in block.state_dict().items()})
    return tensors


def model_fingerprint(model: nn.Module, layer: int) -> str:
    """Fingerprint of the weights the guard reads: embeddings and blocks 0..layer."""
    return tensors_fingerprint(_read_weights(model, layer))


def weight_sample(model: nn.Module, layer: int, per_tensor: int = 4) -> list[float]:
    """A few values (float32) of each weight the guard reads, in name order.

    Recorded next to the fingerprint so the same weights loaded in another dtype (bf16,
    fp16) can be recognised: equal up to that dtype's rounding (:func:`same_weights`).
    """
    values: list[float] = []
    for _, tensor in sorted(_read_weights(model, layer).items(), key=lambda kv: kv[0]):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // per_tensor)
        values += [float(v) for v in flat[::step][:per_tensor].to(device="cpu", dtype=torch.float32)]
    return values


def same_weights(recorded: list[float], found: list[float], *, relative: float = 1e-2) -> bool:
    """True when two :func:`weight_sample` lists agree up to half-precision rounding (1% relative)."""
    if not recorded or len(recorded) != len(found):
        return False
    return all(abs(a - b) <= relative * abs(a) + 1e-6 for a, b in zip(recorded, found, strict=True))


def model_name(model: nn.Module) -> str:
    """The model's hub name or local path from its config, else its ``model_type``, else ``"unknown"``."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "unknown"))


def model_identity(model: nn.Module) -> dict[str, str]:
    """Name and a fingerprint of every weight (not only those up to the hook layer)."""
    return {"name": model_name(model), "fingerprint": tensors_fingerprint(model.state_dict())}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Vocabulary, special tokens, BOS handling and chat template: what changes a prompt's ids.

    Not the folder it was loaded from: the same tokenizer copied elsewhere (another cache, another
    machine) keys the same caches, which is what lets the known sets ship (issue 17 §1).
    """
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    parts = [
        str(len(tokenizer)),
        str(getattr(tokenizer, "chat_template", "") or ""),
        str(sorted(getattr(tokenizer, "all_special_ids", []) or [])),
        json.dumps(tokenizer("The quick brown fox. A B C D")["input_ids"]),
        text_fingerprint([json.dumps(sorted(vocab.items()))]),
    ]
    return text_fingerprint(parts)


def _blocks(model: nn.Module) -> nn.ModuleList:
    return decoder_blocks(model)
