"""The "known set": questions the base model answers under every order of the options.

SAEBench convention (DESIGN §2): accuracy is reported only on questions the
unguarded model gets right under all 24 permutations of the four options, so the
base is 100% and a drop measures forgetting, not luck. The stricter variant also
drops questions the model answers (under all 24 orders) without seeing the
question text: those test option priors, not knowledge. Results are cached per
(model, tokenizer, dataset, scorer settings) because this costs 24 passes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from saeguard.errors import SaeguardError
from saeguard.evaluation.common import cache_root, model_identity, tokenizer_fingerprint, write_json
from saeguard.evaluation.items import McqItem, as_items, items_fingerprint
from saeguard.evaluation.mcq import McqConfig, score_items
from saeguard.fingerprint import text_fingerprint

PERMUTATIONS: list[tuple[int, ...]] = list(itertools.permutations(range(4)))
#: ``score_fn(items) -> predicted option index per item``: swap in a fake scorer for tests.
ScoreFn = Callable[[Sequence[McqItem]], Sequence[int]]
_CACHE_VERSION = 1


@dataclass
class KnownConfig:
    mcq: McqConfig = field(default_factory=McqConfig)
    drop_without_question: bool = False  # also drop items answerable with the question removed


@dataclass
class KnownSet:
    """Which items are known; carries what it was computed from."""

    dataset: str
    dataset_fingerprint: str
    model: dict[str, str]
    config: KnownConfig
    total: int
    ids: list[str]
    correct_orders: dict[str, int]  # per item: orders (of 24) answered correctly
    correct_orders_without_question: dict[str, int] | None = None
    seconds: float = 0.0
    kind: str = "saeguard-known-set"
    version: int = _CACHE_VERSION

    @property
    def count(self) -> int:
        return len(self.ids)

    def require_nonempty(self) -> None:
        if not self.ids:
            raise SaeguardError(
                f"no known items in {self.dataset}: the base model answers none of its {self.total} "
                "questions under all 24 option orders, so accuracy would be 0/0 - use more or easier "
                "questions, a stronger model, or the cloze scorer"
            )

    def select(self, items: Sequence[McqItem]) -> list[McqItem]:
        """The known items of ``items``, in order; raises when there are none."""
        self.require_nonempty()
        keep = set(self.ids)
        return [item for item in items if item.id in keep]

    def save(self, path: str | Path) -> Path:
        return write_json(path, self)

    @classmethod
    def load(cls, path: str | Path) -> KnownSet:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        data["config"] = KnownConfig(
            mcq=McqConfig(**data["config"]["mcq"]),
            drop_without_question=data["config"]["drop_without_question"],
        )
        return cls(**data)


def permutations_of(item: McqItem) -> list[McqItem]:
    return [item.permuted(order) for order in PERMUTATIONS]


def correct_order_counts(items: Sequence[McqItem], score_fn: ScoreFn) -> list[int]:
    """For each item, how many of the 24 option orders ``score_fn`` answers correctly."""
    expanded = [variant for item in items for variant in permutations_of(item)]
    predictions = list(score_fn(expanded))
    if len(predictions) != len(expanded):
        raise SaeguardError("the scorer returned a different number of predictions than items")
    hits = [int(p == v.answer) for p, v in zip(predictions, expanded, strict=True)]
    n = len(PERMUTATIONS)
    return [sum(hits[i * n : (i + 1) * n]) for i in range(len(items))]


def _model_scorer(model: nn.Module, tokenizer, config: McqConfig, show_progress: bool) -> ScoreFn:
    def score(items: Sequence[McqItem]) -> list[int]:
        preds = score_items(
            model, tokenizer, items, config, show_progress=show_progress, description="known set (24 orders)"
        )
        return [p.prediction for p in preds]

    return score


def known_items(
    model: nn.Module | None,
    tokenizer,
    items: Sequence[McqItem | dict[str, Any]],
    *,
    config: KnownConfig | None = None,
    dataset: str = "mcq",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    score_fn: ScoreFn | None = None,
    show_progress: bool = True,
) -> KnownSet:
    """The known set of ``items`` for the unguarded ``model`` (cached on disk).

    ``score_fn`` replaces the model (then nothing is cached). The result may be
    empty; ``KnownSet.select`` / ``require_nonempty`` say so clearly.
    """
    started = time.perf_counter()
    config = config or KnownConfig()
    config.mcq.validate()
    items = as_items(items, source=dataset)
    fingerprint = items_fingerprint(items)
    identity = model_identity(model) if model is not None else {"name": "custom scorer", "fingerprint": ""}
    path = None
    if model is not None and score_fn is None and use_cache:
        key = text_fingerprint(
            [
                identity["fingerprint"],
                tokenizer_fingerprint(tokenizer),
                fingerprint,
                json.dumps(asdict(config), sort_keys=True),
                str(_CACHE_VERSION),
            ]
        )
        path = cache_root(cache_dir) / f"known-{config.mcq.scorer}-{key}.json"
        if path.is_file():
            cached = KnownSet.load(path)
            return replace(cached, dataset=dataset)
    if score_fn is None:
        if model is None:
            raise SaeguardError("known_items needs a model or a score_fn")
        score_fn = _model_scorer(model, tokenizer, config.mcq, show_progress)
    counts = correct_order_counts(items, score_fn)
    without = None
    if config.drop_without_question:
        blank = [replace(item, question="") for item in items]
        without = correct_order_counts(blank, score_fn)
    n = len(PERMUTATIONS)
    ids = [
        item.id
        for index, item in enumerate(items)
        if counts[index] == n and (without is None or without[index] < n)
    ]
    known = KnownSet(
        dataset=dataset,
        dataset_fingerprint=fingerprint,
        model=identity,
        config=config,
        total=len(items),
        ids=ids,
        correct_orders={item.id: c for item, c in zip(items, counts, strict=True)},
        correct_orders_without_question=(
            {item.id: c for item, c in zip(items, without, strict=True)} if without is not None else None
        ),
        seconds=time.perf_counter() - started,
    )
    if path is not None:
        known.save(path)
    return known
