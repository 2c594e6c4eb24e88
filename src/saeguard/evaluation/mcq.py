"""Scoring multiple-choice questions with or without a guard (DESIGN §2).

Two batched scorers over one shared prompt per question (the question with all
four options listed, in the chat template):
- ``letter``: next-token probability of A-D after "Answer: (" (max of "A"/" A");
- ``cloze``: length-normalised log-likelihood of each option's text after
  "Answer:", for small models that answer lettered questions near chance.
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

from saeguard.calibration import gate_rho
from saeguard.corpus import TokenBatch, counted_mask, pad_batch, pad_token_id, special_token_ids
from saeguard.errors import require
from saeguard.evaluation.common import guard_identity, model_identity, write_json
from saeguard.evaluation.items import (
    McqItem,
    Scorer,
    as_items,
    items_fingerprint,
    letter_token_ids,
    option_ids,
    shared_prompt,
)
from saeguard.gate import token_scope
from saeguard.layers import model_device
from saeguard.progress import progress_bar

Normalization = Literal["tokens", "none"]


if TYPE_CHECKING:
    from saeguard.guardrail import Guardrail


@dataclass
class McqConfig:
    """How questions are rendered and scored."""

    scorer: Scorer = "letter"
    batch_size: int = 8
    chat: bool = True
    system: str | None = None
    normalization: Normalization = "tokens"  # cloze: mean log-prob per option token, or the sum

    def validate(self) -> None:
        require(self.scorer in ("letter", "cloze"), f"unknown scorer {self.scorer!r}: use letter or cloze")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        require(
            self.normalization in ("tokens", "none"),
            f"unknown normalization {self.normalization!r}: use tokens or none",
        )


@dataclass
class McqPrediction:
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
    kind: str = "saeguard-mcq"
    version: int = 1

    @property
    def correct(self) -> int:
        return sum(p.correct for p in self.predictions)

    def save(self, path: str | Path) -> Path:
        return write_json(path, self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> McqResult:
        fields = dict(data)
        fields["config"] = McqConfig(**fields["config"])
        fields["predictions"] = [McqPrediction(**p) for p in fields.get("predictions", [])]
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path) -> McqResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


# -- the batched forward ------------------------------------------------------
@dataclass
class _Row:
    ids: list[int]
    counted: list[bool]
    prompt_length: int
    continuation: int  # tokens after the shared prompt that are scored (cloze)


def _tail_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions of left-padded rows, without the full (B, T, V)."""
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": positions, "use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = keep
    logits = model(input_ids=ids, **kwargs).logits
    return logits[:, -keep:].float()


@torch.no_grad()
def _forward_rows(
    model: nn.Module, tokenizer, rows: list[_Row], keep: int, hook
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Left-padded forward of the rows under one frozen gate decision per row."""
    device = model_device(model)
    ids, mask = pad_batch([r.ids for r in rows], pad_token_id(tokenizer), left=True)
    scope, _ = pad_batch([[int(c) for c in r.counted] for r in rows], 0, left=True)
    counted = counted_mask(ids, mask, special_token_ids(tokenizer)) & scope.bool()
    width = ids.shape[1]
    end = torch.tensor([width - len(r.ids) + r.prompt_length for r in rows], dtype=torch.long)
    if hook is not None:
        hook.records.clear()
    with token_scope(counted.to(device), end.to(device), freeze=True):
        log_probs = torch.log_softmax(_tail_logits(model, ids.to(device), mask.to(device), keep), -1)
    if hook is None:
        return log_probs.cpu(), None, None
    record = hook.records[-1]
    in_prompt = torch.arange(width).unsqueeze(0) < end.unsqueeze(1)
    prompt_counted = (counted & in_prompt).sum(-1).double()
    prompt_fired = (record.fired.cpu() & in_prompt).sum(-1).double()
    rho = torch.where(prompt_counted > 0, prompt_fired / prompt_counted.clamp(min=1), 0.0)
    return log_probs.cpu(), record.flagged.cpu().bool(), rho


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
    rows = [_Row(p.ids, p.user_mask, len(p.ids), 0) for p in prompts]
    log_probs, flagged, rho = _forward_rows(model, tokenizer, rows, 1, hook)
    last = log_probs[:, -1]
    out = []
    for index, item in enumerate(items):
        scores = torch.stack([last[index, variants].max() for variants in letters])
        pred = _prediction(item, scores)
        if flagged is not None and rho is not None:
            pred.flagged, pred.rho = bool(flagged[index]), float(rho[index])
        out.append(pred)
    return out


def _score_cloze(model, tokenizer, items: Sequence[McqItem], config: McqConfig, hook) -> list[McqPrediction]:
    rows: list[_Row] = []
    for item in items:
        prompt = shared_prompt(tokenizer, item, "cloze", chat=config.chat, system=config.system)
        for k, choice in enumerate(item.choices):
            cont = option_ids(tokenizer, prompt, choice)
            require(
                bool(cont) and bool(choice.strip()),
                f"question {item.id!r} option {k} is empty: cloze cannot score it, use the letter scorer",
            )
            # Option tokens count for clamping; with freeze they never change the decision.
            rows.append(
                _Row(prompt.ids + cont, prompt.user_mask + [True] * len(cont), len(prompt.ids), len(cont))
            )
    keep = max(r.continuation for r in rows) + 1
    log_probs, flagged, rho = _forward_rows(model, tokenizer, rows, keep, hook)
    out = []
    n = len(items[0].choices) if items else 0
    for index, item in enumerate(items):
        scores = []
        for k in range(n):
            r = index * n + k
            length = rows[r].continuation
            targets = torch.tensor(rows[r].ids[-length:])
            token_lp = log_probs[r, keep - length - 1 : keep - 1].gather(-1, targets.unsqueeze(-1)).sum()
            scores.append(token_lp / length if config.normalization == "tokens" else token_lp)
        pred = _prediction(item, torch.stack(scores))
        if flagged is not None and rho is not None:
            flags = [bool(flagged[index * n + k]) for k in range(n)]
            pred.flagged, pred.rho, pred.option_flagged = flags[0], float(rho[index * n]), flags
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
    """Predictions for every item, batched; the guard (if any) is attached for the call."""
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
            with progress_bar(description, total=len(items), enabled=show_progress) as advance:
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
    """(rho, flagged) per question from a forward to the hook layer only: cheap to sweep."""
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

    rho = gate_rho(model, guard.layer, guard.latents, batches(), show_progress=False)
    require(rho.numel() == len(items), "a question has no counted user tokens: check the chat template")
    return rho, rho > guard.threshold


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

    With ``base`` (the unguarded result on the same items and config) only the
    questions the gate flags are re-scored: unflagged questions are never
    clamped, so their prediction is the base one. This makes sweeps cheap.
    """
    started = time.perf_counter()
    config = config or McqConfig()
    config.validate()
    items = as_items(items, source=dataset)
    require(bool(items), f"{dataset}: no items to evaluate (an empty known set?): nothing to measure")
    reused = 0
    if guard is not None and base is not None:
        predictions, reused = _reuse_base(
            model, tokenizer, items, guard, config, base, show_progress, dataset
        )
    else:
        predictions = score_items(
            model, tokenizer, items, config, guard=guard, show_progress=show_progress, description=dataset
        )
    flags = [p.flagged for p in predictions if p.flagged is not None]
    result = McqResult(
        dataset=dataset,
        dataset_fingerprint=items_fingerprint(items),
        config=config,
        model=model_identity(model),
        guard=guard_identity(guard),
        n_items=len(items),
        accuracy=sum(p.correct for p in predictions) / len(predictions),
        flagged_fraction=(sum(flags) / len(flags)) if guard is not None else None,
        predictions=predictions,
        reused_base=reused,
        seconds=time.perf_counter() - started,
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
            model, tokenizer, chosen, config, guard=guard, show_progress=show_progress, description=dataset
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
