"""Cheap, stable fingerprints of weights and corpora.

Artifacts record which model weights and SAE they were fitted on; a strided
sample of every tensor (plus shapes and dtypes) identifies a checkpoint without
hashing gigabytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch
from torch import nn

_SAMPLE = 65_536


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLE)
        sample = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def text_fingerprint(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "replace"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module, layer: int) -> str:
    """Fingerprint of the weights the guard reads: embeddings and blocks 0..layer."""
    tensors: dict[str, torch.Tensor] = {}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        tensors.update({f"embed.{k}": v for k, v in embeddings.state_dict().items()})
    for index, block in enumerate(_blocks(model)[: layer + 1]):
        tensors.update({f"block{index}.{k}": v for k, v in block.state_dict().items()})
    return tensors_fingerprint(tensors)


def model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "unknown"))


def _blocks(model: nn.Module) -> nn.ModuleList:
    from saeguard.layers import decoder_blocks

    return decoder_blocks(model)
