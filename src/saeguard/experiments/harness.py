"""The one measuring harness of every experiment: known question sets, the base, typed scores.

Every point of every experiment (a guard stack, an unlearned or fine-tuned model) is
measured by :meth:`Harness.score` on the same known items with the same scorer, as the
comparison does (``runs/compare.py``): known items are filtered once per run, the
unguarded base is scored once, and with guards on the base model only the questions some
gate flags are re-scored (an unflagged question is never clamped, so its prediction is the
base one). Several guards stack: each ``Guardrail.attached`` adds its gate at its layer,
in order, and a question is clamped iff any gate flags it (docs/method.md §3-§4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saeguard.core.guardrail import Guardrail
from saeguard.eval.items import McqItem, Scorer, items_fingerprint
from saeguard.eval.known import KnownConfig, Orderings, known_items
from saeguard.eval.mcq import McqConfig, gate_decisions, score_items
from saeguard.hf.fingerprint import model_identity, tokenizer_fingerprint
from saeguard.io import to_jsonable
from saeguard.runs.compare_setup import _question_set


@dataclass(frozen=True)
class EvalSettings:
    """How every point is measured: scorer, known-item filter, questions per set."""

    scorer: Scorer = "cloze"
    known_filter: bool = True  # keep the questions the base answers under every option order
    permutations: Orderings = "cyclic"  # known filter: the 4 rotations, or "all" 24 orders (the protocol)
    mcq_limit: int | None = field(
        default=80, metadata={"min": 1}
    )  # questions per set before the known filter
    batch_size: int = field(default=8, metadata={"min": 1})

    def mcq(self) -> McqConfig:
        return McqConfig(scorer=self.scorer, batch_size=self.batch_size)

    def known(self) -> KnownConfig:
        return KnownConfig(mcq=self.mcq(), permutations=self.permutations)


# -- typed scores ---------------------------------------------------------------------------
@dataclass
class SetScore:
    """Accuracy on one question set; ``flagged``: share of its questions some gate flagged.

    A set without known items has ``accuracy`` None and ``n_items`` 0.
    """

    accuracy: float | None
    correct: int
    n_items: int
    flagged: float | None = None  # None: no guard
    predictions: list[int] = field(default_factory=list)  # predicted option per item, in set order


@dataclass
class GuardInfo:
    """One guard of a point: what it is and the share of each set's questions its own gate flags."""

    name: str
    latent_ids: list[int]
    tau: float
    clamp_value: float
    gate: str
    flagged: dict[str, float] = field(default_factory=dict)


@dataclass
class Scores:
    """Everything measured on one point: per-set scores and per-guard decisions."""

    sets: dict[str, SetScore]
    guards: list[GuardInfo] = field(default_factory=list)

    def accuracy(self, names: Sequence[str]) -> float | None:
        """Accuracy pooled over the items of the sets ``names`` (None without items)."""
        chosen = [self.sets[n] for n in names if n in self.sets]
        items = sum(s.n_items for s in chosen)
        return sum(s.correct for s in chosen) / items if items else None

    def flagged(self, names: Sequence[str]) -> float | None:
        """Share of the items of the sets ``names`` some gate flagged (None: no guard or no items)."""
        chosen = [self.sets[n] for n in names if n in self.sets and self.sets[n].flagged is not None]
        items = sum(s.n_items for s in chosen)
        return sum(s.n_items * (s.flagged or 0.0) for s in chosen) / items if items else None

    def items(self, names: Sequence[str]) -> int:
        return sum(self.sets[n].n_items for n in names if n in self.sets)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        return cls(
            sets={k: SetScore(**v) for k, v in data["sets"].items()},
            guards=[GuardInfo(**g) for g in data.get("guards", [])],
        )


def scores_or_none(data: Any) -> Scores | None:
    return Scores.from_dict(data) if data else None


# -- the harness ----------------------------------------------------------------------------
@dataclass
class Harness:
    """The model, tokenizer and known question sets every point is measured on, plus the base."""

    model: nn.Module
    tokenizer: Any
    settings: EvalSettings
    sets: dict[str, list[McqItem]]
    known: dict[str, dict[str, int]]  # per set: items asked and known
    base: dict[str, list[int]] = field(default_factory=dict)  # unguarded predictions per set

    @classmethod
    def build(
        cls,
        model: nn.Module,
        tokenizer: Any,
        specs: Sequence[str],
        settings: EvalSettings,
        *,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
    ) -> Harness:
        """Load each question set (built-in name or JSONL path), keep its known items, score the base.

        A set without known items stays, empty: its accuracy is None and ``known`` says 0.

        Raises:
            SaeguardError: a set that cannot be read.
        """
        sets: dict[str, list[McqItem]] = {}
        known: dict[str, dict[str, int]] = {}
        for spec in dict.fromkeys(specs):
            items = _question_set(spec, settings.mcq_limit)
            total = len(items)
            if settings.known_filter:
                found = known_items(
                    model,
                    tokenizer,
                    items,
                    config=settings.known(),
                    dataset=spec,
                    cache_dir=cache_dir,
                    show_progress=show_progress,
                )
                keep = set(found.ids)
                items = [item for item in items if item.id in keep]  # may be none: ``known`` reports it
            sets[spec], known[spec] = items, {"total": total, "known": len(items)}
        harness = cls(model, tokenizer, settings, sets, known)
        harness.base = {
            name: harness._predict(model, items, ()) if items else [] for name, items in sets.items()
        }
        return harness

    def fingerprint(self) -> dict[str, Any]:
        """What the harness measures on: model, tokenizer, items and settings (for a run's context)."""
        return {
            "model": model_identity(self.model)["fingerprint"],
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "sets": {name: items_fingerprint(items) for name, items in self.sets.items()},
            "settings": to_jsonable(self.settings),
        }

    def score(
        self,
        guards: Sequence[Guardrail] = (),
        *,
        model: nn.Module | None = None,
        names: Sequence[str] | None = None,
    ) -> Scores:
        """Every set scored with ``guards`` attached together to ``model`` (default: the base model).

        ``names`` label the guards in the record (default ``guard1``, ``guard2``...). On the base
        model only questions some gate flags are re-scored; on another model (fine-tuned,
        unlearned) every question is.
        """
        lm = self.model if model is None else model
        labels = list(names) if names is not None else [f"guard{i + 1}" for i in range(len(guards))]
        infos = [
            GuardInfo(
                label, [int(i) for i in g.latents.ids], float(g.tau), float(g.clamp_value), g.config.gate
            )
            for label, g in zip(labels, guards, strict=True)
        ]
        sets = {}
        for name, items in self.sets.items():
            if not items:
                sets[name] = SetScore(None, 0, 0, None)
                continue
            flagged = torch.zeros(len(items), dtype=torch.bool)
            for info, guard in zip(infos, guards, strict=True):
                own = self._decisions(lm, guard, items)
                info.flagged[name] = float(own.double().mean())
                flagged |= own
            rescore = list(range(len(items))) if model is not None else flagged.nonzero().flatten().tolist()
            predictions = list(self.base[name])
            if rescore:
                chosen = self._predict(lm, [items[i] for i in rescore], guards)
                for index, prediction in zip(rescore, chosen, strict=True):
                    predictions[index] = prediction
            correct = sum(p == item.answer for p, item in zip(predictions, items, strict=True))
            sets[name] = SetScore(
                accuracy=correct / len(items),
                correct=correct,
                n_items=len(items),
                flagged=float(flagged.double().mean()) if guards else None,
                predictions=predictions,
            )
        return Scores(sets, infos)

    def _decisions(self, model: nn.Module, guard: Guardrail, items: Sequence[McqItem]) -> torch.Tensor:
        """(n,) bool: the guard's gate decision per question (all True for a gate="always" guard)."""
        if guard.config.gate == "always":
            return torch.ones(len(items), dtype=torch.bool)
        _, flagged = gate_decisions(model, self.tokenizer, guard, items, self.settings.mcq())
        return flagged.cpu().bool()

    def _predict(self, model: nn.Module, items: Sequence[McqItem], guards: Sequence[Guardrail]) -> list[int]:
        with ExitStack() as stack:
            for guard in guards:
                stack.enter_context(guard.attached(model))
            predictions = score_items(model, self.tokenizer, items, self.settings.mcq())
        return [p.prediction for p in predictions]
