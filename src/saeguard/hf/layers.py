"""Where the residual stream lives: decoder blocks, hook names, truncated forwards.

Blocks are found generically (the longest ``nn.ModuleList`` whose length is the
config's layer count), never by a list of model names, so any Hugging Face
causal LM whose blocks are a ModuleList works (Llama, Mistral, Qwen2, Gemma,
GPT-2, GPT-NeoX, Phi, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from saeguard.errors import SaeguardError, require

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model")


def config_value(model: nn.Module, keys: tuple[str, ...]) -> int | None:
    """The first positive int among ``keys`` in the model's (text) config, or None."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = getattr(config, "get_text_config", None)
    configs = [text_config()] if callable(text_config) else []
    configs.append(config)
    for cfg in configs:
        for key in keys:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def layer_count(model: nn.Module) -> int:
    """Number of decoder blocks (the stack :func:`decoder_blocks` finds).

    Raises:
        SaeguardError: the model has no ``nn.ModuleList`` of blocks.
    """
    return len(decoder_blocks(model))


def hidden_size(model: nn.Module) -> int:
    """Width d of the residual stream (an SAE's ``d_in`` must equal it), from the model config.

    Raises:
        SaeguardError: the config has none of ``hidden_size``, ``n_embd``, ``d_model``.
    """
    value = config_value(model, _HIDDEN_SIZE_KEYS)
    if value is None:
        raise SaeguardError("cannot read the model's hidden size from its config")
    return value


_MAX_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")


def max_positions(model: nn.Module) -> int | None:
    """Longest sequence (tokens) the model's position embeddings cover, from its config; None if unstated.

    GPT-2 style models index a learned table (longer inputs raise ``IndexError``
    deep in the forward); rotary models degrade past it. Check chosen lengths
    (``seq_len``, prompt + new tokens) against it before any work starts.
    """
    return config_value(model, _MAX_POSITION_KEYS)


def check_language_model(model: Any, what: str = "model") -> None:
    """Fail clearly unless ``model`` is a loaded decoder language model saeguard can hook.

    Accepts any ``nn.Module`` with a config giving its hidden size and an ``nn.ModuleList`` of
    decoder blocks whose weights are loaded (not all on the ``meta`` device, unless accelerate
    offloading hooks will load them).

    Raises:
        SaeguardError: another type (a string, a tokenizer, None), a module without decoder
            blocks or hidden size, or a model whose weights are all on the meta device.
    """
    require(
        isinstance(model, nn.Module),
        f"{what} must be a loaded language model (a torch nn.Module such as "
        f"AutoModelForCausalLM.from_pretrained(...)), got {type(model).__name__}",
    )
    parameters = list(model.parameters())
    offloaded = any(hasattr(module, "_hf_hook") for module in model.modules())
    require(
        offloaded or not parameters or not all(p.is_meta for p in parameters),
        f"the {what}'s weights are on the meta device (no data): load them first, e.g. "
        "from_pretrained(...) without a meta-device context, or model.to_empty(...) and load_state_dict",
    )
    require(
        config_value(model, _HIDDEN_SIZE_KEYS) is not None,
        f"the {what} ({type(model).__name__}) has no config giving its hidden size: saeguard needs a "
        "Hugging Face causal LM",
    )
    decoder_blocks(model)


def embedding_rows(model: nn.Module) -> int | None:
    """Rows of the model's input embedding table (token ids must be below it), or None if unknown."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    try:
        embeddings = get_embeddings() if callable(get_embeddings) else None
    except (AttributeError, NotImplementedError):
        return None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def check_token_ids(model: nn.Module, input_ids: torch.Tensor, what: str) -> None:
    """Fail clearly when ``input_ids`` (any shape) hold an id the model's embeddings do not have.

    Raises:
        SaeguardError: an id at or above the embedding rows, or a negative id.
    """
    rows = embedding_rows(model)
    if rows is None or input_ids.numel() == 0:
        return
    high, low = int(input_ids.max()), int(input_ids.min())
    require(
        low >= 0 and high < rows,
        f"{what} holds token id {high if high >= rows else low} but the model embeds ids 0..{rows - 1}: "
        "use the tokenizer saved with this model",
    )


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks.

    The shallowest ``nn.ModuleList`` whose length equals the config's layer
    count; without that count, the longest ModuleList.

    Raises:
        SaeguardError: the model holds no non-empty ``nn.ModuleList``.
    """
    expected = config_value(model, _LAYER_COUNT_KEYS)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    if expected is not None:
        matching = [c for c in candidates if len(c[1]) == expected]
        if matching:
            # The shallowest match is the main stack (not a ModuleList inside a block).
            return min(matching, key=lambda c: c[0].count("."))[1]
    if not candidates:
        raise SaeguardError(
            "no decoder blocks found: saeguard needs a model whose blocks are an nn.ModuleList"
        )
    return max(candidates, key=lambda c: len(c[1]))[1]


def block_path(model: nn.Module, layer: int) -> str:
    """Module path of block ``layer`` (e.g. ``model.layers.3``), or the bare index if the stack is unnamed."""
    blocks = decoder_blocks(model)
    for name, module in model.named_modules():
        if module is blocks:
            return f"{name}.{layer}"
    return str(layer)


_HOOK_NAME_PATTERNS = (
    re.compile(r"^blocks\.(\d+)\.hook_resid_post$"),
    re.compile(r"^(?:.*\.)?(?:layers|h|blocks|layer)\.(\d+)$"),
)


def parse_layer(spec: int | str | None, model: nn.Module) -> int:
    """Turn a layer index or hook name into a validated block index.

    Accepts ``3``, ``"3"``, TransformerLens ``blocks.3.hook_resid_post`` and HF
    module paths such as ``model.layers.3``. The hook reads the residual stream
    after that block (docs/method.md §1).

    Raises:
        SaeguardError: ``spec`` is None, an unreadable hook name, or outside ``0..layer_count-1``.
    """
    count = layer_count(model)
    if spec is None:
        raise SaeguardError("no hook layer given: pass --layer N or use an SAE with a hook name")
    if isinstance(spec, str):
        text = spec.strip()
        if text.lstrip("-").isdigit():
            index = int(text)
        else:
            match = next((m for p in _HOOK_NAME_PATTERNS if (m := p.match(text))), None)
            if match is None:
                raise SaeguardError(
                    f"cannot read a layer from hook name {spec!r}: use an index, "
                    "'blocks.N.hook_resid_post' or 'model.layers.N'"
                )
            index = int(match.group(1))
    else:
        index = int(spec)
    require(
        0 <= index < count,
        f"layer {index} is out of range: this model has layers 0..{count - 1}",
    )
    return index


def block_output_tensor(output: object) -> torch.Tensor:
    """The hidden states a decoder block returned (a tensor or the first of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "hidden_states", None) or getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise SaeguardError(f"unexpected decoder block output type {type(output).__name__}")


def replace_block_output(output: object, hidden: torch.Tensor) -> object:
    """``output`` with its hidden states replaced by ``hidden`` (B, T, d), in the same container.

    Raises:
        SaeguardError: ``output`` is not a tensor, tuple or list.
    """
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise SaeguardError(f"cannot replace decoder block output of type {type(output).__name__}")


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the hook layer has run."""


@contextmanager
def capture_residual(model: nn.Module, layer: int) -> Iterator[list[torch.Tensor]]:
    """Record the residual after ``layer`` and stop the forward there.

    Layers above the hook are never run: this is what makes statistics passes
    cost only ``(layer + 1) / n_layers`` of a full forward.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        captured.append(block_output_tensor(output))
        raise _StopForward

    handle = decoder_blocks(model)[layer].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def residual_at(
    model: nn.Module,
    layer: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Residual stream after block ``layer`` for a batch, running no later block.

    Args:
        input_ids: (B, T) int64 token ids.
        attention_mask: (B, T) 1 for real tokens; position ids are derived from it,
            so left padding gives the same residuals as no padding.

    Returns:
        (B, T, d) hidden states in the model's dtype, on the model's device.

    Raises:
        SaeguardError: an input longer than the model's positions (:func:`max_positions`) or
            holding ids the model does not embed, or block ``layer`` never ran during the forward.
    """
    limit = max_positions(model)
    require(
        limit is None or input_ids.shape[-1] <= limit,
        f"an input of {input_ids.shape[-1]} tokens exceeds the model's {limit} positions: lower the "
        "length that produced it (seq_len, prompt_max_tokens, calibration_long_tokens)",
    )
    check_token_ids(model, input_ids, "an input")
    position_ids = None
    if attention_mask is not None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with capture_residual(model, layer) as captured, suppress(_StopForward):
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    if not captured:
        raise SaeguardError(f"layer {layer} did not run: check the model and the layer index")
    return captured[0]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
