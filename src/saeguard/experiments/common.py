"""What every experiment shares: one measuring harness, typed scores, data loading, guard fitting.

Every point of every experiment (a guard stack, an unlearned or fine-tuned model) is
measured by :meth:`Harness.score` on the same known items with the same scorer, as the
comparison does (``runs/compare.py``): known items are filtered once per run, the
unguarded base is scored once, and with guards on the base model only the questions some
gate flags are re-scored (an unflagged question is never clamped, so its prediction is the
base one). Several guards stack: each ``Guardrail.attached`` adds its gate at its layer,
in order, and a question is clamped iff any gate flags it (docs/method.md §3-§4).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import torch
from torch import nn

from saeguard.config import FitConfig, preset, type_hints
from saeguard.core.fit import FitInputs, corpus_statistics, fit_from_statistics, prepare_fit
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import sae_fingerprint
from saeguard.core.statistics import FeatureStatistics
from saeguard.errors import SaeguardError, require
from saeguard.eval.items import McqItem, Scorer, items_fingerprint
from saeguard.eval.known import KnownConfig, Orderings, known_items
from saeguard.eval.mcq import McqConfig, gate_decisions, score_items
from saeguard.hf.fingerprint import model_identity, tokenizer_fingerprint
from saeguard.hf.layers import model_device
from saeguard.io import cache_root, json_fingerprint, text_fingerprint, to_jsonable
from saeguard.runs.compare_setup import _documents, _question_set

CHANCE = 0.25  # four options
RECORDS_FILE = "records.jsonl"
T = TypeVar("T")


def experiment_fit(**changes: Any) -> FitConfig:
    """The experiments' fit: ``preset("demo")`` (the README's setting) with fewer statistics chunks."""
    return replace(
        preset("demo"), **({"max_forget_chunks": 200, "max_retain_chunks": 400} | changes)
    ).validate()


def quick_fit(**changes: Any) -> FitConfig:
    """``--quick``: 64 forget and 128 retain chunks, 128 calibration prompts."""
    return experiment_fit(max_forget_chunks=64, max_retain_chunks=128, calibration_size=128, **changes)


@dataclass(frozen=True)
class EvalSettings:
    """How every point is measured: scorer, known-item filter, questions per set."""

    scorer: Scorer = "cloze"
    known_filter: bool = True  # keep the questions the base answers under every option order
    permutations: Orderings = "cyclic"  # known filter: the 4 rotations, or "all" 24 orders (the protocol)
    mcq_limit: int | None = 80  # questions per set before the known filter
    batch_size: int = 8

    def mcq(self) -> McqConfig:
        return McqConfig(scorer=self.scorer, batch_size=self.batch_size)

    def known(self) -> KnownConfig:
        return KnownConfig(mcq=self.mcq(), permutations=self.permutations)


#: The RMU configuration that unlearned on the default model in docs/compare.md (forget 0.47,
#: utility 1.0 on known items; the same settings at lr 5e-5 and 60 steps did nothing).
RMU_SETTINGS: dict[str, Any] = {"steering_coeff": 100, "alpha": 100, "layer": 3, "steps": 150}
RMU_SETTINGS |= {"batch_size": 4, "seq_len": 128, "learning_rate": 5e-4}
QUICK_EVAL = EvalSettings(mcq_limit=40)  # --quick: 40 questions per set before the known filter


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


# -- data and fits --------------------------------------------------------------------------
def load_documents(specs: Sequence[str], split: str, *, role: str, seed: int) -> list[str]:
    """Documents of corpora (built-in names or files), shuffled with ``seed`` (as the comparison does).

    Raises:
        SaeguardError: the corpora have no documents of ``split``.
    """
    return _documents(list(specs), split, role, seed)


@dataclass
class Statistics:
    """The validated inputs and per-corpus statistics of one fit: many guards come from one pass."""

    inputs: FitInputs
    forget: FeatureStatistics
    retain: FeatureStatistics

    @classmethod
    def compute(
        cls,
        model: nn.Module,
        tokenizer: Any,
        sae: Any,
        forget: Sequence[str],
        retain: Sequence[str],
        fit: FitConfig,
        *,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
    ) -> Statistics:
        """Check the inputs (``prepare_fit``) and collect both corpora's statistics (cached on disk)."""
        inputs = prepare_fit(model, tokenizer, sae, list(forget), list(retain), fit)
        cache = cache_root(cache_dir)
        forget_stats = corpus_statistics(inputs, "forget", fit, cache=cache, show_progress=show_progress)
        retain_stats = corpus_statistics(inputs, "retain", fit, cache=cache, show_progress=show_progress)
        return cls(inputs, forget_stats, retain_stats)

    def guard(self, fit: FitConfig, *, show_progress: bool = False) -> Guardrail:
        """Selection and calibration for ``fit`` (``core.fit.fit_from_statistics``)."""
        result = fit_from_statistics(self.inputs, self.forget, self.retain, fit, show_progress=show_progress)
        return Guardrail.from_result(result)


def run_context(
    experiment: str, harness: Harness, sae: Any, config: Any, documents: Mapping[str, list[str]]
) -> str:
    """Fingerprint of everything a run's records depend on; a resume refuses other setups."""
    return json_fingerprint(
        {
            "experiment": experiment,
            "harness": harness.fingerprint(),
            "sae": sae_fingerprint(sae) if sae is not None else None,
            "documents": {role: text_fingerprint(docs) for role, docs in documents.items()},
            "config": settings_dict(config),
        }
    )


def train_device(model: nn.Module) -> str:
    """Where gradient methods train: the model's own device."""
    return str(model_device(model))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation; (nan, nan) for no values."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


# -- settings as JSON -----------------------------------------------------------------------
def settings_dict(config: Any) -> dict[str, Any]:
    """An experiment's settings as plain JSON (``fit`` as :meth:`FitConfig.to_dict`)."""
    data = to_jsonable(config)
    if isinstance(getattr(config, "fit", None), FitConfig):
        data["fit"] = config.fit.to_dict()
    return data


def settings_from_dict(default: T, data: Mapping[str, Any], where: str = "experiment settings") -> T:
    """``default`` (a settings dataclass) with the fields of ``data`` replaced; unknown keys refused.

    ``fit`` is merged over the default's fit; nested settings (and lists of them) recurse.

    Raises:
        SaeguardError: ``data`` is not a JSON object, names an unknown setting, or a fit value is bad.
    """
    require(isinstance(data, Mapping), f"{where} must be a JSON object, got {type(data).__name__}")
    cls = type(default)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    require(not unknown, f"unknown {where} {unknown}: use some of {sorted(known)}")
    hints = type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(default, name)
        hint = hints[name]
        if isinstance(current, FitConfig):
            values[name] = FitConfig.from_dict(current.to_dict() | dict(value), where=f"{where}.{name}")
        elif dataclasses.is_dataclass(current):
            values[name] = settings_from_dict(current, value, f"{where}.{name}")
        elif get_origin(hint) is list and dataclasses.is_dataclass(get_args(hint)[0]):
            require(isinstance(value, list), f"{where}.{name} must be a list of objects")
            values[name] = [_build(get_args(hint)[0], v, f"{where}.{name}[{i}]") for i, v in enumerate(value)]
        else:
            values[name] = value
    return replace(default, **values)  # type: ignore[type-var]


def _build(cls: type[T], data: Any, where: str) -> T:
    """One settings object of ``cls`` from a JSON object holding its fields."""
    require(isinstance(data, Mapping), f"{where} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    require(not unknown, f"unknown {where} settings {unknown}: use some of {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as error:
        raise SaeguardError(f"{where}: {error}: give every required field") from None
