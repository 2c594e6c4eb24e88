"""Cheap, stable fingerprints of weights and corpora.

Artifacts record which model weights and SAE they were fitted on; a strided
sample of every tensor (plus shapes and dtypes) identifies a checkpoint without
hashing gigabytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch

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
