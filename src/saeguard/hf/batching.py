"""Choosing a batch size from a memory budget, and reading peak memory.

Setup passes run the model only up to the hook layer with no autograd, so at
any moment one block's temporaries are alive: the attention scores
(heads x T x T, the largest term at long sequences) or the MLP's intermediate
activations, plus a few residual-sized tensors. The statistics pass adds the
SAE encode of at most ``token_chunk`` tokens at a time, which does not grow
with the batch. The estimate is checked against measured peaks by
``saeguard bench`` (docs/performance.md).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch
from torch import nn

from saeguard.errors import require
from saeguard.hf.layers import config_value, hidden_size

#: Residual-sized tensors alive at once (residual, normed input, attention output, q).
_RESIDUAL_COPIES = 5
#: MLP temporaries per token: gate, up, act(gate), their product.
_MLP_COPIES = 4
#: Bytes per latent per encoded token in the statistics pass: fp32 activations plus the
#: float64 copy and its square that the running sums make (measured ~18-20).
_STATS_BYTES_PER_LATENT = 24
#: Allocator slack and small per-call buffers, measured ~20 MB on CPU for SmolLM2.
_FIXED_BYTES = 32 * 2**20
_MiB = 2**20


@dataclass
class MemoryEstimate:
    """Bytes a truncated no-grad forward (and the statistics encode) needs."""

    seq_len: int
    per_sequence: int  # forward temporaries of one sequence
    fixed: int  # allocator slack and small buffers
    sae_per_token: int  # statistics encode, per token of the current chunk
    token_chunk: int  # the statistics pass encodes at most this many tokens at once

    def total(self, batch_size: int) -> int:
        """Estimated peak activation bytes for ``batch_size`` sequences of ``seq_len`` tokens."""
        tokens = min(batch_size * self.seq_len, self.token_chunk)
        return self.fixed + batch_size * self.per_sequence + tokens * self.sae_per_token


def _config_int(model: nn.Module, keys: tuple[str, ...], default: int) -> int:
    value = config_value(model, keys)
    return default if value is None else value


def estimate_activation_memory(
    model: nn.Module,
    seq_len: int,
    *,
    d_sae: int = 0,
    token_chunk: int = 4096,
    dtype: torch.dtype | None = None,
) -> MemoryEstimate:
    """Upper-bound activation bytes for a forward truncated at any layer (weights excluded).

    The layer does not change the peak: blocks run one after another and no
    block's temporaries outlive it, so only the widest block counts.
    """
    require(seq_len >= 1, f"seq_len must be at least 1, got {seq_len}")
    width = hidden_size(model)
    heads = _config_int(model, ("num_attention_heads", "n_head"), max(width // 64, 1))
    kv_heads = _config_int(model, ("num_key_value_heads",), heads)
    intermediate = _config_int(model, ("intermediate_size", "n_inner"), 4 * width)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    item = torch.empty((), dtype=dtype).element_size()
    head_dim = width // heads
    # Attention: scores and mask are materialised whenever a padding mask is given
    # (measured on CPU with sdpa); k and v cover the KV heads only.
    attention = heads * seq_len * seq_len + seq_len * seq_len + seq_len * 2 * kv_heads * head_dim
    mlp = _MLP_COPIES * seq_len * intermediate
    per_sequence = item * (_RESIDUAL_COPIES * seq_len * width + max(attention, mlp))
    return MemoryEstimate(
        seq_len=seq_len,
        per_sequence=per_sequence,
        fixed=_FIXED_BYTES,
        sae_per_token=_STATS_BYTES_PER_LATENT * d_sae,
        token_chunk=token_chunk,
    )


def suggest_batch_size(
    model: nn.Module,
    seq_len: int,
    layer: int,
    memory_budget_bytes: int,
    *,
    d_sae: int = 0,
    max_batch_size: int = 256,
) -> int:
    """Largest batch whose setup pass fits ``memory_budget_bytes`` of activations.

    The budget excludes the model's weights (already loaded); ``available_memory_bytes``
    gives a sensible one. ``layer`` is validated but, see ``estimate_activation_memory``,
    does not change the answer.
    """
    require(layer >= 0, f"layer must be >= 0, got {layer}")
    estimate = estimate_activation_memory(model, seq_len, d_sae=d_sae)
    require(
        estimate.total(1) <= memory_budget_bytes,
        f"one sequence of {seq_len} tokens needs ~{estimate.total(1) / _MiB:.0f} MiB but the budget is "
        f"{memory_budget_bytes / _MiB:.0f} MiB: lower seq_len or raise the budget",
    )
    low, high = 1, max_batch_size
    while low < high:  # total() is monotone in the batch size
        middle = (low + high + 1) // 2
        if estimate.total(middle) <= memory_budget_bytes:
            low = middle
        else:
            high = middle - 1
    return low


def available_memory_bytes(device: torch.device | str = "cpu", fraction: float = 0.5) -> int:
    """A budget: ``fraction`` of the memory free now (GPU: free device memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    import psutil

    return int(psutil.virtual_memory().available * fraction)


# -- measuring peaks (CPU) -----------------------------------------------------------
def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so a later peak shows real growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux); False where that is not possible.

    Lets one process measure the peak of one phase, not of the model load before it.
    """
    release_free_memory()
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size in bytes: VmHWM where readable, else ru_maxrss."""
    try:
        with open(f"/proc/{os.getpid()}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
