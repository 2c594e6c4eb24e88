"""Gradient Difference (GradDiff): ascent on the forget NLL, descent on the retain NLL.

Source: Liu, Liu and Stone 2022, "Continual Learning and Private Unlearning"
(CoLLAs), and Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for
LLMs" (the "Grad. Diff." baseline). Grids: the DSG paper's (docs/method.md §6.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from saeguard.baselines.likelihood import mean_nll
from saeguard.baselines.registry import MethodConfig, register
from saeguard.baselines.training import LossFn, prepare_trainable
from saeguard.hf.corpus import TokenBatch

__all__ = ["GradDiffConfig", "graddiff_loss"]


@dataclass
class GradDiffConfig(MethodConfig):
    """GradDiff: ascent on forget plus ``retain_weight`` x NLL on retain."""

    retain_weight: float = field(
        default=1.0, metadata={"help": "Weight lambda of the retain NLL term", "min": 0}
    )


def graddiff_loss(config: GradDiffConfig) -> LossFn:
    """Loss ``-NLL(forget) + retain_weight * NLL(retain)`` (nats per counted token).

    Raises:
        SaeguardError: ``config`` fails validation.
    """
    config.validate()

    def loss_fn(model: nn.Module, forget: TokenBatch, retain: TokenBatch) -> tuple[torch.Tensor, dict]:
        forget_nll = mean_nll(model, forget)
        retain_nll = mean_nll(model, retain)
        logs = {"forget_nll": float(forget_nll.detach()), "retain_nll": float(retain_nll.detach())}
        return -forget_nll + config.retain_weight * retain_nll, logs

    return loss_fn


def setup(model: nn.Module, config: GradDiffConfig) -> tuple[nn.Module, list[nn.Parameter], LossFn]:
    """Train every weight (or LoRA on every linear layer) on :func:`graddiff_loss`."""
    model, params = prepare_trainable(model, config.train)
    return model, params, graddiff_loss(config)


PAPER_GRID = {
    "learning_rate": (1e-5, 5e-5),
    "retain_weight": (0.01, 0.1, 1.0, 5.0, 10.0),
    "batch_size": (8,),
    "steps": (400,),
}
# 6.4 s/step at seq 128 x batch 4 on 2 cores.
SMALL_GRID = {
    "learning_rate": (5e-5,),
    "retain_weight": (1.0, 5.0),
    "batch_size": (4,),
    "steps": (60,),
    "seq_len": (128,),
}

register("graddiff", config=GradDiffConfig, setup=setup, paper_grid=PAPER_GRID, small_grid=SMALL_GRID)
