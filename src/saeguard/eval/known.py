"""The "known set": questions the base model answers under every order of the options.

SAEBench convention (docs/method.md §5): accuracy is reported only on questions the
unguarded model gets right under all 24 permutations of the four options, so the
base is 100% and a drop measures forgetting, not luck. ``permutations="cyclic"``
uses the 4 rotations instead (each option once in each position): 6x cheaper, a
looser filter for CPU demos, not the protocol. The stricter variant also
drops questions the model answers (under all orders) without seeing the
question text: those test option priors, not knowledge. Results are cached per
(model, tokenizer, dataset, settings) because this costs 24 passes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from torch import nn

from saeguard.errors import SaeguardError
from saeguard.eval.items import McqItem, as_items, items_fingerprint
from saeguard.eval.mcq import McqConfig, score_items
from saeguard.hf.fingerprint import model_identity, tokenizer_fingerprint
from saeguard.io import cache_root, text_fingerprint, write_json

PERMUTATIONS: list[tuple[int, ...]] = list(itertools.permutations(range(4)))
#: The 4 rotations: each option appears once in each position.
ROTATIONS: list[tuple[int, ...]] = [tuple((k + shift) % 4 for k in range(4)) for shift in range(4)]
Orderings = Literal["all", "cyclic"]
#: ``score_fn(items) -> predicted option index per item``: swap in a fake scorer for tests.
ScoreFn = Callable[[Sequence[McqItem]], Sequence[int]]
_CACHE_VERSION = 1
SHIPPED_KNOWN = Path(__file__).resolve().parent.parent / "resources" / "known"
"""Known sets of the embedded default model for the demo's and attack suite's question sets, as
``known_items`` would cache them (same file names: the key covers model weights, tokenizer, items
and settings, so a file is only used for exactly that combination). Regenerate with
``scripts/ship_known_sets.py``; ``tests/eval/test_shipped_known.py`` recomputes one."""


@dataclass
class KnownConfig:
    """How the known set is computed: the MCQ rendering/scorer and which option orders must all be right."""

    mcq: McqConfig = field(default_factory=McqConfig)
    drop_without_question: bool = False  # also drop items answerable with the question removed
    # "all": the protocol's 24 orders; "cyclic": the 4 rotations, a cheaper filter for CPU demos
    permutations: Orderings = "all"
    # Score one order at a time and stop scoring an item at its first miss: the same
    # known set for a fraction of the cost (unknown items usually fail in 1-2 orders);
    # ``correct_orders`` then counts the orders answered before the first miss.
    # The known ids are the same either way, so this stays out of the cache key.
    stop_at_first_miss: bool = True

    def validate(self) -> None:
        """Raise ``SaeguardError`` on a bad MCQ setting or an unknown ``permutations`` choice."""
        self.mcq.validate()
        if self.permutations not in ("all", "cyclic"):
            raise SaeguardError(f"unknown permutations {self.permutations!r}: use all or cyclic")

    @property
    def orders(self) -> list[tuple[int, ...]]:
        """The option orders an item must survive: the 24 permutations or the 4 rotations."""
        return PERMUTATIONS if self.permutations == "all" else ROTATIONS


@dataclass
class KnownSet:
    """Which items are known; carries what it was computed from."""

    dataset: str
    dataset_fingerprint: str
    model: dict[str, str]
    config: KnownConfig
    total: int
    ids: list[str]
    correct_orders: dict[str, int]  # per item: orders (of config.orders) answered correctly
    correct_orders_without_question: dict[str, int] | None = None
    seconds: float = 0.0
    kind: str = "saeguard-known-set"
    version: int = _CACHE_VERSION

    @property
    def count(self) -> int:
        """Number of known items."""
        return len(self.ids)

    def require_nonempty(self) -> None:
        """Raise ``SaeguardError`` (with what to change) when no item is known: accuracy would be 0/0."""
        if not self.ids:
            raise SaeguardError(
                f"no known items in {self.dataset}: the base model answers none of its {self.total} "
                f"questions under all {len(self.config.orders)} option orders, so accuracy would be 0/0 - "
                "use more or easier questions, a stronger model, or the cloze scorer"
            )

    def select(self, items: Sequence[McqItem | dict[str, Any]]) -> list[McqItem]:
        """The known items of ``items`` (items or schema rows), in order; raises when there are none."""
        self.require_nonempty()
        return self.known_of(items)

    def known_of(self, items: Sequence[McqItem | dict[str, Any]]) -> list[McqItem]:
        """The known items of ``items`` (items or schema rows), in order; empty when none is known."""
        keep = set(self.ids)
        return [item for item in as_items(items, source=self.dataset) if item.id in keep]

    def save(self, path: str | Path) -> Path:
        """Write the set as JSON to ``path`` atomically; returns ``path``."""
        return write_json(path, self)

    @classmethod
    def load(cls, path: str | Path) -> KnownSet:
        """Read what :meth:`save` wrote; meant for saeguard's own cache files, so fields are not validated."""
        data: dict[str, Any] = json.loads(Path(path).read_text())
        data["config"] = KnownConfig(
            mcq=McqConfig(**data["config"]["mcq"]),
            drop_without_question=data["config"]["drop_without_question"],
            permutations=data["config"].get("permutations", "all"),
            stop_at_first_miss=data["config"].get("stop_at_first_miss", False),
        )
        return cls(**data)


def _key_settings(config: KnownConfig) -> dict[str, Any]:
    """The settings in the cache key; the protocol's default orders stay out so older caches match."""
    settings = asdict(config)
    if config.permutations == "all":
        del settings["permutations"]
    del settings["stop_at_first_miss"]
    return settings


def permutations_of(item: McqItem, orders: Sequence[tuple[int, ...]] = PERMUTATIONS) -> list[McqItem]:
    """``item`` once per option order (default: all 24), answers re-indexed to follow their text."""
    return [item.permuted(order) for order in orders]


def correct_order_counts(
    items: Sequence[McqItem],
    score_fn: ScoreFn,
    orders: Sequence[tuple[int, ...]] = PERMUTATIONS,
    *,
    stop_at_first_miss: bool = False,
) -> list[int]:
    """For each item, how many of the option ``orders`` ``score_fn`` answers correctly."""
    if stop_at_first_miss:
        return _counts_until_first_miss(items, score_fn, orders)
    expanded = [variant for item in items for variant in permutations_of(item, orders)]
    predictions = _predict(score_fn, expanded)
    hits = [int(p == v.answer) for p, v in zip(predictions, expanded, strict=True)]
    n = len(orders)
    return [sum(hits[i * n : (i + 1) * n]) for i in range(len(items))]


def _predict(score_fn: ScoreFn, variants: Sequence[McqItem]) -> list[int]:
    predictions = list(score_fn(variants))
    if len(predictions) != len(variants):
        raise SaeguardError("the scorer returned a different number of predictions than items")
    return predictions


def _counts_until_first_miss(
    items: Sequence[McqItem], score_fn: ScoreFn, orders: Sequence[tuple[int, ...]]
) -> list[int]:
    # The rotations go first: they move the answer through every position, so
    # position-biased guesses fail within the first four rounds.
    ordered = [o for o in ROTATIONS if o in orders] + [o for o in orders if o not in ROTATIONS]
    counts = [0] * len(items)
    alive = list(range(len(items)))
    for order in ordered:
        if not alive:
            break
        variants = [items[i].permuted(order) for i in alive]
        survivors = []
        for index, prediction, variant in zip(alive, _predict(score_fn, variants), variants, strict=True):
            if prediction == variant.answer:
                counts[index] += 1
                survivors.append(index)
        alive = survivors
    return counts


def _model_scorer(
    model: nn.Module, tokenizer, config: KnownConfig, show_progress: bool, dataset: str = "mcq"
) -> ScoreFn:
    """The model's predictions; progress reads ``known-set filter DATASET, order 3/24: 40/67 questions``."""
    orders = len(config.orders)
    calls = 0

    def score(items: Sequence[McqItem]) -> list[int]:
        nonlocal calls
        calls += 1
        rounds = f"order {calls}/{orders}" if config.stop_at_first_miss else f"{orders} orders"
        preds = score_items(
            model,
            tokenizer,
            items,
            config.mcq,
            show_progress=show_progress,
            description=f"known-set filter {dataset}, {rounds}",
        )
        return [p.prediction for p in preds]

    return score


@dataclass(frozen=True)
class KnownEstimate:
    """What a known-set filter will cost, measured on a few items before it runs.

    Attributes:
        items: questions to filter.
        orders: option orders each must survive (24 or 4).
        seconds_per_question: measured time to score one question once (seconds).
        seconds: upper bound, items x orders x seconds_per_question; items dropped
            at their first miss cost less (``KnownConfig.stop_at_first_miss``).
    """

    items: int
    orders: int
    seconds_per_question: float

    @property
    def seconds(self) -> float:
        return self.items * self.orders * self.seconds_per_question


def estimate_known_cost(
    model: nn.Module,
    tokenizer,
    items: Sequence[McqItem | dict[str, Any]],
    *,
    config: KnownConfig | None = None,
    dataset: str = "mcq",
    sample: int = 4,
) -> KnownEstimate:
    """Time ``sample`` questions once (after one warm-up) to estimate :func:`known_items`' cost.

    Raises:
        SaeguardError: a bad config or malformed items.
    """
    config = config or KnownConfig()
    config.validate()
    chosen = as_items(items, source=dataset)
    probe = chosen[: max(1, min(sample, len(chosen)))]
    score_items(model, tokenizer, probe[:1], config.mcq)  # warm-up: first-call overheads
    started = time.perf_counter()
    score_items(model, tokenizer, probe, config.mcq)
    per_question = (time.perf_counter() - started) / max(1, len(probe))
    return KnownEstimate(items=len(chosen), orders=len(config.orders), seconds_per_question=per_question)


def known_cache_path(
    model: nn.Module,
    tokenizer,
    items: Sequence[McqItem],
    config: KnownConfig,
    cache_dir: str | Path | None = None,
) -> Path:
    """Where :func:`known_items` caches the known set of ``items`` for ``model`` (it may not exist)."""
    key = text_fingerprint(
        [
            model_identity(model)["fingerprint"],
            tokenizer_fingerprint(tokenizer),
            items_fingerprint(items),
            json.dumps(_key_settings(config), sort_keys=True),
            str(_CACHE_VERSION),
        ]
    )
    return cache_root(cache_dir) / f"known-{config.mcq.scorer}-{key}.json"


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
    empty; ``KnownSet.select`` / ``require_nonempty`` say so clearly. Protocol:
    docs/method.md §5.

    Raises:
        SaeguardError: a bad config, malformed items, neither ``model`` nor ``score_fn``,
            or a ``score_fn`` returning the wrong number of predictions.
    """
    started = time.perf_counter()
    config = config or KnownConfig()
    config.validate()
    items = as_items(items, source=dataset)
    fingerprint = items_fingerprint(items)
    identity = model_identity(model) if model is not None else {"name": "custom scorer", "fingerprint": ""}
    path = None
    if model is not None and score_fn is None and use_cache:
        path = known_cache_path(model, tokenizer, items, config, cache_dir)
        shipped = SHIPPED_KNOWN / path.name
        for candidate in (path, shipped):  # the user's cache first, then what ships for the default
            if candidate.is_file():
                return replace(KnownSet.load(candidate), dataset=dataset)
    if score_fn is None:
        if model is None:
            raise SaeguardError("known_items needs a model or a score_fn")
        score_fn = _model_scorer(model, tokenizer, config, show_progress, dataset)
    early = config.stop_at_first_miss
    counts = correct_order_counts(items, score_fn, config.orders, stop_at_first_miss=early)
    without = None
    if config.drop_without_question:
        blank = [replace(item, question="") for item in items]
        without = correct_order_counts(blank, score_fn, config.orders, stop_at_first_miss=early)
    n = len(config.orders)
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
