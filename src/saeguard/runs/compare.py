"""DSG against the static clamp, the ungated clamp, GA, GradDiff, NPO and RMU on one harness.

Every configuration of every method is judged by the same calls on the same
data: ``evaluate_mcq`` on the same known items, ``corpus_loss`` on the same
held-out text, one process-wide peak-RSS reading. The SAE methods share one
statistics pass (``fit.corpus_statistics``) and one selection/calibration per
latent set (``fit.fit_from_statistics``); gradient methods train a deep copy
of the base model and are saved (``save_unlearned``) so relearning attacks can
reuse them. Every configuration is a point of one resumable grid
(``runs.grid``): finished configurations go to a JSONL file, so an interrupted
run resumes where it stopped, and a file from another setup is refused.
"""

from __future__ import annotations

import copy
import gc
import math
import re
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from saeguard.baselines import TrainConfig, grid_configs, load_unlearned, save_unlearned, unlearn
from saeguard.config import Clamp, FitConfig
from saeguard.core.fit import FitInputs, corpus_statistics, fit_from_statistics, prepare_fit, retune
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import load_sae, sae_fingerprint, sae_source
from saeguard.core.statistics import FeatureStatistics
from saeguard.errors import require
from saeguard.eval.items import items_fingerprint
from saeguard.eval.mcq import McqResult, evaluate_mcq
from saeguard.eval.score import pooled_accuracy
from saeguard.eval.text import corpus_loss
from saeguard.hf.batching import peak_rss, reset_peak_rss
from saeguard.hf.fingerprint import model_identity
from saeguard.io import cache_root
from saeguard.runs.compare_setup import CompareSetup, build_setup, setup_context
from saeguard.runs.compare_types import (
    BASE_KEY,
    GRADIENT_METHODS,
    GUARD_FIT,
    GUARD_METHODS,
    METHODS,
    RECORDS_FILE,
    RESULT_FILE,
    CompareConfig,
    CompareRecord,
    CompareResult,
    GuardGrid,
    MethodSummary,
    read_compare_records,
    summarize,
)
from saeguard.runs.grid import RecordFile, key_of, run_grid
from saeguard.runs.sweep import DatasetMetrics

__all__ = [
    "METHODS",
    "RESULT_FILE",
    "CompareConfig",
    "CompareRecord",
    "CompareResult",
    "GuardGrid",
    "MethodSummary",
    "read_compare_records",
    "run_compare",
]


# -- the grid ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Point:
    """One configuration of one method."""

    key: str  # "method:name=value,..."
    method: str
    params: dict[str, Any]
    train: Any = None  # gradient methods: the config ``unlearn`` takes


def _plan(config: CompareConfig) -> list[_Point]:
    """Every configuration: the SAE methods' grids, then the gradient methods' (``config.methods`` order)."""
    points = [
        _Point(key_of(method, params), method, params)
        for method in config.methods
        if method in GUARD_METHODS
        for params in getattr(config, method).points(method)
    ]
    base = TrainConfig(seed=config.fit.seed, device=config.train_device)
    for method in (m for m in config.methods if m in GRADIENT_METHODS):
        grid = config.gradient[method]
        for cfg in grid_configs(method, grid, base=base):
            params = {k: getattr(cfg, k) if hasattr(cfg, k) else getattr(cfg.train, k) for k in grid}
            points.append(_Point(key_of(method, params), method, params, cfg))
    return points


def _pooled_flagged(results: Mapping[str, McqResult]) -> float:
    """Share of items the gate flagged, pooled over the question sets of one guarded evaluation."""
    flagged = 0.0
    for result in results.values():
        assert result.flagged_fraction is not None  # evaluate_mcq records it whenever a guard is given
        flagged += result.flagged_fraction * result.n_items
    return flagged / sum(r.n_items for r in results.values())


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", key)


# -- measuring one configuration --------------------------------------------------------
def _measure(model, tokenizer, setup: CompareSetup, record: CompareRecord, *, guard=None, base=None) -> None:
    """Fill ``record`` with MCQ accuracies and held-out perplexities: the one harness for all methods."""
    started = time.perf_counter()
    config = setup.config
    results = {
        group: {
            name: evaluate_mcq(
                model,
                tokenizer,
                items,
                guard=guard,
                config=config.mcq_config(),
                dataset=name,
                base=(base or {}).get(group, {}).get(name),  # evaluate_mcq ignores it for gate="always"
                show_progress=False,
            )
            for name, items in sets.items()
        }
        for group, sets in setup.sets.items()
    }
    record.forget = DatasetMetrics.per_set(results["forget"])
    record.utility = DatasetMetrics.per_set(results["utility"])
    record.forget_accuracy = pooled_accuracy(results["forget"].values())
    record.utility_accuracy = pooled_accuracy(results["utility"].values())
    flagged = {}
    for role, docs in setup.heldout.items():
        loss, _, _, fraction = corpus_loss(model, tokenizer, docs, config.text_config(), guard=guard)
        setattr(record, f"{role}_perplexity", math.exp(loss))
        flagged[f"{role}_text"] = fraction
    if guard is not None:
        flagged |= {f"{group}_mcq": _pooled_flagged(res) for group, res in results.items()}
        record.guard = {
            "latent_ids": [int(i) for i in guard.latents.ids],
            "tau": float(guard.tau),
            "clamp": float(guard.clamp_value),
            "gate": guard.config.gate,
            "flagged": flagged,
        }
    record.eval_seconds = time.perf_counter() - started


def _base_results(
    model, tokenizer, setup: CompareSetup, folder: Path, show_progress: bool
) -> dict[str, dict[str, McqResult]]:
    """Unguarded results per set, kept on disk so a resumed run does not re-score the base."""
    identity = model_identity(model)["fingerprint"]
    out: dict[str, dict[str, McqResult]] = {}
    for group, sets in setup.sets.items():
        out[group] = {}
        for name, items in sets.items():
            path = folder / f"{group}-{_slug(name)}.json"
            if path.is_file():
                cached = McqResult.load(path)
                if (
                    cached.dataset_fingerprint == items_fingerprint(items)
                    and cached.model.get("fingerprint") == identity
                    and asdict(cached.config) == asdict(setup.config.mcq_config())
                ):
                    out[group][name] = cached
                    continue
            out[group][name] = evaluate_mcq(
                model,
                tokenizer,
                items,
                config=setup.config.mcq_config(),
                dataset=name,
                output=path,
                show_progress=show_progress,
            )
    return out


# -- the comparison ---------------------------------------------------------------------
def run_compare(
    model: nn.Module,
    tokenizer,
    sae,
    config: CompareConfig | None = None,
    output: str | Path = "runs/compare",
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> CompareResult:
    """Run (or resume) every method's grid, then write compare.json, the plot and the table.

    Raises:
        SaeguardError: bad settings, SAE methods without an SAE, or ``output`` holding records
            of another setup or SAE. A configuration that fails with a ``SaeguardError`` is
            recorded with its error and the others still run.
    """
    from saeguard.runs.compare_report import write_compare_report

    started = time.perf_counter()
    config = config or CompareConfig()
    config.validate()
    say = log or (lambda _line: None)
    out = Path(output).expanduser()
    guard_methods = [m for m in config.methods if m in GUARD_METHODS]
    require(sae is not None or not guard_methods, f"{guard_methods} need an SAE: pass one (--sae DIR)")
    sae_spec, sae = sae, (load_sae(sae) if sae is not None else None)
    say("loading question sets and known items")
    setup = build_setup(model, tokenizer, config, cache_dir, show_progress)
    context = setup_context(model, tokenizer, setup)
    records = RecordFile.open(
        out / RECORDS_FILE,
        CompareRecord.from_dict,
        context=context,
        what="comparison",
        fix="use a new --output folder or delete it",
    )
    sae_id = sae_fingerprint(sae) if sae is not None else None
    require(
        sae_id is None or all(r.sae in (None, sae_id) for r in records.records),
        f"{records.path} holds SAE-method records made with another SAE: use a new --output folder",
    )
    points = _plan(config)
    todo = records.pending(points)
    base = None
    if BASE_KEY not in records.done or any(p.method == "dsg" for p in todo):
        say("scoring the unguarded base model")
        base = _base_results(model, tokenizer, setup, out / "base", show_progress)
    if BASE_KEY not in records.done:
        reset_peak_rss()
        record = CompareRecord(BASE_KEY, "base", {}, context)
        _measure(model, tokenizer, setup, record)
        record.peak_rss_mb = peak_rss() / 2**20
        records.save(record)
    guards = None
    if any(p.method in GUARD_METHODS for p in todo):
        guards = _GuardFits.start(model, tokenizer, sae, setup, say)
    run = _Run(model, tokenizer, setup, context, sae_id, base, guards, out, say)
    counts = run_grid(
        records,
        points,
        prepare=run.prepare,
        group=run.group,
        evaluate=run.evaluate,
        failed=run.failed,
        description="compare",
        show_progress=show_progress,
    )
    ordered = [records.done[p.key] for p in points]
    result = CompareResult(
        config=config,
        context=context,
        model=model_identity(model),
        sae=sae_source(sae_spec, sae) if sae is not None else None,
        known=setup.known,
        base=records.done[BASE_KEY],
        records=ordered,
        summaries=summarize(
            ordered, config.methods, config.utility_threshold, _base_utility(records.done[BASE_KEY])
        ),
        statistics_seconds=guards.seconds if guards is not None else None,
        computed=counts.computed,
        skipped=counts.skipped,
        seconds=time.perf_counter() - started,
        output=str(out),
    )
    write_compare_report(result, out)
    return result


@dataclass
class _GuardFits:
    """The SAE methods' shared work: one statistics pass per corpus (cached on disk)."""

    inputs: FitInputs
    stats: dict[str, FeatureStatistics]
    seconds: float  # the statistics pass of this run

    @classmethod
    def start(cls, model, tokenizer, sae, setup: CompareSetup, say: Callable[[str], None]) -> _GuardFits:
        fit = setup.config.fit
        inputs = prepare_fit(model, tokenizer, sae, setup.forget_docs, setup.retain_docs, fit)
        started = time.perf_counter()
        say("statistics of the forget and retain corpora (cached)")
        cache = cache_root(setup.cache_dir)
        stats = {
            role: corpus_statistics(inputs, role, fit, cache=cache, show_progress=setup.show_progress)
            for role in ("forget", "retain")
        }
        return cls(inputs, stats, time.perf_counter() - started)


@dataclass
class _Run:
    """The per-group and per-point steps ``run_grid`` calls for a comparison."""

    model: nn.Module
    tokenizer: Any
    setup: CompareSetup
    context: str
    sae_id: str | None
    base: dict[str, dict[str, McqResult]] | None
    guards: _GuardFits | None
    out: Path
    say: Callable[[str], None]

    def group(self, point: _Point) -> Hashable:
        """SAE configurations differing only in tau or the clamp share one fit; others stand alone."""
        if point.method not in GUARD_METHODS:
            return point.key
        selection = tuple((k, v) for k, v in point.params.items() if k not in ("clamp", "gate_percentile"))
        return (point.method, selection)

    def prepare(self, group: list[_Point]) -> tuple[Guardrail, float] | None:
        """SAE methods: the group's guard (selection + calibration, once) and the seconds it took."""
        if group[0].method not in GUARD_METHODS:
            return None
        assert self.guards is not None  # started whenever an SAE configuration is pending
        reset_peak_rss()
        began = time.perf_counter()
        config = _fit_config(self.setup.config.fit, group[0].method, group[0].params)
        result = fit_from_statistics(
            self.guards.inputs,
            self.guards.stats["forget"],
            self.guards.stats["retain"],
            config,
            show_progress=self.setup.show_progress,
        )
        return Guardrail.from_result(result), time.perf_counter() - began

    def evaluate(self, point: _Point, fitted: tuple[Guardrail, float] | None) -> CompareRecord:
        if fitted is None:
            self.say(f"{point.key}: unlearning (a saved model is reused)")
            return _run_gradient(self.model, self.tokenizer, self.setup, point, self.out, self.context)
        self.say(f"{point.key}: evaluating")
        template, seconds = fitted
        record = CompareRecord(
            point.key, point.method, point.params, self.context, sae=self.sae_id, setup_seconds=seconds
        )
        config = _fit_config(self.setup.config.fit, point.method, point.params)
        guard = retune(template, gate_percentile=config.gate_percentile, clamp=config.clamp)
        _measure(self.model, self.tokenizer, self.setup, record, guard=guard, base=self.base)
        record.peak_rss_mb = peak_rss() / 2**20
        reset_peak_rss()
        return record

    def failed(self, point: _Point, error: str) -> CompareRecord:
        sae = self.sae_id if point.method in GUARD_METHODS else None
        return CompareRecord(point.key, point.method, point.params, self.context, sae=sae, error=error)


def _base_utility(base: CompareRecord) -> float:
    """The SAEBench threshold is relative to the base: 1.0 on known items, lower without the filter."""
    return 1.0 if base.utility_accuracy is None else base.utility_accuracy


def _fit_config(fit: FitConfig, method: str, params: Mapping[str, Any]) -> FitConfig:
    values = {k: v for k, v in params.items() if k != "clamp"}
    config = replace(fit, **GUARD_FIT[method], **values, clamp=Clamp.parse(params["clamp"]))
    config.validate()
    return config


def _run_gradient(model, tokenizer, setup, point: _Point, out: Path, context: str) -> CompareRecord:
    """Train a deep copy of the base (or reload a saved one), save it, measure it."""
    reset_peak_rss()
    folder = out / "models" / _slug(point.key)
    record = CompareRecord(point.key, point.method, point.params, context, artifact=str(folder))
    trained = None
    if (folder / "unlearning.json").is_file():
        trained, saved = load_unlearned(folder)
        if asdict(saved.config) != asdict(point.train):
            trained = None
        else:
            record.setup_seconds = saved.result.wall_seconds
    if trained is None:
        trained, result = unlearn(
            copy.deepcopy(model), tokenizer, point.method, setup.forget_docs, setup.retain_docs, point.train
        )
        record.setup_seconds = result.wall_seconds
        save_unlearned(trained, folder, result, point.train, tokenizer=tokenizer)
    trained.eval()
    _measure(trained, tokenizer, setup, record)
    record.peak_rss_mb = peak_rss() / 2**20
    del trained
    gc.collect()
    return record
