"""Gradient Ascent, GradDiff and NPO: fine-tuning baselines that push forget likelihood down.

All three read the same masked next-token log-probabilities: targets that are
padding or special tokens (BOS/EOS/PAD) never count, matching how DSG's
statistics ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from saeguard.baselines.training import LossFn, Reference, TrainConfig
from saeguard.errors import require
from saeguard.hf.corpus import TokenBatch


@dataclass
class GAConfig:
    """Gradient Ascent: maximise the NLL of the forget text, nothing else."""

    train: TrainConfig = field(default_factory=TrainConfig)
    monitor_retain: bool = True  # log retain NLL (no gradient) to watch utility collapse

    def validate(self) -> None:
        """GA has no settings of its own to check."""


@dataclass
class GradDiffConfig:
    """GradDiff: ascent on forget plus ``retain_weight`` x NLL on retain."""

    train: TrainConfig = field(default_factory=TrainConfig)
    retain_weight: float = 1.0

    def validate(self) -> None:
        require(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")


@dataclass
class NPOConfig:
    """Negative Preference Optimisation (Zhang et al. 2024) with a retain term."""

    train: TrainConfig = field(default_factory=TrainConfig)
    beta: float = 0.1
    retain_weight: float = 1.0
    retain_loss: Literal["nll", "kl"] = "nll"

    def validate(self) -> None:
        require(self.beta > 0, f"beta must be > 0, got {self.beta}")
        require(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")
        require(
            self.retain_loss in ("nll", "kl"),
            f"retain_loss {self.retain_loss!r} is unknown: use 'nll' or 'kl'",
        )


def _logits(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.logits[:, :-1].float()


def target_logprobs(logits: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(next token) (B, T-1) and the mask of targets that count."""
    targets = batch.input_ids[:, 1:]
    logp = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return logp, batch.counted[:, 1:]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def mean_nll(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Mean NLL per counted target token (the quantity GA raises and retain terms lower)."""
    logp, mask = target_logprobs(_logits(model, batch), batch)
    return -masked_mean(logp, mask)


def sequence_logprob(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Summed log-likelihood of each sequence (B,): NPO's preference score."""
    logp, mask = target_logprobs(_logits(model, batch), batch)
    return (logp * mask.to(logp.dtype)).sum(-1)


def retain_kl(model: nn.Module, reference: Reference, batch: TokenBatch) -> torch.Tensor:
    """Mean KL(p_ref || p_model) over counted positions: keeps retain outputs where they were."""
    logits = _logits(model, batch)
    with reference.active() as ref:
        ref_logits = _logits(ref, batch)
    logq = torch.log_softmax(logits, -1)
    logp_ref = torch.log_softmax(ref_logits, -1)
    kl = (logp_ref.exp() * (logp_ref - logq)).sum(-1)
    return masked_mean(kl, batch.counted[:, 1:])


def ga_loss(config: GAConfig) -> LossFn:
    def loss_fn(model: nn.Module, forget: TokenBatch, retain: TokenBatch):
        forget_nll = mean_nll(model, forget)
        logs = {"forget_nll": float(forget_nll.detach())}
        if config.monitor_retain:
            with torch.no_grad():
                logs["retain_nll"] = float(mean_nll(model, retain))
        return -forget_nll, logs

    return loss_fn


def graddiff_loss(config: GradDiffConfig) -> LossFn:
    config.validate()

    def loss_fn(model: nn.Module, forget: TokenBatch, retain: TokenBatch):
        forget_nll = mean_nll(model, forget)
        retain_nll = mean_nll(model, retain)
        logs = {"forget_nll": float(forget_nll.detach()), "retain_nll": float(retain_nll.detach())}
        return -forget_nll + config.retain_weight * retain_nll, logs

    return loss_fn


def npo_loss(config: NPOConfig, reference: Reference) -> LossFn:
    """-(2/beta) * logsigmoid(-beta * (logp_model - logp_ref)) on forget, plus the retain term."""
    config.validate()

    def loss_fn(model: nn.Module, forget: TokenBatch, retain: TokenBatch):
        logp = sequence_logprob(model, forget)
        with reference.active() as ref:
            logp_ref = sequence_logprob(ref, forget)
        log_ratio = logp - logp_ref
        forget_loss = -(2.0 / config.beta) * F.logsigmoid(-config.beta * log_ratio).mean()
        if config.retain_loss == "kl":
            retain_term = retain_kl(model, reference, retain)
        else:
            retain_term = mean_nll(model, retain)
        tokens = forget.counted[:, 1:].sum().clamp(min=1)
        logs = {
            "npo": float(forget_loss.detach()),
            "forget_nll": float(-logp.detach().sum() / tokens),
            "log_ratio": float(log_ratio.detach().mean()),
            f"retain_{config.retain_loss}": float(retain_term.detach()),
        }
        return forget_loss + config.retain_weight * retain_term, logs

    return loss_fn
