"""Held-out text metrics: loss with and without the guard, and how often the gate fires.

Loss says what the guard costs on ordinary text (retain) and what it does to the
forget topic; the firing rate (fraction of inputs with rho > tau) on held-out
forget, retain and near-domain text says whether the gate generalises beyond its
calibration set. Firing inputs are shaped like calibration inputs (prompt-sized
pieces in the chat template, user tokens only), because rho depends on the shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from saeguard.config import PromptShape
from saeguard.core.calibration import guard_prompt_rho
from saeguard.core.statistics import token_batches
from saeguard.errors import require
from saeguard.eval.common import guard_identity
from saeguard.hf.corpus import CorpusSpec, iter_chunks, iter_documents
from saeguard.hf.fingerprint import model_identity
from saeguard.hf.layers import model_device
from saeguard.io import write_json
from saeguard.progress import progress_bar

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail


@dataclass
class TextConfig:
    """Held-out text settings: chunking for the loss, prompt shape and count for the firing rate."""

    seq_len: int = 256
    batch_size: int = 4
    max_chunks: int = 32  # per corpus, for the loss
    prompt_min_tokens: int = 8
    prompt_max_tokens: int = 64
    prompt_limit: int = 256  # per corpus, for the firing rate
    chat: bool = True
    seed: int = 0


@dataclass
class LossMetrics:
    """Mean next-token loss (nats per counted target token) and perplexity, unguarded and guarded."""

    sequences: int
    tokens: int
    base_loss: float
    guarded_loss: float | None
    base_perplexity: float
    guarded_perplexity: float | None
    flagged_fraction: float | None  # chunks the gate flagged (decision over the whole chunk)


@dataclass
class FiringMetrics:
    """How often the gate flags ``count`` prompt-shaped inputs of one corpus, and their rho values."""

    count: int
    flagged_fraction: float
    mean_rho: float
    rho: list[float] = field(default_factory=list)


@dataclass
class TextMetricsResult:
    """Loss and firing metrics per named corpus, with the model and guard they were measured on."""

    config: TextConfig
    model: dict[str, str]
    guard: dict[str, Any] | None
    tau: float | None
    loss: dict[str, LossMetrics]
    firing: dict[str, FiringMetrics]
    seconds: float = 0.0
    kind: str = "saeguard-text-metrics"
    version: int = 1

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON to ``path`` atomically; returns ``path``."""
        return write_json(path, self)


def _named(corpora: Mapping[str, CorpusSpec | None]) -> dict[str, list[str]]:
    out = {}
    for name, spec in corpora.items():
        if spec is None:
            continue
        docs = list(iter_documents(spec))
        require(bool(docs), f"the {name} text corpus is empty: give it at least one document")
        out[name] = docs
    return out


@torch.no_grad()
def corpus_loss(
    model: nn.Module,
    tokenizer,
    documents: list[str],
    config: TextConfig,
    *,
    guard: Guardrail | None = None,
    description: str = "loss",
    show_progress: bool = False,
) -> tuple[float, int, int, float | None]:
    """(mean next-token loss, tokens, chunks, flagged fraction) over non-special targets.

    Loss in nats per counted target token; the flagged fraction is over chunks and
    is None without a guard.

    Raises:
        SaeguardError: no scorable token in ``documents``.
    """
    device = model_device(model)
    chunks = iter_chunks(documents, tokenizer, config.seq_len, max_chunks=config.max_chunks)
    nll, tokens, rows, flagged = 0.0, 0, 0, 0
    with (
        guard.attached(model) if guard is not None else nullcontext() as hook,
        progress_bar(description, enabled=show_progress) as advance,
    ):
        if hook is not None:
            hook.recording = True
        for batch in token_batches(chunks, tokenizer, config.batch_size):
            if hook is not None:
                hook.records.clear()
            ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            targets = ids[:, 1:]
            keep = batch.counted[:, 1:].to(device)
            losses = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
            nll += float(losses[keep].double().sum())
            tokens += int(keep.sum())
            rows += int(ids.shape[0])
            if hook is not None:
                flagged += int(hook.records[-1].flagged.sum())
            advance(int(ids.shape[0]))
    require(tokens > 0, f"{description}: no scorable tokens: give the corpus real text")
    return nll / tokens, tokens, rows, (flagged / rows if guard is not None else None)


def firing_rates(
    model: nn.Module,
    tokenizer,
    guard: Guardrail,
    corpora: Mapping[str, CorpusSpec | list[str]],
    config: TextConfig | None = None,
    *,
    show_progress: bool = False,
) -> dict[str, FiringMetrics]:
    """Fraction of prompt-shaped inputs whose rho exceeds tau, per corpus (forward to the hook layer only)."""
    config = config or TextConfig()
    out = {}
    for name, docs in _named(corpora).items():
        shape = PromptShape(
            min_tokens=config.prompt_min_tokens,
            max_tokens=config.prompt_max_tokens,
            limit=config.prompt_limit,
            seed=config.seed,
            chat=config.chat,
        )
        rho = guard_prompt_rho(
            model,
            tokenizer,
            guard,
            docs,
            shape,
            batch_size=config.batch_size,
            description=f"{name} rho",
            show_progress=show_progress,
        ).double()
        require(rho.numel() > 0, f"the {name} corpus gave no prompt: give it real text")
        out[name] = FiringMetrics(
            count=int(rho.numel()),
            flagged_fraction=float((rho > guard.tau).double().mean()),
            mean_rho=float(rho.mean()),
            rho=[float(v) for v in rho],
        )
    return out


def text_metrics(
    model: nn.Module,
    tokenizer,
    guard: Guardrail | None = None,
    *,
    forget: CorpusSpec | None = None,
    retain: CorpusSpec | None = None,
    near: Mapping[str, CorpusSpec] | CorpusSpec | None = None,
    config: TextConfig | None = None,
    output: str | Path | None = None,
    show_progress: bool = True,
) -> TextMetricsResult:
    """Loss on held-out forget/retain text (guarded vs not) and gate firing rates.

    ``near`` is near-domain text (one corpus or ``{name: corpus}``): where false
    positives live. Pass held-out text, not the text the guard was fitted on.
    """
    started = time.perf_counter()
    config = config or TextConfig()
    corpora: dict[str, CorpusSpec | None] = {"forget": forget, "retain": retain}
    if isinstance(near, Mapping):
        corpora.update({f"near:{k}": v for k, v in near.items()})
    elif near is not None:
        corpora["near"] = near
    docs = _named(corpora)
    require(bool(docs), "text_metrics needs at least one corpus (forget, retain or near)")
    loss: dict[str, LossMetrics] = {}
    was_training = model.training
    model.eval()
    try:
        for name in ("forget", "retain"):
            if name not in docs:
                continue
            base, tokens, rows, _ = corpus_loss(
                model, tokenizer, docs[name], config, description=f"{name} loss", show_progress=show_progress
            )
            guarded, flagged = None, None
            if guard is not None:
                guarded, _, _, flagged = corpus_loss(
                    model,
                    tokenizer,
                    docs[name],
                    config,
                    guard=guard,
                    description=f"{name} loss (guarded)",
                    show_progress=show_progress,
                )
            loss[name] = LossMetrics(
                sequences=rows,
                tokens=tokens,
                base_loss=base,
                guarded_loss=guarded,
                base_perplexity=math.exp(base),
                guarded_perplexity=math.exp(guarded) if guarded is not None else None,
                flagged_fraction=flagged,
            )
        firing = (
            firing_rates(model, tokenizer, guard, docs, config, show_progress=show_progress)
            if guard is not None
            else {}
        )
    finally:
        model.train(was_training)
    result = TextMetricsResult(
        config=config,
        model=model_identity(model),
        guard=guard_identity(guard),
        tau=float(guard.tau) if guard is not None else None,
        loss=loss,
        firing=firing,
        seconds=time.perf_counter() - started,
    )
    if output is not None:
        result.save(output)
    return result
