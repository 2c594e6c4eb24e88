"""MUSE-style unlearning metrics (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation").

On any forget / retain / holdout text, for a model with or without a guard:

* **VerbMem** (verbatim memorisation): greedy continuation of the first ``prefix_tokens``
  tokens of a forget passage, scored by ROUGE-L F1 (``rouge-score``) against the true next
  ``continuation_tokens`` tokens. Lower = less memorised.
* **KnowMem** (knowledge memorisation): cloze questions built from the text without an LLM
  (:func:`cloze_questions`: a sentence with one recurring capitalised name blanked, the
  answer is the name), answered few-shot; exact-match accuracy and ROUGE-L F1 of the answer.
  On forget text lower is better; on retain text it should stay. Shots come from documents of
  one split, questions from the other (``data.corpora.split_of``), so no question is its own shot.
* **PrivLeak** (privacy leakage): membership-inference AUC of Min-K%++ scores (Zhang et al.
  2024) on forget text (members) vs holdout text; MUSE normalises it against a reference model
  that never saw the forget text, ``(AUC - AUC_ref) / AUC_ref``; without a reference the raw AUC
  is reported (``privleak`` None). 0 (or AUC_ref) is ideal: negative = over-unlearned.
* **Fluency** of generated text (issue 16 §4): perplexity of the outputs under a model
  (pass the unguarded one) given their prompts, and distinct-n (Li et al. 2016), so
  degenerate "of to of to" outputs are visible beside forgetting.

This module runs the model (greedy generation, the KnowMem questions, :func:`muse_metrics`);
the scores it applies (ROUGE-L, Min-K%++, AUC, PrivLeak, fluency) are ``eval.muse_scores``,
the texts it reads (passages, cloze questions, the Books setting) ``eval.muse_data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from saeguard.core.gate import token_scope
from saeguard.errors import require
from saeguard.eval.mcq import McqConfig, evaluate_mcq
from saeguard.eval.muse_data import (
    KnowMemSet,
    MuseData,
    MuseSizes,
    choice_items,
    first_answer,
    knowmem_prompt,
)
from saeguard.eval.muse_scores import (
    Fluency,
    auc,
    generation_fluency,
    min_k_plus_plus,
    privleak,
    rouge_l_f1,
)
from saeguard.hf.corpus import pad_token_id
from saeguard.hf.layers import model_device
from saeguard.hf.prompts import encode_prompts

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail


@dataclass
class MuseConfig:
    """What the metrics read (``sizes``) and how they run (defaults sized for a 135M model on 2 CPU cores)."""

    sizes: MuseSizes = field(default_factory=MuseSizes)
    answer_tokens: int = 6  # generated per KnowMem answer
    privleak_tokens: int = 128  # Min-K%++ reads at most this many tokens per text
    min_k: float = 0.2  # Min-K%++: mean of the lowest 20% token scores
    batch_size: int = 8

    def __post_init__(self) -> None:
        require(self.answer_tokens >= 1 and self.privleak_tokens >= 2, "MuseConfig lengths must be positive")
        require(self.batch_size >= 1, f"MuseConfig.batch_size must be at least 1, got {self.batch_size}")
        require(0.0 < self.min_k <= 1.0, f"MuseConfig.min_k must be in (0, 1], got {self.min_k}")


# -- running models ----------------------------------------------------------------------
@torch.no_grad()
def greedy_completions(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    guard: Guardrail | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Greedy continuations of plain-text ``prompts`` (no chat template), guarded when ``guard`` is given.

    The gate judges each prompt (every non-special token counts) and follows the generated
    tokens, as :meth:`Guardrail.generate` does.
    """
    device = model_device(model)
    pad = pad_token_id(tokenizer)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = encode_prompts(tokenizer, list(prompts[start : start + batch_size]), chat=False)
        attached = guard.attached(model) if guard is not None else nullcontext()
        with attached, token_scope(encoded.content_mask.to(device)):
            ids = cast(Any, model).generate(  # a transformers GenerationMixin
                input_ids=encoded.input_ids.to(device),
                attention_mask=encoded.attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        out += tokenizer.batch_decode(ids[:, encoded.prompt_length :], skip_special_tokens=True)
    return out


@dataclass
class KnowMemScore:
    """Cloze questions: generated answers (MUSE) and a four-name likelihood choice (for small models).

    ``accuracy`` is the exact match of the generated answer's first word, ``rouge`` the mean ROUGE-L
    F1 of the answer line; ``choice_accuracy`` the share of ``choice_questions`` where the true name
    is the likeliest of four names from the same text (``eval.mcq`` cloze scorer, chance 0.25).
    """

    questions: int
    accuracy: float
    rouge: float
    choice_accuracy: float
    choice_questions: int
    answers: list[str] = field(default_factory=list)


@dataclass
class MuseMetrics:
    """One model (with or without a guard) on one :class:`MuseData`.

    ``verbmem`` is mean ROUGE-L F1 over passages; ``privleak_auc`` the Min-K%++ AUC of forget
    (members) vs holdout; ``privleak`` is normalised by a reference AUC, None without one;
    ``fluency`` describes the VerbMem continuations (perplexity under ``fluency_model``).
    """

    verbmem: float
    verbmem_samples: int
    knowmem_forget: KnowMemScore
    knowmem_retain: KnowMemScore
    privleak_auc: float
    privleak: float | None
    privleak_samples: int
    fluency: Fluency
    continuations: list[str] = field(default_factory=list)
    member_scores: list[float] = field(default_factory=list)
    nonmember_scores: list[float] = field(default_factory=list)


def _knowmem(
    model: nn.Module, tokenizer: Any, known: KnowMemSet, config: MuseConfig, guard: Guardrail | None
) -> KnowMemScore:
    prompts = [knowmem_prompt(known.shots, q) for q in known.questions]
    generated = greedy_completions(
        model, tokenizer, prompts, config.answer_tokens, guard=guard, batch_size=config.batch_size
    )
    answers = [g.strip().split("\n", 1)[0] for g in generated]
    truth = [q.answer for q in known.questions]
    hits = [first_answer(a).lower() == t.lower() for a, t in zip(answers, truth, strict=True)]
    rouge = [rouge_l_f1(a, t) for a, t in zip(answers, truth, strict=True)]
    items = choice_items(known, config.sizes.seed)
    chosen = (
        evaluate_mcq(
            model,
            tokenizer,
            items,
            guard=guard,
            config=McqConfig(scorer="cloze", batch_size=config.batch_size),
            dataset="knowmem",
            show_progress=False,
        ).accuracy
        if items
        else float("nan")
    )
    return KnowMemScore(
        len(truth), sum(hits) / len(hits), sum(rouge) / len(rouge), chosen, len(items), answers
    )


def muse_metrics(
    model: nn.Module,
    tokenizer: Any,
    data: MuseData,
    *,
    guard: Guardrail | None = None,
    config: MuseConfig | None = None,
    reference_auc: float | None = None,
    fluency_model: nn.Module | None = None,
) -> MuseMetrics:
    """VerbMem, KnowMem (forget and retain), PrivLeak and the continuations' fluency of one model.

    Args:
        guard: measure ``model`` with this guard attached (DSG); None: the model as it is.
        reference_auc: Min-K%++ AUC of a model that never saw the forget text (MUSE's retrained
            model), to normalise PrivLeak; None reports the raw AUC only.
        fluency_model: scores the continuations' perplexity; default ``model`` without a guard
            (pass the original model when ``model`` is an unlearned copy).
    """
    config = config or MuseConfig()
    was_training = model.training
    model.eval()
    try:
        prefixes = [prefix for prefix, _ in data.passages]
        continuations = greedy_completions(
            model,
            tokenizer,
            prefixes,
            config.sizes.continuation_tokens,
            guard=guard,
            batch_size=config.batch_size,
        )
        truth = [rest for _, rest in data.passages]
        verbmem = [rouge_l_f1(c, t) for c, t in zip(continuations, truth, strict=True)]
        scores = {
            side: min_k_plus_plus(
                model,
                tokenizer,
                texts,
                k=config.min_k,
                max_tokens=config.privleak_tokens,
                guard=guard,
                batch_size=config.batch_size,
            )
            for side, texts in (("members", data.members), ("nonmembers", data.nonmembers))
        }
        area = auc(scores["members"], scores["nonmembers"])
        return MuseMetrics(
            verbmem=sum(verbmem) / len(verbmem),
            verbmem_samples=len(verbmem),
            knowmem_forget=_knowmem(model, tokenizer, data.knowmem_forget, config, guard),
            knowmem_retain=_knowmem(model, tokenizer, data.knowmem_retain, config, guard),
            privleak_auc=area,
            privleak=privleak(area, reference_auc),
            privleak_samples=len(data.members),
            fluency=generation_fluency(
                fluency_model or model, tokenizer, prefixes, continuations, batch_size=config.batch_size
            ),
            continuations=continuations,
            member_scores=scores["members"],
            nonmember_scores=scores["nonmembers"],
        )
    finally:
        model.train(was_training)
