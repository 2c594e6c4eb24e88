"""Masked next-token log-likelihoods shared by the likelihood baselines (GA, GradDiff, NPO).

Targets that are padding or special tokens (BOS/EOS/PAD) never count, matching
how DSG's statistics ignore them: ``TokenBatch.counted`` is the mask, shifted by
one so position ``t`` scores the prediction of token ``t + 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saeguard.hf.corpus import TokenBatch


def next_token_logits(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Float32 logits that predict tokens 1..T-1: (B, T-1, vocab)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.logits[:, :-1].float()


def target_logprobs(logits: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(next token) (B, T-1) float32, and the bool mask (B, T-1) of targets that count."""
    targets = batch.input_ids[:, 1:]
    logp = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return logp, batch.counted[:, 1:]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (same shape); 0 when nothing counts. Scalar tensor."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def mean_nll(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Mean NLL in nats per counted target token (scalar): what GA raises and retain terms lower."""
    logp, mask = target_logprobs(next_token_logits(model, batch), batch)
    return -masked_mean(logp, mask)


def sequence_logprob(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Summed log-likelihood in nats of each sequence's counted targets (B,): NPO's preference score."""
    logp, mask = target_logprobs(next_token_logits(model, batch), batch)
    return (logp * mask.to(logp.dtype)).sum(-1)
