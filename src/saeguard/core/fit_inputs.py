"""The inputs of a fit and their statistics: checked before any forward pass, cached on disk.

:func:`prepare_fit` checks the model, tokenizer, SAE, lengths and corpora and
returns :class:`FitInputs`; :func:`corpus_statistics` computes the per-latent
statistics of one corpus (method.md §2.1), cached by model + layer + SAE +
tokenizer + documents + chunking, or (data-parallel, ``saeguard.distributed``)
one rank's partial sums. ``core/fit.py`` turns them into a guard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from saeguard.config import FitConfig
from saeguard.core.sae import check_sae_width, load_sae, sae_fingerprint, sae_hook_name
from saeguard.core.statistics import FeatureStatistics, Shard, collect_statistics, token_batches
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import (
    CorpusSpec,
    check_tokenizer,
    count_chunks,
    iter_chunks,
    iter_documents,
    special_token_ids,
)
from saeguard.hf.fingerprint import model_fingerprint, tokenizer_fingerprint
from saeguard.hf.layers import check_language_model, max_positions, parse_layer
from saeguard.io import text_fingerprint

CorpusRole = Literal["forget", "retain"]
"""Which corpus of a fit: the topic to forget, or the text to keep (method.md §2)."""


@dataclass
class FitInputs:
    """Validated inputs of a fit: the model, the loaded SAE, the layer and the documents."""

    model: nn.Module
    tokenizer: Any
    sae: Any
    sae_spec: Any
    layer: int
    forget_docs: list[str]
    retain_docs: list[str]

    def documents(self, role: CorpusRole) -> list[str]:
        return self.forget_docs if role == "forget" else self.retain_docs


def prepare_fit(
    model: nn.Module, tokenizer, sae, forget: CorpusSpec, retain: CorpusSpec, config: FitConfig
) -> FitInputs:
    """Check everything a fit needs before any forward pass runs.

    Raises:
        SaeguardError: not a loaded language model, no tokenizer, an SAE that reads another
            layer or width than the one asked for, a length (``seq_len``, ``prompt_max_tokens``,
            ``calibration_long_tokens``) beyond the model's positions, corpora without real text,
            or the same text on both sides (checked before any forward pass).
    """
    check_language_model(model)
    check_tokenizer(tokenizer, "a fit")
    _check_lengths(model, config)
    sae_spec = sae
    sae = load_sae(sae)
    hook_name = sae_hook_name(sae)
    layer = parse_layer(config.layer if config.layer is not None else hook_name, model)
    if config.layer is not None and hook_name is not None:
        try:
            sae_layer = parse_layer(hook_name, model)
        except SaeguardError:
            sae_layer = None  # a hook name we cannot read (e.g. attention output): the given layer decides
        require(
            sae_layer is None or sae_layer == layer,
            f"the SAE reads layer {sae_layer} ({hook_name}) but layer {layer} was asked for: "
            "drop --layer/layer= to use the SAE's, or pass the SAE trained on that layer",
        )
    check_sae_width(sae, model)
    sae = sae.to(next(model.parameters()).device)
    forget_docs, retain_docs = (
        _documents(forget, "forget", tokenizer),
        _documents(retain, "retain", tokenizer),
    )
    require(
        set(forget_docs) != set(retain_docs),
        "the forget and retain corpora are the same text, so no latent can tell them apart and the gate "
        "would never fire: give a retain corpus without the forget topic (e.g. --retain wiki:not-biology)",
    )
    return FitInputs(
        model=model,
        tokenizer=tokenizer,
        sae=sae,
        sae_spec=sae_spec,
        layer=layer,
        forget_docs=forget_docs,
        retain_docs=retain_docs,
    )


def _check_lengths(model: nn.Module, config: FitConfig) -> None:
    """Every length the config chooses fits the model's positions (a chat template adds a few tokens)."""
    limit = max_positions(model)
    if limit is None:
        return
    for name in ("seq_len", "prompt_max_tokens", "calibration_long_tokens"):
        value, most = getattr(config, name), limit if name == "seq_len" else limit // 2
        require(
            value <= limit if name == "seq_len" else value < limit,
            f"{name} {value} exceeds the model's {limit} positions: use {name}={most} or less",
        )
    answered = config.prompt_max_tokens + config.calibration_answer_tokens
    require(
        config.calibration_answer_tokens == 0 or answered <= limit // 2,
        f"prompt_max_tokens + calibration_answer_tokens ({answered}) exceeds half the model's {limit} "
        "positions (the chat template and long calibration runs need the rest): "
        f"use calibration_answer_tokens={max(0, limit // 2 - config.prompt_max_tokens)} or less",
    )


def lengths_within(config: FitConfig, limit: int | None) -> tuple[FitConfig, list[str]]:
    """``config`` with the lengths a preset chose lowered to a model's ``limit`` positions.

    ``seq_len`` to ``limit``; ``calibration_long_tokens`` and a prompt plus its calibration
    answer (``prompt_max_tokens + calibration_answer_tokens``) to half of it, leaving room for
    the chat template. One place for the CLI's and the experiments' short-context models.

    Returns:
        (config, one note per lowered setting, e.g. "seq_len 256 -> 128 (128 model positions)").
    """
    if limit is None:
        return config, []
    lowered: dict[str, Any] = {}
    if config.seq_len > limit:
        lowered["seq_len"] = limit
    if config.calibration_long_tokens > limit // 2:
        lowered["calibration_long_tokens"] = limit // 2
    answered = config.prompt_max_tokens + config.calibration_answer_tokens
    if config.calibration_answer_tokens and answered > limit // 2:
        lowered["calibration_answer_tokens"] = max(0, limit // 2 - config.prompt_max_tokens)
    notes = [
        f"{name} {getattr(config, name)} -> {value} ({limit} positions)" for name, value in lowered.items()
    ]
    return dataclasses.replace(config, **lowered), notes


def corpus_statistics(
    inputs: FitInputs,
    role: CorpusRole,
    config: FitConfig,
    *,
    cache: str | Path | None = None,
    show_progress: bool = True,
    shard: Shard | None = None,
) -> FeatureStatistics:
    """Per-latent statistics of the forget or retain corpus, cached when ``cache`` is set.

    With a ``shard`` only that rank's batches run (the partial sums; may hold no token).
    """
    docs = inputs.documents(role)
    limit = config.max_forget_chunks if role == "forget" else config.max_retain_chunks

    def compute() -> FeatureStatistics:
        chunks = iter_chunks(docs, inputs.tokenizer, config.seq_len, max_chunks=limit)
        batches = token_batches(chunks, inputs.tokenizer, statistics_batch_size(inputs, config))
        with eval_mode(inputs.model):
            return collect_statistics(
                inputs.model,
                inputs.sae,
                inputs.layer,
                batches if shard is None else shard.take(batches),
                description=f"{role} statistics",
                total=count_chunks(docs, inputs.tokenizer, config.seq_len, max_chunks=limit)
                if show_progress and shard is None
                else None,
                show_progress=show_progress,
                allow_empty=shard is not None,
            )

    if cache is None:
        return compute()
    key = text_fingerprint(
        [
            model_fingerprint(inputs.model, inputs.layer),
            str(inputs.layer),
            sae_fingerprint(inputs.sae),
            tokenizer_fingerprint(inputs.tokenizer),
            text_fingerprint(docs),
            str(config.seq_len),
            str(limit),
            *([] if shard is None else [f"shard {shard.rank}/{shard.count}"]),
        ]
    )
    path = Path(cache).expanduser() / f"stats-{key}.safetensors"
    if path.is_file():
        try:
            return FeatureStatistics.load(path)
        except SaeguardError:
            path.unlink(missing_ok=True)  # truncated or foreign file: recompute it
    stats = compute()
    stats.save(path)
    return stats


def statistics_batch_size(inputs: FitInputs, config: FitConfig) -> int:
    """``config.batch_size``, or the largest batch fitting ``memory_budget_gb`` of activations."""
    if config.memory_budget_gb is None:
        return config.batch_size
    from saeguard.hf.batching import suggest_batch_size

    budget = int(config.memory_budget_gb * 2**30)
    return suggest_batch_size(
        inputs.model, config.seq_len, inputs.layer, budget, d_sae=int(inputs.sae.cfg.d_sae)
    )


def _documents(spec: CorpusSpec, name: str, tokenizer) -> list[str]:
    """The corpus's documents; at least one must have 2 tokens the statistics count (not special/unknown)."""
    docs = list(iter_documents(spec))
    require(bool(docs), f"the {name} corpus is empty: give it at least one document")
    special = special_token_ids(tokenizer)
    require(
        any(
            sum(i not in special for i in tokenizer(doc, add_special_tokens=False)["input_ids"]) >= 2
            for doc in docs
        ),
        f"the {name} corpus has no document with at least 2 tokens the tokenizer knows (not special or "
        "unknown): give it real text in the model's language",
    )
    return docs


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with ``model`` in eval mode, restoring its train/eval mode after (also on error)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
