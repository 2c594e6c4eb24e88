"""The letter and cloze scorers: batched forwards over one shared prompt per question (method.md §5).

Two scorers over one shared prompt per question (the question with all four
options listed, in the chat template):
- ``letter``: next-token probability of A-D after "Answer: (" (max of "A"/" A");
- ``cloze``: length-normalised log-likelihood of each option's text after
  "Answer:", for small models that answer lettered questions near chance. The
  prompt runs once; its KV cache is expanded to the four options, which are
  scored as continuations (about 4x fewer prompt tokens than one row per option).
With a guard the gate reads only the user's tokens of the shared prompt and
decides once per question (``token_scope(..., freeze=True)``), so every option
is judged under the same decision; option tokens are clamped iff it flagged.
:func:`score_items` runs them; ``eval/mcq.py`` turns predictions into results.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from saeguard.core.gate import token_scope
from saeguard.errors import require
from saeguard.eval.items import McqItem, Scorer, SharedPrompt, letter_token_ids, option_ids, shared_prompt
from saeguard.hf.corpus import counted_mask, pad_batch, pad_token_id, special_token_ids
from saeguard.hf.layers import max_positions, model_device
from saeguard.progress import progress_bar

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail

Normalization = Literal["tokens", "none"]


@dataclass
class McqConfig:
    """How questions are rendered and scored."""

    scorer: Scorer = "letter"
    batch_size: int = 8
    chat: bool = True
    system: str | None = None
    normalization: Normalization = "tokens"  # cloze: mean log-prob per option token, or the sum

    def validate(self) -> None:
        """Raise ``SaeguardError`` on an unknown scorer or normalization, or ``batch_size`` < 1."""
        require(self.scorer in ("letter", "cloze"), f"unknown scorer {self.scorer!r}: use letter or cloze")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        require(
            self.normalization in ("tokens", "none"),
            f"unknown normalization {self.normalization!r}: use tokens or none",
        )


@dataclass
class McqPrediction:
    """One question's scores over its four options, the prediction, and (guarded) the gate's decision."""

    id: str
    answer: int
    prediction: int
    correct: bool
    scores: list[float]  # letter: log-prob of each letter; cloze: (normalised) log-likelihood
    probabilities: list[float]  # softmax of the scores over the four options
    flagged: bool | None = None  # the gate's decision for this question (None: no guard)
    rho: float | None = None  # the gate statistic on the shared prompt
    option_flagged: list[bool] | None = None  # cloze: the decision seen by each option's row


# -- the batched forward ------------------------------------------------------
@dataclass
class _Prefill:
    """The shared prompts' forward: next-token log-probs, the gate's decision, the KV cache."""

    log_probs: torch.Tensor  # (B, V) after the last prompt token
    mask: torch.Tensor  # (B, T) left-padded attention mask of the prompts
    cache: Any  # the prompts' KV cache (None unless asked for)
    flagged: torch.Tensor | None  # (B,) the gate's decision (None: no guard)
    rho: torch.Tensor | None  # (B,) rho over the prompt's counted (user) tokens


def _logits_to_keep(model: nn.Module, keep: int) -> dict[str, int]:
    """Ask for the last ``keep`` positions' logits only, when the model supports it (no (B, T, V))."""
    return {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _cache_argument(model: nn.Module) -> str:
    """transformers 5 calls the KV cache ``cache``; older or remote-code models ``past_key_values``.

    Named from the signature: a wrong name would vanish into ``**kwargs`` and the
    options would be scored without their prompt.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def _prefill(model: nn.Module, tokenizer, prompts: Sequence[SharedPrompt], hook, *, cache: bool) -> _Prefill:
    """Left-padded forward of the prompts; the gate decides on each prompt's user tokens."""
    device = model_device(model)
    ids, mask = pad_batch([p.ids for p in prompts], pad_token_id(tokenizer), left=True)
    _check_length(model, int(ids.shape[1]), "a question's prompt")
    scope, _ = pad_batch([[int(c) for c in p.user_mask] for p in prompts], 0, left=True)
    counted = counted_mask(ids, mask, special_token_ids(tokenizer)) & scope.bool()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if hook is not None:
        hook.records.clear()
    with token_scope(counted.to(device), freeze=True):
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=cache,
            **_logits_to_keep(model, 1),
        )
    log_probs = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()
    flagged = rho = None
    if hook is not None:  # the prompt-only record: rho counts the user's tokens, never an option's
        flagged, rho = hook.records[-1].flagged.cpu().bool(), hook.records[-1].rho.cpu()
    kv = getattr(out, "cache", None)
    kv = getattr(out, "past_key_values", None) if kv is None else kv
    return _Prefill(log_probs, mask, kv if cache else None, flagged, rho)


@torch.no_grad()
def _continuations(
    model: nn.Module, tokenizer, prefill: _Prefill, options: Sequence[Sequence[int]], hook
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per option row, log p(token j + 1 | prompt, tokens <= j), read from the prompts' expanded cache.

    ``options`` holds n rows per prompt, in prompt order. Each row feeds its
    option minus the last token (only ever predicted), right-padded after the
    left-padded prompts: positions continue from the row's own prompt length,
    and padding comes after every real token, so no real token attends to it.
    Under ``freeze`` each row inherits its prompt's decision (the gate repeats
    its per-row state with the cache). Also returns each row's decision.
    """
    n = len(options) // prefill.mask.shape[0]
    inputs = [list(o[:-1]) for o in options]
    if max(len(o) for o in inputs) == 0:  # single-token options: the prompt's logits score them all
        flags = prefill.flagged.repeat_interleave(n) if prefill.flagged is not None else None
        return torch.zeros(len(options), 0), flags
    cache = prefill.cache
    require(
        hasattr(cache, "batch_repeat_interleave"),
        f"{type(model).__name__} returns no expandable KV cache: the cloze scorer needs a transformers Cache",
    )
    cache.batch_repeat_interleave(n)
    device = model_device(model)
    ids, option_mask = pad_batch(inputs, pad_token_id(tokenizer))
    targets, _ = pad_batch([o[1:] for o in options], pad_token_id(tokenizer))
    prompt_mask = prefill.mask.repeat_interleave(n, 0)
    positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(ids.shape[1]).unsqueeze(0)
    _check_length(model, int(positions.max()) + 1, "a question's prompt plus its longest option")
    with token_scope(freeze=True):
        logits = model(
            input_ids=ids.to(device),
            attention_mask=torch.cat([prompt_mask, option_mask], dim=1).to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **{_cache_argument(model): cache},
        ).logits.float()
    flagged = hook.records[-1].flagged.cpu().bool() if hook is not None else None
    # gather minus logsumexp: the log-probs of the targets without a (rows, T, V) log_softmax copy
    chosen = logits.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)
    return (chosen - logits.logsumexp(-1)).cpu(), flagged


def _check_length(model: nn.Module, length: int, what: str) -> None:
    limit = max_positions(model)
    require(
        limit is None or length <= limit,
        f"{what} is {length} tokens, over the model's {limit} positions: shorten the question or its "
        "options, or drop the item",
    )


def _prediction(item: McqItem, scores: torch.Tensor) -> McqPrediction:
    prediction = int(torch.argmax(scores))
    return McqPrediction(
        id=item.id,
        answer=item.answer,
        prediction=prediction,
        correct=prediction == item.answer,
        scores=[float(s) for s in scores],
        probabilities=[float(p) for p in torch.softmax(scores.double(), -1)],
    )


def _score_letter(model, tokenizer, items: Sequence[McqItem], config: McqConfig, hook) -> list[McqPrediction]:
    letters = letter_token_ids(tokenizer)
    prompts = [shared_prompt(tokenizer, it, "letter", chat=config.chat, system=config.system) for it in items]
    prefill = _prefill(model, tokenizer, prompts, hook, cache=False)
    out = []
    for index, item in enumerate(items):
        scores = torch.stack([prefill.log_probs[index, variants].max() for variants in letters])
        pred = _prediction(item, scores)
        if prefill.flagged is not None and prefill.rho is not None:
            pred.flagged, pred.rho = bool(prefill.flagged[index]), float(prefill.rho[index])
        out.append(pred)
    return out


def _score_cloze(model, tokenizer, items: Sequence[McqItem], config: McqConfig, hook) -> list[McqPrediction]:
    """Prefill each shared prompt once, then score its options as continuations of its cache."""
    prompts = [shared_prompt(tokenizer, it, "cloze", chat=config.chat, system=config.system) for it in items]
    options: list[list[int]] = []
    for item, prompt in zip(items, prompts, strict=True):
        for k, choice in enumerate(item.choices):
            cont = option_ids(tokenizer, prompt, choice)
            require(
                bool(cont) and bool(choice.strip()),
                f"question {item.id!r} option {k} is empty: cloze cannot score it, use the letter scorer",
            )
            options.append(cont)
    prefill = _prefill(model, tokenizer, prompts, hook, cache=True)
    # Option tokens are clamped iff their question was flagged; they never change the decision.
    next_log_probs, option_flags = _continuations(model, tokenizer, prefill, options, hook)
    n = len(options) // len(items)
    out = []
    for index, item in enumerate(items):
        scores = []
        for k in range(n):
            row = index * n + k
            targets = options[row]
            # option token 0 is predicted by the prompt's last position, token j by option token j - 1
            token_lp = prefill.log_probs[index, targets[0]] + next_log_probs[row, : len(targets) - 1].sum()
            scores.append(token_lp / len(targets) if config.normalization == "tokens" else token_lp)
        pred = _prediction(item, torch.stack(scores))
        if prefill.flagged is not None and prefill.rho is not None and option_flags is not None:
            pred.flagged, pred.rho = bool(prefill.flagged[index]), float(prefill.rho[index])
            pred.option_flagged = [bool(option_flags[index * n + k]) for k in range(n)]
        out.append(pred)
    return out


def score_items(
    model: nn.Module,
    tokenizer,
    items: Sequence[McqItem],
    config: McqConfig | None = None,
    *,
    guard: Guardrail | None = None,
    show_progress: bool = False,
    description: str = "MCQ",
) -> list[McqPrediction]:
    """Predictions for every item, batched; the guard (if any) is attached for the call.

    The model is put in eval mode for the call and its mode restored after.

    Raises:
        SaeguardError: a bad ``config``, or (letter scorer) a tokenizer that splits a letter.
    """
    config = config or McqConfig()
    config.validate()
    scorer = _score_letter if config.scorer == "letter" else _score_cloze
    # Batches of similar length pad less; a prediction does not depend on its batch.
    order = sorted(range(len(items)), key=lambda i: _item_length(items[i]))
    was_training = model.training
    model.eval()
    out: dict[int, McqPrediction] = {}
    try:
        with guard.attached(model) if guard is not None else nullcontext() as hook:
            if hook is not None:
                hook.recording = True
            with progress_bar(
                description, total=len(items), unit="questions", enabled=show_progress
            ) as advance:
                for start in range(0, len(items), config.batch_size):
                    chosen = order[start : start + config.batch_size]
                    batch = [items[i] for i in chosen]
                    out.update(zip(chosen, scorer(model, tokenizer, batch, config, hook), strict=True))
                    advance(len(batch))
    finally:
        model.train(was_training)
    return [out[i] for i in range(len(items))]


def _item_length(item: McqItem) -> int:
    """Characters of the question and its options: a cheap stand-in for its padded length."""
    return len(item.question) + sum(len(c) for c in item.choices)
