"""Representation Misdirection for Unlearning (RMU): scramble forget activations at one layer.

Source: Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious
Use with Unlearning" (ICML), the RMU method and its reference code. The
residual after layer ``layer`` is pushed toward a fixed random direction
(scaled by ``steering_coeff``) on forget text and held at its original value on
retain text, training only the MLPs of ``update_layers``. Both forwards stop
after ``layer``: later blocks cannot affect the loss, so they are never run.
Grids: the DSG paper's (docs/method.md §6.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from saeguard.baselines.likelihood import masked_mean
from saeguard.baselines.registry import MethodConfig, register
from saeguard.baselines.training import LossFn, Reference, TrainConfig, prepare_trainable
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import TokenBatch
from saeguard.hf.layers import (
    block_output_tensor,
    block_path,
    decoder_blocks,
    hidden_size,
    parse_layer,
    residual_at,
)

__all__ = ["RMUConfig", "mlp_path", "residual_with_grad", "resolve_layers", "rmu_loss", "steering_direction"]


def _rmu_train_defaults() -> TrainConfig:
    return TrainConfig(learning_rate=5e-6, batch_size=4, steps=400)


#: RMU's best forget/utility trade-off on the default model (SmolLM2-135M-Instruct) in the
#: comparison grid (docs/compare.md, second run: the only configuration at >= 99% utility):
#: RMUConfig fields (layer, steering_coeff, alpha) and TrainConfig fields (the rest).
DEFAULT_MODEL_RMU: dict[str, float | int] = {
    "layer": 3,
    "steering_coeff": 100,
    "alpha": 100,
    "learning_rate": 5e-4,
    "steps": 150,
    "batch_size": 4,
    "seq_len": 128,
}


@dataclass
class RMUConfig(MethodConfig):
    """RMU settings; the paper grid varies steering_coeff, alpha, batch and steps."""

    train: TrainConfig = field(
        default_factory=_rmu_train_defaults,
        metadata={"help": "Optimisation settings (RMU default: lr 5e-6, batch 4, 400 steps)"},
    )
    layer: int | str = field(
        default=3, metadata={"help": "Hook layer: block index or hook name; its residual is steered"}
    )
    update_layers: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "Layers whose MLPs train; None = (layer-2, layer-1, layer) as in WMDP's code"},
    )
    steering_coeff: float = field(
        default=20.0, metadata={"help": "c: forget activations are pushed toward c * u", "min_exclusive": 0}
    )
    alpha: float = field(default=100.0, metadata={"help": "Weight of the retain activation MSE", "min": 0})

    def __post_init__(self) -> None:
        if isinstance(self.update_layers, list):  # from JSON or a grid file
            self.update_layers = tuple(self.update_layers)


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
    """Mean over counted tokens of the per-token mean squared error (WMDP's MSE, minus padding).

    ``hidden`` (B, T, d), ``target`` broadcastable to it, ``mask`` (B, T) bool; returns a float32 scalar.
    """
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    return masked_mean(per_token, mask)


def mean_cosine(hidden: torch.Tensor, direction: torch.Tensor, mask: torch.Tensor) -> float:
    """Average cosine of counted activations (B, T, d) to the steering direction (d,): a progress signal."""
    cos = torch.nn.functional.cosine_similarity(hidden.float(), direction.view(1, 1, -1), dim=-1)
    return float(masked_mean(cos, mask))


def rmu_loss(config: RMUConfig, layer: int, direction: torch.Tensor, reference: Reference) -> LossFn:
    """Forget MSE to ``steering_coeff * u`` + ``alpha`` x retain MSE to the frozen model's activations.

    Args:
        config: the RMU settings.
        layer: resolved hook block index.
        direction: the unit steering vector u, (d,).
        reference: the model before unlearning (retain target).

    Raises:
        SaeguardError: ``config`` fails validation.
    """
    config.validate()

    def loss_fn(model: nn.Module, forget: TokenBatch, retain: TokenBatch) -> tuple[torch.Tensor, dict]:
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


def setup(model: nn.Module, config: RMUConfig) -> tuple[nn.Module, list[nn.Parameter], LossFn]:
    """Train only the MLPs of ``update_layers`` (or LoRA on them) on :func:`rmu_loss`.

    Raises:
        SaeguardError: a bad ``layer``/``update_layers``, or a block without one MLP child.
    """
    layer, updates = resolve_layers(model, config)
    direction = steering_direction(hidden_size(model), config.train.seed)
    model, params = prepare_trainable(model, config.train, [mlp_path(model, i) for i in updates])
    return model, params, rmu_loss(config, layer, direction, Reference(model))


PAPER_GRID = {
    "steering_coeff": (1, 5, 10, 20, 100, 200, 400, 500, 800, 1000),
    "alpha": (0.01, 0.1, 1, 10, 100, 300, 500),
    "batch_size": (4, 8),
    "steps": (400, 800),
    "layer": (3,),
    "learning_rate": (5e-6,),
}
# 0.5 s/step at seq 128 x batch 4 on 2 cores (forwards stop at layer 3). The learning rate
# is ~10x the paper's (5e-5, WMDP's own default) for the ~10x fewer tokens. Coefficients
# are set against SmolLM2's layer-3 residual norm (~90 on non-BOS tokens): 100 and 400 put
# c*u at ~1x and ~4x that norm, as the paper's 1..1000 spans below to far above Gemma's.
SMALL_GRID = {
    "steering_coeff": (100, 400),
    "alpha": (10, 100),
    "batch_size": (4,),
    "steps": (60,),
    "layer": (3,),
    "learning_rate": (5e-5,),
    "seq_len": (128,),
}

register("rmu", config=RMUConfig, setup=setup, paper_grid=PAPER_GRID, small_grid=SMALL_GRID)
