"""RMU (Li et al. 2024, the WMDP paper): scramble forget activations at one layer.

The residual after layer ``layer`` is pushed toward a fixed random direction
(scaled by ``steering_coeff``) on forget text and held at its original value on
retain text, training only the MLPs of ``update_layers``. Both forwards stop
after ``layer``: later blocks cannot affect the loss, so they are never run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from saeguard.baselines.training import LossFn, Reference, TrainConfig
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import TokenBatch
from saeguard.hf.layers import (
    block_output_tensor,
    block_path,
    decoder_blocks,
    parse_layer,
    residual_at,
)


def _rmu_train_defaults() -> TrainConfig:
    return TrainConfig(learning_rate=5e-6, batch_size=4, steps=400)


@dataclass
class RMUConfig:
    """RMU settings; the DESIGN §1.7 grid varies steering_coeff, alpha, batch and steps."""

    train: TrainConfig = field(default_factory=_rmu_train_defaults)
    layer: int | str = 3
    # Layers whose MLPs train; None = (layer-2, layer-1, layer) as in WMDP's reference code.
    update_layers: tuple[int, ...] | None = None
    steering_coeff: float = 20.0
    alpha: float = 100.0

    def validate(self) -> None:
        require(self.steering_coeff > 0, f"steering_coeff must be > 0, got {self.steering_coeff}")
        require(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")


def resolve_layers(model: nn.Module, config: RMUConfig) -> tuple[int, tuple[int, ...]]:
    """The hook layer and the layers to update, checked against the model."""
    layer = parse_layer(config.layer, model)
    if config.update_layers is None:
        updates = tuple(range(max(0, layer - 2), layer + 1))
    else:
        updates = tuple(sorted({parse_layer(i, model) for i in config.update_layers}))
    require(bool(updates), "update_layers is empty: list at least one layer to train")
    require(
        max(updates) <= layer,
        f"update_layers {list(updates)} go past layer {layer}: layers after the hook "
        "cannot change its activations, so list layers <= layer",
    )
    return layer, updates


def mlp_path(model: nn.Module, layer: int) -> str:
    """Module path of a block's MLP: the block child whose name contains 'mlp'."""
    block = decoder_blocks(model)[layer]
    names = [name for name, _ in block.named_children() if "mlp" in name.lower()]
    if "mlp" in names:
        names = ["mlp"]
    if len(names) != 1:
        raise SaeguardError(
            f"cannot find one MLP in block {layer} (children: "
            f"{[n for n, _ in block.named_children()]}): RMU needs a block child named '*mlp*'"
        )
    return f"{block_path(model, layer)}.{names[0]}"


def steering_direction(hidden: int, seed: int) -> torch.Tensor:
    """A fixed random unit vector (uniform on [0,1)^d then normalised, as in WMDP's code)."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.rand(hidden, generator=generator)
    return vector / vector.norm()


class _Stop(Exception):
    """Ends a forward pass once the hook layer has produced its output."""


def residual_with_grad(model: nn.Module, layer: int, batch: TokenBatch) -> torch.Tensor:
    """Residual after block ``layer`` with autograd on, running no later block."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        captured.append(block_output_tensor(output))
        raise _Stop

    handle = decoder_blocks(model)[layer].register_forward_hook(hook)
    positions = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    try:
        model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=positions,
            use_cache=False,
        )
    except _Stop:
        pass
    finally:
        handle.remove()
    require(bool(captured), f"layer {layer} did not run: check the model and the layer index")
    return captured[0]


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over counted tokens of the per-token mean squared error (WMDP's MSE, minus padding)."""
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def mean_cosine(hidden: torch.Tensor, direction: torch.Tensor, mask: torch.Tensor) -> float:
    """Average cosine of counted activations to the steering direction (a progress signal)."""
    cos = torch.nn.functional.cosine_similarity(hidden.float(), direction.view(1, 1, -1), dim=-1)
    weights = mask.to(cos.dtype)
    return float((cos * weights).sum() / weights.sum().clamp(min=1.0))


def rmu_loss(config: RMUConfig, layer: int, direction: torch.Tensor, reference: Reference) -> LossFn:
    """forget MSE to coeff*u + alpha * retain MSE to the frozen model's activations."""
    config.validate()

    def loss_fn(model: nn.Module, forget: TokenBatch, retain: TokenBatch):
        u = direction.to(forget.input_ids.device)
        h_forget = residual_with_grad(model, layer, forget)
        forget_loss = masked_mse(h_forget, config.steering_coeff * u.view(1, 1, -1), forget.counted)
        h_retain = residual_with_grad(model, layer, retain)
        with reference.active() as frozen:
            h_frozen = residual_at(frozen, layer, retain.input_ids, retain.attention_mask)
        retain_loss = masked_mse(h_retain, h_frozen, retain.counted)
        logs = {
            "forget_mse": float(forget_loss.detach()),
            "retain_mse": float(retain_loss.detach()),
            "forget_cos": mean_cosine(h_forget.detach(), u, forget.counted),
        }
        return forget_loss + config.alpha * retain_loss, logs

    return loss_fn
