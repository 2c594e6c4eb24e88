"""DSG against the static clamp, the ungated clamp, GA, GradDiff, NPO and RMU on one harness.

Every configuration of every method is judged by the same calls on the same
data: ``evaluate_mcq`` on the same known items, ``corpus_loss`` on the same
held-out text, one process-wide peak-RSS reading. The SAE methods share one
statistics pass (``fit.corpus_statistics``) and one selection/calibration per
feature set (``fit.fit_from_statistics``); gradient methods train a deep copy
of the base model and are saved (``save_unlearned``) so relearning attacks can
reuse them. Finished configurations go to a JSONL file, so an interrupted run
resumes where it stopped; a file from another setup is refused.
"""

from __future__ import annotations

import copy
import gc
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from saeguard.baselines import TrainConfig, grid_configs, load_unlearned, save_unlearned, unlearn
from saeguard.config import Clamp, FitConfig
from saeguard.core.fit import corpus_statistics, fit_from_statistics, prepare_fit, retune
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import load_sae, sae_fingerprint, sae_source
from saeguard.errors import SaeguardError, require
from saeguard.eval.items import items_fingerprint
from saeguard.eval.mcq import McqResult, evaluate_mcq
from saeguard.eval.score import pooled_accuracy
from saeguard.eval.text import corpus_loss
from saeguard.hf.batching import peak_rss, reset_peak_rss
from saeguard.hf.fingerprint import model_identity
from saeguard.io import cache_root, write_jsonl
from saeguard.progress import progress_bar
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


# -- records -------------------------------------------------------------------------
def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _key(method: str, params: Mapping[str, Any]) -> str:
    return f"{method}:" + ",".join(f"{k}={_format(v)}" for k, v in params.items())


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", key)


def _gradient_plan(config: CompareConfig, method: str) -> list[tuple[str, dict[str, Any], Any]]:
    grid = config.gradient[method]
    base = TrainConfig(seed=config.seed, device=config.train_device)
    plan = []
    for cfg in grid_configs(method, grid, base=base):
        params = {k: getattr(cfg, k) if hasattr(cfg, k) else getattr(cfg.train, k) for k in grid}
        plan.append((_key(method, params), params, cfg))
    return plan


# -- measuring one configuration --------------------------------------------------------
def _metrics(results: Mapping[str, McqResult]) -> dict[str, DatasetMetrics]:
    return {
        n: DatasetMetrics(r.accuracy, r.correct, r.n_items, r.flagged_fraction) for n, r in results.items()
    }


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
    record.forget, record.utility = _metrics(results["forget"]), _metrics(results["utility"])
    record.forget_accuracy = pooled_accuracy(results["forget"].values())
    record.utility_accuracy = pooled_accuracy(results["utility"].values())
    flagged = {}
    for role, docs in setup.heldout.items():
        loss, _, _, fraction = corpus_loss(model, tokenizer, docs, config.text_config(), guard=guard)
        setattr(record, f"{role}_perplexity", math.exp(loss))
        flagged[f"{role}_text"] = fraction
    if guard is not None:
        flagged |= {
            f"{group}_mcq": sum(r.flagged_fraction * r.n_items for r in res.values())
            / sum(r.n_items for r in res.values())
            for group, res in results.items()
        }
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
    """Run (or resume) every method's grid, then write compare.json, the plot and the table."""
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
    records = read_compare_records(out / RECORDS_FILE)
    require(
        all(r.context == context for r in records),
        f"{out / RECORDS_FILE} holds a comparison of another setup (model, data or settings "
        "differ): use a new --output folder or delete it",
    )
    sae_id = sae_fingerprint(sae) if sae is not None else None
    require(
        sae_id is None or all(r.sae in (None, sae_id) for r in records),
        f"{out / RECORDS_FILE} holds SAE-method records made with another SAE: use a new --output folder",
    )
    done = {r.key: r for r in records}

    def save(record: CompareRecord) -> None:
        records.append(record)
        done[record.key] = record
        write_jsonl(out / RECORDS_FILE, records)

    guard_plan = {m: [(_key(m, p), p) for p in getattr(config, m).points(m)] for m in guard_methods}
    gradient_plan = {m: _gradient_plan(config, m) for m in config.methods if m in GRADIENT_METHODS}
    keys = [k for plan in guard_plan.values() for k, _ in plan]
    keys += [k for plan in gradient_plan.values() for k, _, _ in plan]
    require(len(keys) == len(set(keys)), "the grids repeat a configuration: remove the duplicate values")
    todo = [k for k in keys if k not in done]
    base = None
    if BASE_KEY not in done or any(k.startswith("dsg:") for k in todo):
        say("scoring the unguarded base model")
        base = _base_results(model, tokenizer, setup, out / "base", show_progress)
    if BASE_KEY not in done:
        reset_peak_rss()
        record = CompareRecord(BASE_KEY, "base", {}, context)
        _measure(model, tokenizer, setup, record)
        record.peak_rss_mb = peak_rss() / 2**20
        save(record)
    statistics_seconds = None
    with progress_bar("compare", total=len(todo), enabled=show_progress) as advance:
        if any(k in todo for plan in guard_plan.values() for k, _ in plan):
            statistics_seconds = _run_guards(
                model, tokenizer, sae, setup, guard_plan, done, save, base, context, advance, say
            )
        for method, plan in gradient_plan.items():
            for key, params, cfg in plan:
                if key not in done:
                    say(f"{key}: unlearning (a saved model is reused)")
                    save(_run_gradient(model, tokenizer, setup, key, method, params, cfg, out, context))
                    advance(1)
    ordered = [done[k] for k in keys]
    result = CompareResult(
        config=config,
        context=context,
        model=model_identity(model),
        sae=sae_source(sae_spec, sae) if sae is not None else None,
        known=setup.known,
        base=done[BASE_KEY],
        records=ordered,
        summaries=summarize(ordered, config.methods, config.utility_threshold, _base_utility(done[BASE_KEY])),
        statistics_seconds=statistics_seconds,
        computed=len(todo),
        skipped=len(keys) - len(todo),
        seconds=time.perf_counter() - started,
        output=str(out),
    )
    write_compare_report(result, out)
    return result


def _run_guards(model, tokenizer, sae, setup, plan, done, save, base, context, advance, say) -> float:
    """Every SAE configuration: one statistics pass, one fit per feature set, one tau/clamp per point."""
    fit = setup.config.fit_config()
    inputs = prepare_fit(model, tokenizer, sae, setup.forget_docs, setup.retain_docs, fit)
    sae_id = sae_fingerprint(inputs.sae)
    started = time.perf_counter()
    say("statistics of the forget and retain corpora (cached)")
    stats = {
        role: corpus_statistics(
            inputs, role, fit, cache=cache_root(setup.cache_dir), show_progress=setup.show_progress
        )
        for role in ("forget", "retain")
    }
    statistics_seconds = time.perf_counter() - started
    for method, points in plan.items():
        groups: dict[tuple, list[tuple[str, dict[str, Any]]]] = {}
        for key, params in points:
            if key not in done:
                selection = {k: v for k, v in params.items() if k not in ("clamp", "gate_percentile")}
                groups.setdefault(tuple(selection.items()), []).append((key, params))
        for group in groups.values():
            reset_peak_rss()
            began = time.perf_counter()
            configs = [_fit_config(fit, method, params) for _, params in group]
            try:
                template = Guardrail.from_result(
                    fit_from_statistics(
                        inputs,
                        stats["forget"],
                        stats["retain"],
                        configs[0],
                        show_progress=setup.show_progress,
                    )
                )
            except SaeguardError as error:  # e.g. fewer candidates than n_features: record, go on
                for key, params in group:
                    save(CompareRecord(key, method, params, context, sae=sae_id, error=str(error)))
                    advance(1)
                continue
            setup_seconds = time.perf_counter() - began
            for (key, params), cfg in zip(group, configs, strict=True):
                say(f"{key}: evaluating")
                record = CompareRecord(key, method, params, context, sae=sae_id, setup_seconds=setup_seconds)
                _measure(model, tokenizer, setup, record, guard=_retuned(template, cfg), base=base)
                record.peak_rss_mb = peak_rss() / 2**20
                save(record)
                advance(1)
                reset_peak_rss()
    return statistics_seconds


def _retuned(template, config: FitConfig):
    """The group's fitted guard with this point's tau and clamp (no forward pass)."""
    return retune(
        template,
        gate_percentile=config.gate_percentile,
        clamp=config.clamp,
    )


def _base_utility(base: CompareRecord) -> float:
    """The SAEBench threshold is relative to the base: 1.0 on known items, lower without the filter."""
    return 1.0 if base.utility_accuracy is None else base.utility_accuracy


def _fit_config(fit: FitConfig, method: str, params: Mapping[str, Any]) -> FitConfig:
    values = {k: v for k, v in params.items() if k != "clamp"}
    config = replace(fit, **GUARD_FIT[method], **values, clamp=Clamp.parse(params["clamp"]))
    config.validate()
    return config


def _run_gradient(model, tokenizer, setup, key, method, params, cfg, out: Path, context) -> CompareRecord:
    """Train a deep copy of the base (or reload a saved one), save it, measure it."""
    reset_peak_rss()
    folder = out / "models" / _slug(key)
    record = CompareRecord(key, method, params, context, artifact=str(folder))
    trained = None
    if (folder / "unlearning.json").is_file():
        trained, saved = load_unlearned(folder)
        if asdict(saved.config) != asdict(cfg):
            trained = None
        else:
            record.setup_seconds = saved.result.wall_seconds
    if trained is None:
        trained, result = unlearn(
            copy.deepcopy(model), tokenizer, method, setup.forget_docs, setup.retain_docs, cfg
        )
        record.setup_seconds = result.wall_seconds
        save_unlearned(trained, folder, result, cfg, tokenizer=tokenizer)
    trained.eval()
    _measure(trained, tokenizer, setup, record)
    record.peak_rss_mb = peak_rss() / 2**20
    del trained
    gc.collect()
    return record
