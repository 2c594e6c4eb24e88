"""Gradient Ascent (GA): raise the forget text's NLL, with no retain term.

Source: Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in
Language Models" (ACL), which unlearns target sequences by gradient ascent on
their log-likelihood; Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning
for LLMs", where it is the basic baseline. Grids: the DSG paper's (docs/method.md §6.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from saeguard.baselines.likelihood import mean_nll
from saeguard.baselines.registry import MethodConfig, register
from saeguard.baselines.training import LossFn, prepare_trainable
from saeguard.hf.corpus import TokenBatch

__all__ = ["GAConfig", "ga_loss"]


@dataclass
class GAConfig(MethodConfig):
    """Gradient Ascent: maximise the NLL of the forget text, nothing else."""

    monitor_retain: bool = field(
        default=True, metadata={"help": "Log retain NLL (no gradient) to watch utility collapse"}
    )


def ga_loss(config: GAConfig) -> LossFn:
    """Loss ``-NLL(forget)`` in nats per counted token.

    Logs ``forget_nll`` and, when ``monitor_retain``, ``retain_nll`` (computed without gradient).
    """

    def loss_fn(model: nn.Module, forget: TokenBatch, retain: TokenBatch) -> tuple[torch.Tensor, dict]:
        forget_nll = mean_nll(model, forget)
        logs = {"forget_nll": float(forget_nll.detach())}
        if config.monitor_retain:
            with torch.no_grad():
                logs["retain_nll"] = float(mean_nll(model, retain))
        return -forget_nll, logs

    return loss_fn


def setup(model: nn.Module, config: GAConfig) -> tuple[nn.Module, list[nn.Parameter], LossFn]:
    """Train every weight (or LoRA on every linear layer) on :func:`ga_loss`."""
    model, params = prepare_trainable(model, config.train)
    return model, params, ga_loss(config)


# GA has no retain term, so its paper grid is the learning rates alone (the paper
# lists retain weights for GA/GradDiff together). Small: 4.8 s/step at seq 128 x batch 4.
PAPER_GRID = {"learning_rate": (1e-5, 5e-5), "batch_size": (8,), "steps": (400,)}
SMALL_GRID = {"learning_rate": (1e-5, 5e-5), "batch_size": (4,), "steps": (40,), "seq_len": (128,)}

register("ga", config=GAConfig, setup=setup, paper_grid=PAPER_GRID, small_grid=SMALL_GRID)
