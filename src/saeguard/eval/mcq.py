"""Scoring multiple-choice questions with or without a guard (docs/method.md §5).

Two batched scorers over one shared prompt per question (the question with all
four options listed, in the chat template):
- ``letter``: next-token probability of A-D after "Answer: (" (max of "A"/" A");
- ``cloze``: length-normalised log-likelihood of each option's text after
  "Answer:", for small models that answer lettered questions near chance. The
  prompt runs once; its KV cache is expanded to the four options, which are
  scored as continuations (about 4x fewer prompt tokens than one row per option).
With a guard the gate reads only the user's tokens of the shared prompt and
decides once per question (``token_scope(..., freeze=True)``), so every option
is judged under the same decision; option tokens are clamped iff it flagged.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from saeguard.core.calibration import gate_rho
from saeguard.core.gate import token_scope
from saeguard.errors import require
from saeguard.eval.common import guard_identity
from saeguard.eval.items import (
    McqItem,
    Scorer,
    SharedPrompt,
    as_items,
    items_fingerprint,
    letter_token_ids,
    option_ids,
    shared_prompt,
)
from saeguard.eval.score import wilson_interval
from saeguard.hf.corpus import TokenBatch, counted_mask, pad_batch, pad_token_id, special_token_ids
from saeguard.hf.fingerprint import model_identity
from saeguard.hf.layers import max_positions, model_device
from saeguard.io import write_json
from saeguard.progress import progress_bar

Normalization = Literal["tokens", "none"]


if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail


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


@dataclass
class McqResult:
    """One evaluation of one MCQ set; carries its config so it describes itself."""

    dataset: str
    dataset_fingerprint: str
    config: McqConfig
    model: dict[str, str]
    guard: dict[str, Any] | None
    n_items: int
    accuracy: float
    flagged_fraction: float | None
    predictions: list[McqPrediction] = field(default_factory=list)
    reused_base: int = 0  # items whose prediction was taken from the unguarded run (not flagged)
    seconds: float = 0.0
    n_correct: int = 0  # questions answered correctly: accuracy = n_correct / n_items
    accuracy_interval: list[float] = field(default_factory=list)  # Wilson 95% [low, high] of accuracy
    kind: str = "saeguard-mcq"
    version: int = 1

    @property
    def correct(self) -> int:
        """Number of questions answered correctly."""
        return sum(p.correct for p in self.predictions)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON to ``path`` atomically; returns ``path``."""
        return write_json(path, self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> McqResult:
        """Rebuild from the JSON :meth:`save` wrote; fields are not validated (saeguard's own files)."""
        fields = dict(data)
        fields["config"] = McqConfig(**fields["config"])
        fields["predictions"] = [McqPrediction(**p) for p in fields.get("predictions", [])]
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path) -> McqResult:
        """Read a result file :meth:`save` wrote."""
        return cls.from_dict(json.loads(Path(path).read_text()))


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
    was_training = model.training
    model.eval()
    out: list[McqPrediction] = []
    try:
        with guard.attached(model) if guard is not None else nullcontext() as hook:
            if hook is not None:
                hook.recording = True
            with progress_bar(
                description, total=len(items), unit="questions", enabled=show_progress
            ) as advance:
                for start in range(0, len(items), config.batch_size):
                    batch = items[start : start + config.batch_size]
                    out.extend(scorer(model, tokenizer, batch, config, hook))
                    advance(len(batch))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def gate_decisions(
    model: nn.Module, tokenizer, guard, items: Sequence[McqItem], config: McqConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho, flagged) per question from a forward to the hook layer only: cheap to sweep.

    Both (n,): rho float64 over the user's tokens of the shared prompt, flagged bool (rho > tau).

    Raises:
        SaeguardError: a question whose prompt has no counted user token.
    """
    config = config or McqConfig()
    special = special_token_ids(tokenizer)
    prompts = [
        shared_prompt(tokenizer, it, config.scorer, chat=config.chat, system=config.system) for it in items
    ]

    def batches():
        for start in range(0, len(prompts), config.batch_size):
            group = prompts[start : start + config.batch_size]
            ids, mask = pad_batch([p.ids for p in group], pad_token_id(tokenizer), left=True)
            scope, _ = pad_batch([[int(c) for c in p.user_mask] for p in group], 0, left=True)
            yield TokenBatch(ids, mask, counted_mask(ids, mask, special) & scope.bool())

    rho = gate_rho(
        model,
        guard.layer,
        guard.latents,
        batches(),
        statistic=guard.statistic,
        rule=guard.rule,
        show_progress=False,
    )
    require(rho.numel() == len(items), "a question has no counted user tokens: check the chat template")
    return rho, rho > guard.tau


def evaluate_mcq(
    model: nn.Module,
    tokenizer,
    items: Sequence[McqItem | Mapping[str, Any]],
    *,
    guard: Guardrail | None = None,
    config: McqConfig | None = None,
    dataset: str = "mcq",
    base: McqResult | None = None,
    output: str | Path | None = None,
    show_progress: bool = True,
) -> McqResult:
    """Accuracy of the (guarded) model on ``items``; one self-describing result.

    With ``base`` (the unguarded result on the same items and config) and a
    dynamic gate, only the questions the gate flags are re-scored: unflagged
    questions are never clamped, so their prediction is the base one. This makes
    sweeps cheap. A guard with gate="always" ignores ``base``. ``output`` (optional)
    receives the result as JSON.

    Raises:
        SaeguardError: no items, malformed items, a bad config, or a ``base`` scored with
            another config, with a guard, or on other items.
    """
    started = time.perf_counter()
    config = config or McqConfig()
    config.validate()
    items = as_items(items, source=dataset)
    require(bool(items), f"{dataset}: no items to evaluate (an empty known set?): nothing to measure")
    reused = 0
    # Only a per-input gate leaves unflagged questions untouched; a guard that
    # clamps wherever a latent fires (gate="always") must re-score everything.
    if guard is not None and base is not None and guard.config.gate == "dynamic":
        predictions, reused = _reuse_base(
            model, tokenizer, items, guard, config, base, show_progress, dataset
        )
    else:
        predictions = score_items(
            model,
            tokenizer,
            items,
            config,
            guard=guard,
            show_progress=show_progress,
            description=f"scoring {dataset}{' (guarded)' if guard is not None else ''}",
        )
    flags = [p.flagged for p in predictions if p.flagged is not None]
    n_correct = sum(p.correct for p in predictions)
    result = McqResult(
        dataset=dataset,
        dataset_fingerprint=items_fingerprint(items),
        config=config,
        model=model_identity(model),
        guard=guard_identity(guard),
        n_items=len(items),
        accuracy=n_correct / len(predictions),
        flagged_fraction=(sum(flags) / len(flags)) if guard is not None else None,
        predictions=predictions,
        reused_base=reused,
        seconds=time.perf_counter() - started,
        n_correct=n_correct,
        accuracy_interval=list(wilson_interval(n_correct, len(predictions))),
    )
    if output is not None:
        result.save(output)
    return result


def _reuse_base(model, tokenizer, items, guard, config, base: McqResult, show_progress, dataset):
    require(
        asdict(base.config) == asdict(config) and base.guard is None,
        "base result was scored with another config or with a guard: rerun it unguarded with this config",
    )
    by_id = {p.id: p for p in base.predictions}
    require(
        all(it.id in by_id for it in items),
        f"{dataset}: base result lacks some of these items: evaluate the base on the same items",
    )
    rho, flagged = gate_decisions(model, tokenizer, guard, items, config)
    chosen = [it for it, f in zip(items, flagged.tolist(), strict=True) if f]
    rescored = iter(
        score_items(
            model,
            tokenizer,
            chosen,
            config,
            guard=guard,
            show_progress=show_progress,
            description=f"scoring {dataset} (guarded, the questions the gate flagged)",
        )
    )
    out = []
    for item, flag, value in zip(items, flagged.tolist(), rho.tolist(), strict=True):
        if flag:
            out.append(next(rescored))
        else:
            copy = McqPrediction(**asdict(by_id[item.id]))
            copy.flagged, copy.rho = False, float(value)
            copy.option_flagged = [False] * len(item.choices) if config.scorer == "cloze" else None
            out.append(copy)
    return out, len(items) - len(chosen)
