"""``unlearn``: run one registered method on a model (the entry point callers use).

The method comes from the registry by name; everything else (seeding,
batching, device and dtype, the optimisation loop) is shared, so methods
differ only in what they train and in their loss.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from saeguard.baselines.registry import MethodConfig, get
from saeguard.baselines.training import TrainResult, make_cyclers, seed_everything, train_loop
from saeguard.errors import require
from saeguard.hf.corpus import CorpusSpec

__all__ = ["unlearn"]


def unlearn(
    model: nn.Module,
    tokenizer: Any,
    method: str,
    forget: CorpusSpec,
    retain: CorpusSpec,
    config: MethodConfig | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Unlearn ``forget`` while keeping ``retain``: trains ``model`` in place and returns it.

    Args:
        model: a Hugging Face causal LM; moved to ``config.train``'s device and dtype.
        tokenizer: its tokenizer.
        method: a registered name (``saeguard.baselines.names()``), e.g. ``"npo"``.
        forget, retain: texts, a text file or a folder of them (``CorpusSpec``).
        config: the method's config; ``None`` = its defaults.

    Returns:
        The trained model (wrapped by peft when ``use_lora``) and the run's :class:`TrainResult`.

    Raises:
        SaeguardError: unknown method, a config of another method, a setting that
            fails validation, an empty corpus, or a loss that is no longer finite.
    """
    entry = get(method)
    config = entry.config() if config is None else config
    require(
        isinstance(config, entry.config),
        f"method {entry.name!r} needs a {entry.config.__name__}, got {type(config).__name__}: "
        "pass the config class that matches the method",
    )
    config.validate()
    train = config.train
    seed_everything(train.seed)
    forget_batches, retain_batches = make_cyclers(tokenizer, forget, retain, train)
    model.to(device=train.torch_device(), dtype=train.torch_dtype())
    model, params, loss_fn = entry.setup(model, config)
    result = train_loop(model, params, forget_batches, retain_batches, loss_fn, train, method=entry.name)
    result.forget_chunks = len(forget_batches.chunks)
    result.retain_chunks = len(retain_batches.chunks)
    return model, result
