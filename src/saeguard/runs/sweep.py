"""Sweeps over (ratio_percentile, n_features, clamp, gate_percentile) with one statistics pass.

Statistics are computed once per corpus (cached on disk); selection and
calibration (``fit.fit_from_statistics``) once per (ratio_percentile,
n_features); tau and the clamp are re-derived per point from the same rho
(``fit.retune``).
Each point's record (config + metrics) goes to a JSONL file, rewritten
atomically after every point; rerunning skips points already recorded, and a
file from a different setup (model, SAE, corpora, questions) is refused.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from saeguard.config import Clamp, FitConfig
from saeguard.core.fit import (
    corpus_statistics,
    fit_from_statistics,
    prepare_fit,
    retune,
)
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import sae_fingerprint
from saeguard.errors import require
from saeguard.eval.items import McqItem, as_items, items_fingerprint, load_mcq
from saeguard.eval.known import KnownConfig, known_items
from saeguard.eval.mcq import McqConfig, McqResult, evaluate_mcq
from saeguard.eval.score import Outcome, UnlearningScore, pooled_accuracy, unlearning_score
from saeguard.eval.text import TextConfig, firing_rates
from saeguard.hf.corpus import CorpusSpec, iter_documents
from saeguard.hf.fingerprint import model_identity, tokenizer_fingerprint
from saeguard.io import cache_root, json_fingerprint, read_jsonl_records, text_fingerprint, to_jsonable
from saeguard.runs.grid import RecordFile, run_grid

BASE_KEY = "base"
McqSets = Mapping[str, Sequence[McqItem | Mapping[str, Any]] | str | Path]


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: p_ratio, N, the clamp and p_dyn (docs/method.md §6.2); ``key`` names its record."""

    ratio_percentile: float
    n_features: int
    clamp: str  # Clamp's string form: "500" or "10x"
    gate_percentile: float

    @property
    def key(self) -> str:
        return (
            f"ratio={self.ratio_percentile:g},n={self.n_features},"
            f"clamp={self.clamp},gate={self.gate_percentile:g}"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepPoint:
        """Also reads records of saeguard 0.1.0 (``clamp`` number + ``relative_clamp``)."""
        d = dict(data)
        if "relative_clamp" in d:
            d["clamp"] = str(Clamp(float(d["clamp"]), bool(d.pop("relative_clamp"))))
        return cls(**d)


@dataclass
class SweepGrid:
    """The paper's DSG grid by default (docs/method.md §6.2)."""

    ratio_percentile: list[float] = field(default_factory=lambda: [90.0, 95.0])
    n_features: list[int] = field(default_factory=lambda: [10, 20, 30])
    clamp: list[float | str] = field(default_factory=lambda: [10, 25, 50, 100, 200, 300, 400, 500])
    gate_percentile: list[float] = field(default_factory=lambda: [95.0])

    def points(self) -> list[SweepPoint]:
        require(
            all([self.ratio_percentile, self.n_features, self.clamp, self.gate_percentile]),
            "every sweep axis needs at least one value",
        )
        clamps = [str(Clamp.parse(c)) for c in self.clamp]
        return [
            SweepPoint(float(r), int(n), c, float(g))
            for r, n, c, g in itertools.product(
                self.ratio_percentile, self.n_features, clamps, self.gate_percentile
            )
        ]


@dataclass
class SweepConfig:
    """The grid, the fit settings of everything not swept, and how points are evaluated."""

    grid: SweepGrid = field(default_factory=SweepGrid)
    fit: FitConfig = field(default_factory=FitConfig)  # everything but the swept fields
    mcq: McqConfig = field(default_factory=McqConfig)
    known: bool = True  # evaluate on the known set of each question set
    drop_without_question: bool = False
    reuse_base: bool = True  # unflagged questions keep the base prediction (exact, much faster)
    utility_threshold: float = 0.99
    text: TextConfig = field(default_factory=TextConfig)  # firing rates on held-out text


@dataclass
class DatasetMetrics:
    """Accuracy on one question set; ``flagged_fraction``: share of questions the gate flagged."""

    accuracy: float
    correct: int
    n_items: int
    flagged_fraction: float | None

    @classmethod
    def per_set(cls, results: Mapping[str, McqResult]) -> dict[str, DatasetMetrics]:
        """The metrics of each set's ``evaluate_mcq`` result, by set name."""
        return {n: cls(r.accuracy, r.correct, r.n_items, r.flagged_fraction) for n, r in results.items()}


@dataclass
class SweepRecord:
    """One line of a sweep JSONL: a grid point (or the unguarded base) with its metrics or error."""

    key: str
    context: str  # fingerprint of the setup; a resume refuses records of another setup
    point: SweepPoint | None  # None for the unguarded base
    guard: dict[str, Any] | None
    forget: dict[str, DatasetMetrics]
    utility: dict[str, DatasetMetrics]
    forget_accuracy: float | None
    utility_accuracy: float | None
    firing: dict[str, float] | None = None  # flagged fraction on held-out text
    error: str | None = None
    seconds: float = 0.0
    kind: str = "saeguard-sweep-record"
    version: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepRecord:
        d = dict(data)
        d["point"] = SweepPoint.from_dict(d["point"]) if d.get("point") else None
        d["forget"] = {k: DatasetMetrics(**v) for k, v in d.get("forget", {}).items()}
        d["utility"] = {k: DatasetMetrics(**v) for k, v in d.get("utility", {}).items()}
        return cls(**d)


@dataclass
class SweepResult:
    """Every record of the file (this run's and earlier ones), the score, and what this run did."""

    output: Path
    records: list[SweepRecord]
    score: UnlearningScore | None
    computed: int
    skipped: int


def read_records(path: str | Path) -> list[SweepRecord]:
    """Records of a sweep file; a torn last line (interrupted write) is ignored."""
    return read_jsonl_records(path, SweepRecord.from_dict, "sweep")


def sweep_score(records: Sequence[SweepRecord], utility_threshold: float = 0.99) -> UnlearningScore | None:
    outcomes = [
        Outcome(r.key, r.forget_accuracy, r.utility_accuracy, asdict(r.point))
        for r in records
        if r.point is not None
        and r.error is None
        and r.forget_accuracy is not None
        and r.utility_accuracy is not None
    ]
    return unlearning_score(outcomes, utility_threshold=utility_threshold) if outcomes else None


def _mcq_sets(sets: McqSets | Sequence[Any], default: str) -> dict[str, list[McqItem]]:
    if not isinstance(sets, Mapping):
        sets = {default: sets}
    out = {}
    for name, spec in sets.items():
        out[name] = load_mcq(spec) if isinstance(spec, (str, Path)) else as_items(spec, source=name)
    require(bool(out), f"no {default} question sets given")
    return out


def run_sweep(
    model: nn.Module,
    tokenizer,
    sae,
    *,
    forget: CorpusSpec,
    retain: CorpusSpec,
    forget_mcq: McqSets | Sequence[Any],
    utility_mcq: McqSets | Sequence[Any],
    output: str | Path,
    config: SweepConfig | None = None,
    heldout: Mapping[str, CorpusSpec] | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> SweepResult:
    """Evaluate every grid point; records go to ``output`` (JSONL), finished points are skipped."""
    config = config or SweepConfig()
    config.fit.validate()
    config.mcq.validate()
    inputs = prepare_fit(model, tokenizer, sae, forget, retain, config.fit)
    heldout_docs = {k: list(iter_documents(v)) for k, v in (heldout or {}).items()}
    sets = {"forget": _mcq_sets(forget_mcq, "forget"), "utility": _mcq_sets(utility_mcq, "utility")}
    if config.known:
        known_cfg = KnownConfig(mcq=config.mcq, drop_without_question=config.drop_without_question)
        for group in sets.values():
            for name, items in group.items():
                known = known_items(
                    model,
                    tokenizer,
                    items,
                    config=known_cfg,
                    dataset=name,
                    cache_dir=cache_dir,
                    show_progress=show_progress,
                )
                group[name] = known.select(items)
    swept = {"ratio_percentile", "n_features", "clamp", "gate_percentile"}
    context = json_fingerprint(
        {
            "model": model_identity(model)["fingerprint"],
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "sae": sae_fingerprint(inputs.sae),
            "layer": inputs.layer,
            "forget": text_fingerprint(inputs.forget_docs),
            "retain": text_fingerprint(inputs.retain_docs),
            "sets": {g: {n: items_fingerprint(v) for n, v in s.items()} for g, s in sets.items()},
            "heldout": {k: text_fingerprint(v) for k, v in heldout_docs.items()},
            "fit": {k: v for k, v in config.fit.to_dict().items() if k not in swept},
            "mcq": asdict(config.mcq),
            "known": config.known,
            "text": asdict(config.text),
        }
    )
    records = RecordFile.open(Path(output), SweepRecord.from_dict, context=context, what="sweep")
    grid = config.grid.points()
    points = records.pending(grid)

    base_results: dict[str, dict[str, McqResult]] = {}
    if BASE_KEY not in records.done or (points and config.reuse_base):
        started = time.perf_counter()
        base_results = {
            g: {
                n: evaluate_mcq(
                    model, tokenizer, items, config=config.mcq, dataset=n, show_progress=show_progress
                )
                for n, items in s.items()
            }
            for g, s in sets.items()
        }
        if BASE_KEY not in records.done:
            records.save(
                SweepRecord(
                    BASE_KEY,
                    context,
                    None,
                    None,
                    DatasetMetrics.per_set(base_results["forget"]),
                    DatasetMetrics.per_set(base_results["utility"]),
                    pooled_accuracy(base_results["forget"].values()),
                    pooled_accuracy(base_results["utility"].values()),
                    seconds=time.perf_counter() - started,
                )
            )
    stats: dict[str, Any] = {}
    if points:
        cache = cache_root(cache_dir)
        stats = {
            role: corpus_statistics(inputs, role, config.fit, cache=cache, show_progress=show_progress)
            for role in ("forget", "retain")
        }

    def fit_group(group: list[SweepPoint]) -> Guardrail:
        """Selection + calibration once for every clamp and gate percentile of the group."""
        first = _fit_config(config.fit, group[0])
        return Guardrail.from_result(
            fit_from_statistics(inputs, stats["forget"], stats["retain"], first, show_progress=False)
        )

    def evaluate(point: SweepPoint, template: Guardrail) -> SweepRecord:
        guard = retune(template, gate_percentile=point.gate_percentile, clamp=point.clamp)
        return _evaluate_point(
            model, tokenizer, guard, point, sets, base_results, heldout_docs, config, context
        )

    counts = run_grid(
        records,
        grid,
        prepare=fit_group,
        group=lambda point: (point.ratio_percentile, point.n_features),
        evaluate=evaluate,
        failed=lambda point, error: SweepRecord(
            point.key, context, point, None, {}, {}, None, None, error=error
        ),
        description="sweep",
        show_progress=show_progress,
    )
    return SweepResult(
        records.path,
        records.records,
        sweep_score(records.records, config.utility_threshold),
        computed=counts.computed,
        skipped=counts.skipped,
    )


def _fit_config(fit: FitConfig, point: SweepPoint) -> FitConfig:
    return replace(
        fit,
        ratio_percentile=point.ratio_percentile,
        n_features=point.n_features,
        clamp=Clamp.parse(point.clamp),
        gate_percentile=point.gate_percentile,
    )


def _evaluate_point(
    model,
    tokenizer,
    guard: Guardrail,
    point: SweepPoint,
    sets,
    base_results,
    heldout_docs,
    config: SweepConfig,
    context: str,
) -> SweepRecord:
    started = time.perf_counter()
    results = {
        g: {
            n: evaluate_mcq(
                model,
                tokenizer,
                items,
                guard=guard,
                config=config.mcq,
                dataset=n,
                base=base_results.get(g, {}).get(n) if config.reuse_base else None,
                show_progress=False,
            )
            for n, items in s.items()
        }
        for g, s in sets.items()
    }
    firing = None
    if heldout_docs:
        rates = firing_rates(model, tokenizer, guard, heldout_docs, config.text)
        firing = {name: m.flagged_fraction for name, m in rates.items()}
    calibration = {
        role: {k: v for k, v in summary.to_dict().items() if not k.startswith("histogram")}
        for role, summary in (guard.provenance.calibration if guard.provenance else {}).items()
    }
    return SweepRecord(
        key=point.key,
        context=context,
        point=point,
        guard=to_jsonable(
            {
                "latent_ids": guard.latents.ids,
                "tau": guard.tau,
                "clamp": guard.clamp_value,
                "calibration": calibration,
            }
        ),
        forget=DatasetMetrics.per_set(results["forget"]),
        utility=DatasetMetrics.per_set(results["utility"]),
        forget_accuracy=pooled_accuracy(results["forget"].values()),
        utility_accuracy=pooled_accuracy(results["utility"].values()),
        firing=firing,
        seconds=time.perf_counter() - started,
    )
