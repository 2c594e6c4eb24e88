"""The scores behind the MUSE-style metrics (``eval.muse``): text overlap, membership inference, fluency.

* :func:`rouge_l_f1`: ROUGE-L F1 of a generation vs a reference (``rouge-score``; MUSE's
  VerbMem and KnowMem score).
* :func:`min_k_plus_plus`: the Min-K%++ membership score of a text under a model (Zhang et
  al. 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data from LLMs"), and
  :func:`auc` / :func:`privleak`: the membership-inference AUC of members vs non-members and
  MUSE's normalisation of it against a reference model (Shi et al. 2024, §3).
* :func:`generation_fluency` and :func:`distinct_n`: how fluent generated text is
  (perplexity under a scoring model given the prompt; distinct-n, Li et al. 2016), so
  degenerate "of to of to" outputs are visible beside forgetting (issue 16 §4).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from saeguard.errors import require
from saeguard.hf.corpus import counted_mask, pad_batch, pad_token_id, special_token_ids
from saeguard.hf.layers import model_device
from saeguard.hf.prompts import encode_prompts

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail


# -- text scores ------------------------------------------------------------------------------
@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` vs ``reference`` (``rouge-score``: lower-cased alphanumeric words)."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """ROC AUC of scores that should be higher for members: P(m > n) + P(m = n) / 2 over all pairs.

    Computed as the Mann-Whitney U of the members over ``len(members) * len(nonmembers)``
    (``scipy.stats.mannwhitneyu``).

    Raises:
        SaeguardError: either side is empty.
    """
    from scipy.stats import mannwhitneyu

    require(len(members) > 0 and len(nonmembers) > 0, "AUC needs member and non-member scores")
    u = mannwhitneyu(
        np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    ).statistic
    return float(u) / (len(members) * len(nonmembers))


def privleak(auc_model: float, auc_reference: float | None) -> float | None:
    """MUSE's PrivLeak ``(AUC - AUC_ref) / AUC_ref``; None without a reference AUC."""
    if auc_reference is None:
        return None
    require(auc_reference > 0, "the reference AUC must be positive")
    return (auc_model - auc_reference) / auc_reference


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (lower-cased, whitespace words)."""
    grams = [
        tuple(words[i : i + n])
        for words in (t.lower().split() for t in texts)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


# -- likelihood scores ----------------------------------------------------------------
def _scored_batches(
    tokenizer: Any, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(ids, attention, target mask) batches of context + target ids; the mask marks target tokens."""
    special = special_token_ids(tokenizer)
    for start in range(0, len(pairs), batch_size):
        group = pairs[start : start + batch_size]
        ids, attention = pad_batch([c + t for c, t in group], pad_token_id(tokenizer))
        target = torch.zeros_like(ids, dtype=torch.bool)
        for row, (context, scored) in enumerate(group):
            target[row, len(context) : len(context) + len(scored)] = True
        yield ids, attention, target & counted_mask(ids, attention, special)


@torch.no_grad()
def min_k_plus_plus(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    k: float = 0.2,
    max_tokens: int = 128,
    guard: Guardrail | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Min-K%++ membership score per text (Zhang et al. 2024); higher = more likely seen in training.

    Per token t: ``(log p(x_t) - mu_t) / sigma_t`` with mu_t, sigma_t the mean and standard
    deviation of log p(z) under z ~ p(. | x_<t); the score is the mean of the lowest ``k``
    fraction (at least one) of a text's token scores. Texts are cut to ``max_tokens`` tokens.
    """
    device = model_device(model)
    pairs = []
    for text in texts:
        text_ids = [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]][:max_tokens]
        require(len(text_ids) >= 2, "Min-K%++ needs texts of at least 2 tokens")
        pairs.append((text_ids[:1], text_ids[1:]))
    scores: list[float] = []
    with guard.attached(model) if guard is not None else nullcontext():
        for ids, attention, target in _scored_batches(tokenizer, pairs, batch_size):
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1]
            for row in range(ids.shape[0]):  # one row at a time: (T, V) float64 stays small
                log_probs = F.log_softmax(logits[row].double(), dim=-1)
                token = log_probs.gather(-1, ids[row, 1:].to(device).unsqueeze(-1)).squeeze(-1)
                probs = log_probs.exp()
                mu = (probs * log_probs).sum(-1)
                sigma = ((probs * log_probs.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
                z = ((token - mu) / sigma).cpu()[target[row, 1:]].sort().values
                require(z.numel() > 0, "a Min-K%++ text has no scorable token")
                scores.append(float(z[: max(1, int(k * z.numel()))].mean()))
    return scores


@dataclass
class Fluency:
    """How fluent generated texts are: perplexity under a scoring model given the prompt, and distinct-n."""

    samples: int
    tokens: int
    perplexity: float  # exp(mean NLL per generated token); nan without any token
    distinct_1: float
    distinct_2: float
    perplexities: list[float] = field(default_factory=list)  # per sample (nan for an empty output)


@torch.no_grad()
def generation_fluency(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    outputs: Sequence[str],
    *,
    chat: bool = False,
    batch_size: int = 8,
) -> Fluency:
    """Perplexity of each output given its prompt under ``model`` (pass the unguarded model) and distinct-n.

    ``chat`` encodes prompts with the chat template, as guarded generation did.

    Raises:
        SaeguardError: prompts and outputs differ in number, or there are none.
    """
    require(len(prompts) == len(outputs) > 0, "give one output per prompt, at least one")
    device = model_device(model)
    pairs = []
    for prompt, output in zip(prompts, outputs, strict=True):
        encoded = encode_prompts(tokenizer, [prompt], chat=chat, left_pad=False)
        context = [int(i) for i in encoded.input_ids[0]]
        pairs.append((context, [int(i) for i in tokenizer(output, add_special_tokens=False)["input_ids"]]))
    nll: list[float] = []
    counts: list[int] = []
    for ids, attention, target in _scored_batches(tokenizer, pairs, batch_size):
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1]
        losses = F.cross_entropy(
            logits.float().transpose(1, 2), ids[:, 1:].to(device), reduction="none"
        ).cpu()
        keep = target[:, 1:]
        nll += [float(losses[row][keep[row]].double().sum()) for row in range(ids.shape[0])]
        counts += [int(keep[row].sum()) for row in range(ids.shape[0])]
    tokens = sum(counts)
    return Fluency(
        samples=len(outputs),
        tokens=tokens,
        perplexity=math.exp(sum(nll) / tokens) if tokens else float("nan"),
        distinct_1=distinct_n(outputs, 1),
        distinct_2=distinct_n(outputs, 2),
        perplexities=[math.exp(s / c) if c else float("nan") for s, c in zip(nll, counts, strict=True)],
    )
