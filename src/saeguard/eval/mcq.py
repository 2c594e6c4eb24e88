"""Evaluating multiple-choice questions with or without a guard (docs/method.md §5).

:func:`evaluate_mcq` scores a question set (the letter and cloze scorers are
``eval/scorers.py``) into one self-describing :class:`McqResult`; with the
unguarded result as ``base`` only the questions the gate flags are re-scored.
:func:`gate_decisions` gives the gate's decision per question from a forward
to the hook layer only, which is what makes sweeps of tau cheap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from saeguard.core.calibration import gate_rho
from saeguard.errors import require
from saeguard.eval.common import guard_identity
from saeguard.eval.items import McqItem, as_items, items_fingerprint, shared_prompt
from saeguard.eval.score import wilson_interval
from saeguard.eval.scorers import McqConfig, McqPrediction, Normalization, score_items
from saeguard.hf.corpus import TokenBatch, counted_mask, pad_batch, pad_token_id, special_token_ids
from saeguard.hf.fingerprint import model_identity
from saeguard.io import write_json

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail

__all__ = [  # the scorers are eval/scorers.py, re-exported here for callers of eval.mcq
    "McqConfig",
    "McqPrediction",
    "McqResult",
    "Normalization",
    "evaluate_mcq",
    "gate_decisions",
    "score_items",
]


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
