"""Calibrating the gate threshold tau on retain inputs shaped like real queries.

tau is the ``gate_percentile``-th percentile of rho over retain calibration
inputs. Inputs are either the fitting chunks (the paper) or ``prompts``:
retain text cut to prompt-like lengths and wrapped in the chat template, with
only the user's tokens counted, because tau calibrated on long articles misses
short questions and a system prompt dilutes rho (docs/method.md §3, §9).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from saeguard.config import PromptShape
from saeguard.core.answers import answered_batches
from saeguard.core.gate import GateRule, GateStatistic
from saeguard.core.provenance import TauEstimate
from saeguard.core.sae import SelectedLatents
from saeguard.core.statistics import Shard
from saeguard.errors import require
from saeguard.hf.corpus import TokenBatch, counted_mask, special_token_ids
from saeguard.hf.layers import model_device, residual_at
from saeguard.hf.prompts import encode_prompts
from saeguard.progress import progress_bar

ANSWER_BATCH = 32
"""Prompts answered per ``generate`` call when calibrating on answers (at least ``batch_size``)."""


def prompt_texts(
    documents: Iterable[str],
    tokenizer,
    *,
    min_tokens: int = 8,
    max_tokens: int = 64,
    limit: int = 512,
    seed: int = 0,
) -> list[str]:
    """Leading pieces of documents, 8-64 tokens long, as stand-ins for user prompts.

    Each piece is the first ``randint(min_tokens, max_tokens)`` tokens of a
    document (fewer if it is shorter), decoded back to text; documents under 2
    tokens are skipped; at most ``limit`` pieces; ``seed`` makes it repeatable.
    """
    rng = random.Random(seed)
    texts = []
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            continue
        length = min(len(ids), rng.randint(min_tokens, max_tokens))
        text = tokenizer.decode(ids[:length]).strip()
        if text:
            texts.append(text)
        if len(texts) >= limit:
            break
    return texts


def long_prompt_texts(
    documents: Sequence[str], tokenizer: Any, *, max_tokens: int, limit: int, seed: int = 0
) -> list[str]:
    """Benign long inputs: runs of consecutive documents cut to max_tokens/8..max_tokens tokens.

    Calibrating tau on these as well keeps the false-positive rate of local gate rules
    (window, min_evidence, cusum) under long benign context (issue 13).
    """
    rng = random.Random(seed + 1)
    texts: list[str] = []
    if not documents:
        return texts
    order = list(range(len(documents)))
    rng.shuffle(order)
    position = 0
    while len(texts) < limit and position < len(order):
        target = rng.randint(max(2, max_tokens // 8), max_tokens)
        ids: list[int] = []
        while len(ids) < target and position < len(order):
            ids += tokenizer(documents[order[position]] + "\n\n", add_special_tokens=False)["input_ids"]
            position += 1
        text = tokenizer.decode(ids[:target]).strip()
        if text:
            texts.append(text)
    return texts


def multi_turn_prompts(texts: Sequence[str], *, seed: int = 0) -> list[list[dict[str, str]]]:
    """Each text split at word boundaries into 2-4 user turns with short assistant replies between."""
    rng = random.Random(seed + 2)
    conversations = []
    for text in texts:
        words = text.split()
        turns = min(len(words), rng.randint(2, 4))
        if turns < 2:
            continue
        cuts = sorted(rng.sample(range(1, len(words)), turns - 1))
        parts = [" ".join(words[a:b]) for a, b in zip([0, *cuts], [*cuts, len(words)], strict=True)]
        messages: list[dict[str, str]] = []
        for index, part in enumerate(parts):
            if index:
                messages.append({"role": "assistant", "content": "Go on."})
            messages.append({"role": "user", "content": part})
        conversations.append(messages)
    return conversations


def calibration_prompts(documents: Iterable[str], tokenizer: Any, shape: PromptShape) -> list[Any]:
    """The calibration inputs of ``shape``: prompt-shaped pieces, plus long and multi-turn ones.

    With ``shape.long_tokens`` > 0 a quarter of ``shape.limit`` more inputs are long benign
    runs of text (unless ``shape.long_runs`` is False) and another quarter the short pieces
    split over several chat turns.
    """
    documents = list(documents)
    texts: list[Any] = list(
        prompt_texts(
            documents,
            tokenizer,
            min_tokens=shape.min_tokens,
            max_tokens=shape.max_tokens,
            limit=shape.limit,
            seed=shape.seed,
        )
    )
    if shape.long_tokens > 0:
        extra = max(1, shape.limit // 4)
        long = long_prompt_texts(
            documents, tokenizer, max_tokens=shape.long_tokens, limit=extra, seed=shape.seed
        )
        split = multi_turn_prompts((texts + long)[:extra], seed=shape.seed) if shape.chat else []
        texts += [*(long if shape.long_runs else []), *split]
    return texts


def input_length(text: str | Sequence[dict[str, str]]) -> int:
    """A cheap stand-in for an input's token count: characters, plus 16 per chat turn."""
    if isinstance(text, str):
        return len(text)
    return sum(len(str(message.get("content", ""))) + 16 for message in text)


def by_length(texts: Sequence[Any]) -> list[Any]:
    """``texts`` shortest first (stable), so a batch pads to similar lengths.

    Padding is wasted compute: calibration inputs of 8 to 2,000 tokens in shuffled
    batches of 8 cost ~1.5x the sorted ones on a CPU (issue 17). rho does not depend
    on the batch an input sits in (the alone-vs-batched parity tests).
    """
    return sorted(texts, key=input_length)


def prompt_batches(
    texts: Sequence[Any], tokenizer: Any, batch_size: int, *, chat: bool = True
) -> Iterator[TokenBatch]:
    """Right-padded batches of prompts (chat-wrapped when ``chat``); only the user's tokens are counted."""
    special = special_token_ids(tokenizer)
    for start in range(0, len(texts), batch_size):
        enc = encode_prompts(tokenizer, texts[start : start + batch_size], chat=chat, left_pad=False)
        counted = counted_mask(enc.input_ids, enc.attention_mask, special) & enc.content_mask
        yield TokenBatch(enc.input_ids, enc.attention_mask, counted)


@torch.no_grad()
def gate_evidence(
    model: torch.nn.Module,
    layer: int,
    latents: SelectedLatents,
    batches: Iterable[TokenBatch],
    *,
    statistic: GateStatistic | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch, the gate's per-token evidence and counted mask (docs/method.md §3).

    Yields:
        (evidence (B, T) float on the model's device, counted (B, T) bool on the same device),
        one pair per batch of ``batches``: what every :class:`GateRule` turns into rho.
    """
    device = model_device(model)
    on_device = latents.to(device)
    statistic = statistic or GateStatistic()
    for batch in batches:
        hidden = residual_at(model, layer, batch.input_ids.to(device), batch.attention_mask.to(device))
        yield statistic.evidence(on_device.activations(hidden)), batch.counted.to(device)


def gate_rho(
    model: torch.nn.Module,
    layer: int,
    latents: SelectedLatents,
    batches: Iterable[TokenBatch],
    *,
    statistic: GateStatistic | None = None,
    rule: GateRule | None = None,
    description: str = "gate rho",
    total: int | None = None,
    show_progress: bool = True,
    per_window: bool = False,
    input_end: bool = True,
) -> torch.Tensor:
    """rho for every input, computed exactly as the gate computes it (docs/method.md §3).

    ``total`` (the number of inputs, when known) gives the progress bar its end and ETA.
    ``per_window`` gives the rule's unscaled rho per column instead (:meth:`GateRule.window_rho`):
    what calibrating the multiscale and sentence rules' scales needs. ``input_end=False`` reads
    each input as a running generation does (the sentence rule's open sentence at the end
    does not count, :meth:`GateRule.prefix_rho`).

    Returns:
        (n,) float64, one value per input with at least one counted token (inputs
        without any are dropped); (n, S) with ``per_window``.
    """
    rule = rule or GateRule()
    values = []
    with progress_bar(description, total=total, unit="inputs", enabled=show_progress) as advance:
        for batch in batches:
            ((evidence, counted),) = gate_evidence(model, layer, latents, [batch], statistic=statistic)
            ends = rule.sentence_ends(batch.input_ids.to(evidence.device))
            keep = counted.sum(-1) > 0
            read = rule.window_rho if per_window else rule.rho
            attended = batch.attention_mask.to(evidence.device)
            values.append(read(evidence, counted, ends, input_end=input_end, attended=attended)[keep].cpu())
            advance(int(counted.shape[0]))
    if values:
        return torch.cat(values)
    return torch.zeros((0, rule.columns) if per_window else 0, dtype=torch.float64)


def prompt_rho(
    model: torch.nn.Module,
    tokenizer,
    layer: int,
    latents: SelectedLatents,
    documents: Iterable[str],
    shape: PromptShape,
    *,
    statistic: GateStatistic | None = None,
    rule: GateRule | None = None,
    batch_size: int = 8,
    description: str = "gate rho",
    show_progress: bool = True,
    shard: Shard | None = None,
    per_window: bool = False,
) -> torch.Tensor:
    """rho of prompt-shaped pieces of ``documents``: calibration, firing rates and ROC all use this.

    ``per_window``: (n, S) unscaled window rho, as :func:`gate_rho`.

    The rho come shortest input first (:func:`by_length`), not in the order of
    :func:`calibration_prompts`; with ``shape.answer_tokens`` the rho of the first quarter of
    the pieces followed by the model's answer (:func:`~saeguard.core.answers.answered_batches`)
    come after them. The inputs are the same for any ``shard``; a shard
    computes only its contiguous block of batches (the blocks in rank order are the
    whole result, in order).
    """
    inputs = calibration_prompts(documents, tokenizer, shape)
    texts = by_length(inputs)
    require(
        shard is None or shape.answer_tokens == 0,
        "calibration_answer_tokens is not supported in a data-parallel fit: set it to 0 there",
    )
    if shard is not None:
        start, stop = shard.span(len(texts), batch_size)
        texts = texts[start:stop]
    batches = prompt_batches(texts, tokenizer, batch_size, chat=shape.chat)
    rho = gate_rho(
        model,
        layer,
        latents,
        batches,
        statistic=statistic,
        rule=rule,
        description=description,
        total=len(texts),
        show_progress=show_progress,
        per_window=per_window,
    )
    if shape.answer_tokens == 0 or not inputs:
        return rho
    asked = by_length(inputs[: max(1, shape.limit // 4)])  # the first inputs are the short pieces
    answered = answered_batches(  # generation is step-bound: wider batches cost ~the same per step
        model,
        tokenizer,
        asked,
        answer_tokens=shape.answer_tokens,
        batch_size=max(batch_size, ANSWER_BATCH),
        chat=shape.chat,
        show_progress=False,  # the rho bar below counts these inputs
    )
    answers_rho = gate_rho(
        model,
        layer,
        latents,
        answered,
        statistic=statistic,
        rule=rule,
        description=f"{description} (answers)",
        total=len(asked),
        show_progress=show_progress,
        per_window=per_window,
        input_end=False,  # as the running gate reads a generation cut at answer_tokens
    )
    return torch.cat([rho, answers_rho])


def window_scales(window_rho: torch.Tensor, percentile: float) -> tuple[float, ...]:
    """The multiscale rule's scales: each window size's ``percentile``-th retain rho, (S,) floats.

    Dividing by them puts every window size on one scale (1.0 = that size's retain level at
    the gate's percentile), so the largest scaled value compares sizes fairly; tau is then the
    same percentile of that largest value. Each size's level is read over the inputs at least
    that long (NaN entries are skipped); a size no input reaches takes the next smaller size's
    level. A size whose level is 0 (evidence on fewer than ``100 - percentile`` % of retain
    inputs) gets the smallest positive value of its column, or 1.0 (one fully firing token's
    evidence) when the latents never fire on retain text.

    Args:
        window_rho: (n, S) float64 unscaled window rho of the retain calibration inputs
            (:meth:`GateRule.window_rho`), sizes ascending.

    Raises:
        SaeguardError: no rows.
    """
    require(
        window_rho.dim() == 2 and window_rho.shape[0] > 0,
        "no retain window rho to scale the windows by: give the retain corpus real text",
    )
    values = window_rho.double().cpu().numpy()
    scales: list[float] = []
    for column in values.T:
        column = column[~np.isnan(column)]
        if column.size == 0:
            scales.append(scales[-1] if scales else 1.0)
            continue
        level = float(np.percentile(column, percentile))
        if level <= 0:
            positive = column[column > 0]
            level = float(positive.min()) if positive.size else 1.0
        scales.append(level)
    return tuple(scales)


def scaled_rho(window_rho: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """The multiscale rho of (n, S) unscaled window rho: max over sizes of rho / scale, (n,) float64."""
    if window_rho.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    divisor = torch.tensor(list(scales), dtype=torch.float64)
    return (window_rho.double() / divisor).nan_to_num(nan=0.0).amax(-1)


def guard_prompt_rho(
    model: torch.nn.Module,
    tokenizer,
    guard,
    documents: Iterable[str],
    shape: PromptShape,
    *,
    batch_size: int = 8,
    description: str = "gate rho",
    show_progress: bool = True,
) -> torch.Tensor:
    """rho of prompt-shaped pieces of ``documents`` exactly as ``guard``'s gate computes it."""
    return prompt_rho(
        model,
        tokenizer,
        guard.layer,
        guard.latents,
        documents,
        shape,
        statistic=guard.statistic,
        rule=guard.rule,
        batch_size=batch_size,
        description=description,
        show_progress=show_progress,
    )


def calibrate_tau(
    retain_rho: torch.Tensor, percentile: float, *, bootstrap: int = 1000, seed: int = 0
) -> TauEstimate:
    """tau = the ``percentile``-th percentile of (n,) retain rho (paper §3.3), plus a bootstrap interval.

    The plain percentile is used (as the reference code does); the bootstrap
    (``bootstrap`` resamples, ``seed``) only reports its uncertainty.

    Raises:
        SaeguardError: no rho, or a NaN/infinite rho (a corrupt artifact).
    """
    require(retain_rho.numel() > 0, "no retain rho to calibrate tau on: give the retain corpus real text")
    require(
        bool(torch.isfinite(retain_rho).all()),
        "the retain rho hold NaN or infinite values, so tau would be meaningless: refit the guardrail",
    )
    values = retain_rho.double().cpu().numpy()
    tau = float(np.percentile(values, percentile))
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(bootstrap, values.size), replace=True)
    boot = np.percentile(draws, percentile, axis=1)
    return TauEstimate(
        tau=tau,
        percentile=float(percentile),
        bootstrap_low=float(np.percentile(boot, 2.5)),
        bootstrap_high=float(np.percentile(boot, 97.5)),
        bootstrap_mean=float(boot.mean()),
    )
