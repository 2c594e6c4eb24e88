"""``experiment data-efficiency``: DSG and RMU fitted on a fraction of the forget documents (issue 15 §3).

For each fraction f and seed s, ``ceil(f * n)`` forget documents are drawn (seeded, kept in
corpus order); DSG computes that subset's statistics (the retain statistics are shared and
cached) and is fitted with the same settings as on the full set, RMU trains on the same
subset with the same steps. At f = 1 every document is used, in order, so the point is the
full-data fit exactly (one seed is enough there). Each (method, fraction, seed) is a point of
the resumable grid.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from saeguard.baselines import TrainConfig, grid_configs, unlearn
from saeguard.config import FitConfig
from saeguard.core.fit import corpus_statistics
from saeguard.core.sae import load_sae, sae_source
from saeguard.errors import require
from saeguard.experiments.common import (
    CHANCE,
    QUICK_EVAL,
    RECORDS_FILE,
    RMU_SETTINGS,
    EvalSettings,
    Harness,
    Scores,
    Statistics,
    experiment_fit,
    load_documents,
    mean_std,
    quick_fit,
    run_context,
    scores_or_none,
    settings_dict,
    train_device,
)
from saeguard.experiments.report import (
    ExperimentResult,
    Headline,
    accuracy_cell,
    bounded,
    num,
    write_experiment,
)
from saeguard.hf.fingerprint import model_identity
from saeguard.io import cache_root
from saeguard.report import Section, Table
from saeguard.runs.grid import RecordFile, run_grid

THREAT_MODEL = (
    "the defender holds only part of the forget data (or a budget for it); the question is how "
    "much the unlearning needs. DSG's guard runs at inference time and holds only where its hooks "
    "cannot be removed; RMU's weights are edited. Nothing here is adversarial: the questions are "
    "ordinary held-out ones."
)
METHODS = ("dsg", "rmu")


@dataclass
class DataEfficiencyConfig:
    """Fractions of the forget documents, seeds, and the two methods' settings."""

    forget: list[str] = field(default_factory=lambda: ["wiki:biology"])
    retain: list[str] = field(default_factory=lambda: ["wiki:not-biology", "austen"])
    forget_mcq: list[str] = field(default_factory=lambda: ["wiki:biology"])
    utility_mcq: list[str] = field(default_factory=lambda: ["wiki:geography", "wiki:history", "wiki:arts"])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    rmu_fractions: list[float] | None = field(default_factory=lambda: [0.05, 1.0])  # None: all
    rmu: dict[str, Any] = field(default_factory=lambda: dict(RMU_SETTINGS))
    fit: FitConfig = field(default_factory=experiment_fit)
    eval: EvalSettings = field(default_factory=EvalSettings)
    target_points: float = 0.05  # DSG at 5% within this of its full-data forget accuracy

    @classmethod
    def quick(cls) -> DataEfficiencyConfig:
        rmu = RMU_SETTINGS | {"steps": 60}
        return cls(
            fractions=[0.05, 0.25, 1.0],
            seeds=[0, 1],
            rmu_fractions=[1.0],
            rmu=rmu,
            fit=quick_fit(),
            eval=QUICK_EVAL,
        )

    @property
    def needs_sae(self) -> bool:
        return "dsg" in self.methods

    def validate(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        require(not unknown and bool(self.methods), f"unknown methods {unknown}: use some of {list(METHODS)}")
        require(
            bool(self.fractions) and all(0.0 < f <= 1.0 for f in self.fractions),
            f"fractions must be in (0, 1], got {self.fractions}",
        )
        require(bool(self.seeds), "seeds is empty: give at least one, e.g. [0]")
        self.fit.validate()

    def points(self) -> list[DataPoint]:
        """Every (method, fraction, seed); fraction 1 (every document, in order) once."""
        out = []
        for method in self.methods:
            allowed = self.rmu_fractions if method == "rmu" and self.rmu_fractions is not None else None
            for fraction in self.fractions:
                if allowed is not None and fraction not in allowed:
                    continue
                for seed in self.seeds[:1] if fraction == 1.0 else self.seeds:
                    out.append(DataPoint(method, float(fraction), int(seed)))
        return out


@dataclass(frozen=True)
class DataPoint:
    method: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}:fraction={self.fraction:g},seed={self.seed}"


@dataclass
class DataRecord:
    """One method fitted (or trained) on ``documents`` forget documents drawn with ``seed``."""

    key: str
    context: str
    method: str
    fraction: float
    seed: int
    documents: int = 0
    scores: Scores | None = None
    error: str | None = None
    seconds: float = 0.0
    kind: str = "saeguard-data-efficiency-record"
    version: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataRecord:
        return cls(**(dict(data) | {"scores": scores_or_none(data.get("scores"))}))


def subset(documents: list[str], fraction: float, seed: int) -> list[str]:
    """``ceil(fraction * n)`` documents drawn with ``seed``, in their original order; all at fraction 1."""
    if fraction >= 1.0:
        return list(documents)
    count = max(1, math.ceil(fraction * len(documents)))
    chosen = sorted(random.Random(f"data-efficiency:{seed}").sample(range(len(documents)), count))
    return [documents[i] for i in chosen]


@dataclass
class _Run:
    model: nn.Module
    tokenizer: Any
    sae: Any
    config: DataEfficiencyConfig
    harness: Harness
    forget: list[str]
    retain: list[str]
    context: str
    cache_dir: str | Path | None
    show_progress: bool
    full: Statistics | None = None  # the full-data statistics: inputs and the shared retain pass

    def evaluate(self, point: DataPoint, _prepared: None) -> DataRecord:
        started = time.perf_counter()
        docs = subset(self.forget, point.fraction, point.seed)
        if point.method == "dsg":
            scores = self.harness.score([self._guard(docs)], names=["dsg"])
        else:
            base = TrainConfig(seed=point.seed, device=train_device(self.model))
            method = grid_configs("rmu", {k: [v] for k, v in self.config.rmu.items()}, base=base)[0]
            trained, _ = unlearn(copy.deepcopy(self.model), self.tokenizer, "rmu", docs, self.retain, method)
            scores = self.harness.score(model=trained.eval())
        return DataRecord(
            point.key,
            self.context,
            point.method,
            point.fraction,
            point.seed,
            len(docs),
            scores,
            seconds=time.perf_counter() - started,
        )

    def _guard(self, docs: list[str]):  # -> Guardrail
        fit = self.config.fit
        if self.full is None:
            self.full = Statistics.compute(
                self.model,
                self.tokenizer,
                self.sae,
                self.forget,
                self.retain,
                fit,
                cache_dir=self.cache_dir,
                show_progress=self.show_progress,
            )
        inputs = replace(self.full.inputs, forget_docs=docs)
        cache = cache_root(self.cache_dir)
        forget = corpus_statistics(inputs, "forget", fit, cache=cache, show_progress=self.show_progress)
        return Statistics(inputs, forget, self.full.retain).guard(fit)

    def failed(self, point: DataPoint, error: str) -> DataRecord:
        return DataRecord(point.key, self.context, point.method, point.fraction, point.seed, error=error)


def run_data_efficiency(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    config: DataEfficiencyConfig | None = None,
    output: str | Path = "runs/data-efficiency",
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run (or resume) every (method, fraction, seed); records, plot and report to ``output``.

    Raises:
        SaeguardError: bad settings, DSG without an SAE, unreadable data, a set without known
            items, or ``output`` holding records of another setup.
    """
    started = time.perf_counter()
    config = config or DataEfficiencyConfig()
    config.validate()
    out = Path(output).expanduser()
    require(sae is not None or "dsg" not in config.methods, "DSG needs an SAE: pass one (--sae DIR)")
    sae_spec, sae = sae, (load_sae(sae) if sae is not None else None)
    if log is not None:
        log("loading question sets and known items")
    harness = Harness.build(
        model,
        tokenizer,
        [*config.forget_mcq, *config.utility_mcq],
        config.eval,
        cache_dir=cache_dir,
        show_progress=show_progress,
    )
    forget = load_documents(config.forget, "train", role="forget", seed=config.fit.seed)
    retain = load_documents(config.retain, "train", role="retain", seed=config.fit.seed)
    context = run_context("data-efficiency", harness, sae, config, {"forget": forget, "retain": retain})
    records = RecordFile.open(
        out / RECORDS_FILE, DataRecord.from_dict, context=context, what="data-efficiency experiment"
    )
    run = _Run(model, tokenizer, sae, config, harness, forget, retain, context, cache_dir, show_progress)
    points = config.points()
    counts = run_grid(
        records,
        points,
        evaluate=run.evaluate,
        failed=run.failed,
        description="data-efficiency",
        show_progress=show_progress,
    )
    ordered = [records.done[p.key] for p in points]
    result = ExperimentResult(
        experiment="data-efficiency",
        config=settings_dict(config),
        context=context,
        model=model_identity(model),
        sae=sae_source(sae_spec, sae) if sae is not None else None,
        known=harness.known,
        threat_model=THREAT_MODEL,
        headlines=headlines(ordered, config),
        records=ordered,
        computed=counts.computed,
        skipped=counts.skipped,
        seconds=time.perf_counter() - started,
        output=str(out),
        notes=[
            f"{len(forget)} forget documents in all; fractions {config.fractions}, seeds {config.seeds} "
            "(fraction 1: every document, once); mean ± standard deviation over seeds."
        ],
    )
    write_experiment(
        result,
        title="saeguard experiment: data efficiency",
        summary="Forget and utility accuracy of DSG and RMU fitted on a fraction of the forget documents, "
        "with the spread over seeds.",
        sections=[_table(ordered, config)],
        figures={
            "data-efficiency.png": (_plot(ordered, config), "Accuracy against the forget-data fraction")
        },
    )
    return result


def summary(records: list[DataRecord], method: str, sets: list[str]) -> dict[float, tuple[float, float, int]]:
    """Per fraction: mean and standard deviation of the pooled accuracy over seeds, and the seed count."""
    out: dict[float, list[float]] = {}
    for r in records:
        if r.method == method and r.scores is not None and (a := r.scores.accuracy(sets)) is not None:
            out.setdefault(r.fraction, []).append(a)
    return {f: (*mean_std(values), len(values)) for f, values in sorted(out.items())}


def headlines(records: list[DataRecord], config: DataEfficiencyConfig) -> list[Headline]:
    """DSG at 5% against its full-data fit: forget accuracy within ``target_points``, utility alike."""
    forget = summary(records, "dsg", config.forget_mcq)
    utility = summary(records, "dsg", config.utility_mcq)
    if 1.0 not in forget:
        return []
    out = [Headline("dsg: forget accuracy, all documents", forget[1.0][0])]
    for fraction in (f for f in sorted(forget) if f < 1.0):
        label, gap = (
            f"dsg: forget accuracy at {fraction:g} minus full data",
            forget[fraction][0] - forget[1.0][0],
        )
        target = fraction == 0.05  # issue 15: within 5 points with 5% of the documents
        out.append(
            bounded(label, gap, config.target_points, at_most=True) if target else Headline(label, gap)
        )
        out.append(
            Headline(f"dsg: utility at {fraction:g} minus full data", utility[fraction][0] - utility[1.0][0])
        )
    return out


def _table(records: list[DataRecord], config: DataEfficiencyConfig) -> Section:
    header = [
        "method",
        "fraction",
        "seed",
        "documents",
        "forget acc",
        "utility acc",
        "forget flagged",
        "error",
    ]
    rows = []
    for r in records:
        flagged = r.scores.flagged(config.forget_mcq) if r.scores else None
        rows.append(
            [
                r.method,
                f"{r.fraction:g}",
                str(r.seed),
                str(r.documents),
                accuracy_cell(r.scores, config.forget_mcq),
                accuracy_cell(r.scores, config.utility_mcq),
                num(flagged),
                r.error or "",
            ]
        )
    return Section("Every point", blocks=[Table(header, rows, caption="n = known items.")])


def _plot(records: list[DataRecord], config: DataEfficiencyConfig) -> Figure:
    fig = Figure(figsize=(9.0, 3.6))
    axes = fig.subplots(1, 2)
    for ax, sets, title in ((axes[0], config.forget_mcq, "forget"), (axes[1], config.utility_mcq, "utility")):
        for method in config.methods:
            stats = summary(records, method, sets)
            xs = list(stats)
            ax.errorbar(
                xs,
                [m for m, _, _ in stats.values()],
                yerr=[s for _, s, _ in stats.values()],
                marker="o",
                capsize=3,
                label=method,
            )
        if title == "forget":
            ax.axhline(CHANCE, color="gray", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log")
        ax.set_xticks(config.fractions, [f"{100 * f:g}%" for f in config.fractions])
        ax.minorticks_off()
        ax.set_xlabel("share of the forget documents")
        ax.set_ylabel(f"{title} accuracy (mean ± sd over seeds)")
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=7)
    return fig
