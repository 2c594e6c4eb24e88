"""``experiment data-efficiency``: DSG and RMU fitted on a fraction of the forget documents (issue 15 §3).

For each fraction f and seed s, ``ceil(f * n)`` forget documents are drawn (seeded, kept in
corpus order); DSG computes that subset's statistics (the retain statistics are shared and
cached) and is fitted with the same settings as on the full set, RMU trains on the same
subset with the same steps. At f = 1 every document is used, in order, so the point is the
full-data fit exactly (one seed is enough there). Each (method, fraction, seed) is a point of
the resumable grid.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from saeguard.config import FitConfig
from saeguard.core.guardrail import Guardrail
from saeguard.errors import require
from saeguard.experiments.common import (
    CHANCE,
    QUICK_EVAL,
    RMU_SETTINGS,
    Record,
    Setup,
    Statistics,
    experiment_fit,
    mean_std,
    quick_fit,
)
from saeguard.experiments.harness import EvalSettings
from saeguard.experiments.report import ExperimentResult, Headline, accuracy_cell, bounded, finish, num
from saeguard.report import Section, Table

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
        """The target's fraction (5%) and the full data, two seeds; RMU once, as it unlearned."""
        return cls(
            fractions=[0.05, 0.25, 1.0], seeds=[0, 1], rmu_fractions=[1.0], fit=quick_fit(), eval=QUICK_EVAL
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


@dataclass(kw_only=True)
class DataRecord(Record):
    """One method fitted (or trained) on ``documents`` forget documents drawn with ``seed``."""

    method: str
    fraction: float
    seed: int
    documents: int = 0
    kind: str = "saeguard-data-efficiency-record"


def subset(documents: list[str], fraction: float, seed: int) -> list[str]:
    """``ceil(fraction * n)`` documents drawn with ``seed``, in their original order; all at fraction 1."""
    if fraction >= 1.0:
        return list(documents)
    count = max(1, math.ceil(fraction * len(documents)))
    chosen = sorted(random.Random(f"data-efficiency:{seed}").sample(range(len(documents)), count))
    return [documents[i] for i in chosen]


@dataclass
class _Run:
    setup: Setup
    config: DataEfficiencyConfig
    full: Statistics | None = None  # the full-data statistics: inputs and the shared retain pass

    def evaluate(self, point: DataPoint, _prepared: None) -> DataRecord:
        docs = subset(self.setup.documents["forget"], point.fraction, point.seed)
        if point.method == "dsg":
            scores = self.setup.harness.score([self._guard(docs)], names=["dsg"])
        else:
            retain = self.setup.documents["retain"]
            trained = self.setup.unlearned("rmu", self.config.rmu, docs, retain, seed=point.seed)
            scores = self.setup.harness.score(model=trained)
        return DataRecord.of(point, self.setup.context, documents=len(docs), scores=scores)

    def _guard(self, docs: list[str]) -> Guardrail:
        if self.full is None:
            self.full = self.setup.statistics(self.setup.documents["forget"], self.setup.documents["retain"])
        fit, setup = self.config.fit, self.setup
        stats = self.full.with_forget(docs, fit, cache_dir=setup.cache_dir, show_progress=setup.show_progress)
        return stats.guard(fit)


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
        SaeguardError: bad settings, DSG without an SAE, unreadable data, or ``output``
            holding records of another setup.
    """
    config = config or DataEfficiencyConfig()
    setup = Setup.open(
        "data-efficiency",
        model,
        tokenizer,
        sae,
        config,
        output,
        sets=[*config.forget_mcq, *config.utility_mcq],
        documents={"forget": (config.forget, "train"), "retain": (config.retain, "train")},
        record=DataRecord,
        cache_dir=cache_dir,
        show_progress=show_progress,
        log=log,
    )
    points = config.points()
    counts = setup.grid(points, evaluate=_Run(setup, config).evaluate)
    ordered = setup.ordered(points)
    return finish(
        setup,
        ordered,
        counts,
        headlines(ordered, config),
        threat_model=THREAT_MODEL,
        notes=[
            f"{len(setup.documents['forget'])} forget documents in all; fractions {config.fractions}, seeds "
            f"{config.seeds} (fraction 1: every document, once); mean ± standard deviation over seeds."
        ],
        title="saeguard experiment: data efficiency",
        summary="Forget and utility accuracy of DSG and RMU fitted on a fraction of the forget documents, "
        "with the spread over seeds.",
        sections=[_table(ordered, config)],
        figures={
            "data-efficiency.png": (_plot(ordered, config), "Accuracy against the forget-data fraction")
        },
    )


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
