"""``experiment sequential``: unlearning requests that arrive one after another (issue 15 §1).

Topic k's request adds one guardrail (fitted on topic k's forget text and the shared
retain text); after each request every guardrail so far is attached together and every
topic and kept subject is measured. The "union" variant refits one guardrail on the
union of the forget texts so far (N latents per topic). Gradient baselines unlearn
topic k starting from the model that unlearned topics 1..k-1. Every (method, step) is a
point of the resumable grid (``runs.grid``); unlearned models are kept in memory only,
so a resumed gradient method retrains its earlier steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from saeguard.baselines import names
from saeguard.config import FitConfig
from saeguard.core.guardrail import Guardrail
from saeguard.errors import require
from saeguard.experiments.common import (
    CHANCE,
    QUICK_EVAL,
    RMU_SETTINGS,
    Record,
    Setup,
    experiment_fit,
    quick_fit,
)
from saeguard.experiments.harness import EvalSettings
from saeguard.experiments.report import (
    ExperimentResult,
    Headline,
    accuracy_cell,
    bounded,
    finish,
    num,
    or_nan,
)
from saeguard.report import Section, Table

THREAT_MODEL = (
    "requests to forget more topics arrive one at a time while the model is deployed. DSG adds "
    "one guardrail per request and all of them run together; the weights never change, so this "
    "holds only where the hooks cannot be removed (whoever holds the weights can drop them). "
    "Gradient baselines edit the weights once per request, starting from the previous request's model."
)
BASE_KEY = "base"
GUARD_METHODS = ("dsg", "union")


@dataclass
class Topic:
    """One unlearning request: a name, its forget corpora (train split) and its question set."""

    name: str
    forget: list[str]
    mcq: str


def _default_topics() -> list[Topic]:
    return [
        Topic("biology", ["wiki:biology"], "wiki:biology"),
        Topic("cyber", ["cwe"], "cwe"),
        Topic("history", ["wiki:history"], "wiki:history"),
    ]


#: Retain text for every request: Wikipedia topics far from the three requested ones, plus Austen.
DEFAULT_RETAIN = ["wiki:arts", "wiki:geography", "wiki:everyday-life", "wiki:mathematics", "austen"]
#: One configuration per gradient method a request: GradDiff from its small grid (20 steps), RMU
#: as it unlearned in docs/compare.md.
SMALL_GRADIENT: dict[str, dict[str, Any]] = {
    "graddiff": {"retain_weight": 1.0, "steps": 20, "batch_size": 4, "seq_len": 128, "learning_rate": 5e-5},
    "rmu": dict(RMU_SETTINGS),
}


@dataclass
class SequentialConfig:
    """The requests in order, the shared retain text, the kept subjects and the methods compared."""

    topics: list[Topic] = field(default_factory=_default_topics)
    retain: list[str] = field(default_factory=lambda: list(DEFAULT_RETAIN))
    utility_mcq: list[str] = field(default_factory=lambda: ["wiki:geography", "wiki:arts"])
    methods: list[str] = field(default_factory=lambda: ["dsg", "union", "graddiff", "rmu"])
    gradient: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(SMALL_GRADIENT))
    fit: FitConfig = field(default_factory=experiment_fit)
    eval: EvalSettings = field(default_factory=EvalSettings)
    utility_target: float = field(default=0.98, metadata={"min": 0, "max": 1})  # share of the base utility

    @classmethod
    def quick(cls) -> SequentialConfig:
        """Fewer chunks and questions; DSG stacked and the union guard only (no gradient chain).

        The gradient chains cost ~2 min (RMU) to ~6 min (GradDiff) per request on 2 cores, over
        the --quick budget on their own (docs/experiments.md).
        """
        return cls(methods=["dsg", "union"], fit=quick_fit(), eval=QUICK_EVAL)

    def validate(self) -> None:
        require(bool(self.topics), "sequential needs at least one topic: list the requests in order")
        labels = [t.name for t in self.topics]
        require(len(set(labels)) == len(labels), f"topic names repeat in {labels}: give each a new name")
        known = set(GUARD_METHODS) | set(names())
        unknown = sorted(set(self.methods) - known)
        require(not unknown, f"unknown methods {unknown}: use some of {sorted(known)}")
        missing = [m for m in self.methods if m not in GUARD_METHODS and m not in self.gradient]
        require(not missing, f"no settings for {missing}: add them to 'gradient' or drop the methods")
        require(bool(self.retain), "retain is empty: give the corpora every guard is calibrated on")
        self.fit.validate()

    @property
    def needs_sae(self) -> bool:
        return any(m in GUARD_METHODS for m in self.methods)

    @property
    def forget_sets(self) -> list[str]:
        return [t.mcq for t in self.topics]


@dataclass(frozen=True)
class SequentialPoint:
    method: str
    step: int  # requests handled so far (1..k)

    @property
    def key(self) -> str:
        return f"{self.method}:step={self.step}"


@dataclass(kw_only=True)
class SequentialRecord(Record):
    """One method after ``step`` requests (``step`` 0: the unguarded base model)."""

    method: str
    step: int
    requested: list[str] = field(default_factory=list)  # topics forgotten so far, in order
    kind: str = "saeguard-sequential-record"


@dataclass
class _Run:
    """Guards and unlearned models, made on demand in request order and kept for later steps."""

    setup: Setup
    config: SequentialConfig
    guards: dict[str, Guardrail] = field(default_factory=dict)
    trained: dict[str, tuple[int, nn.Module]] = field(default_factory=dict)

    def forget(self, topic: Topic) -> list[str]:
        return self.setup.documents[f"forget-{topic.name}"]

    def guard(self, topics: list[Topic]) -> Guardrail:
        """The guard of one request (one topic) or of the union of several (N per topic)."""
        label = "+".join(t.name for t in topics)
        if label not in self.guards:
            self.setup.say(f"fitting the {label} guardrail")
            docs = [doc for t in topics for doc in self.forget(t)]
            stats = self.setup.statistics(docs, self.setup.documents["retain"])
            fit = replace(self.config.fit, n_features=self.config.fit.n_features * len(topics))
            self.guards[label] = stats.guard(fit)
        return self.guards[label]

    def unlearned(self, method: str, step: int) -> nn.Module:
        """The model after ``method`` unlearned topics 1..step, one request after another."""
        done, model = self.trained.get(method, (0, self.setup.model))
        require(done <= step, "internal: sequential steps must be evaluated in order")
        for index in range(done, step):
            topic = self.config.topics[index]
            self.setup.say(f"{method}: unlearning {topic.name} (request {index + 1})")
            self.trained.pop(method, None)  # trained in place: a failure leaves no half-trained chain
            model = self.setup.unlearned(
                method,
                self.config.gradient[method],
                self.forget(topic),
                self.setup.documents["retain"],
                start=model if index else None,
            )
            self.trained = {method: (index + 1, model)}  # one method's chain in memory at a time
        return model

    def evaluate(self, point: SequentialPoint, _prepared: None) -> SequentialRecord:
        requested = self.config.topics[: point.step]
        harness = self.setup.harness
        if point.method == "dsg":
            scores = harness.score([self.guard([t]) for t in requested], names=[t.name for t in requested])
        elif point.method == "union":
            scores = harness.score([self.guard(requested)], names=["union"])
        else:
            scores = harness.score(model=self.unlearned(point.method, point.step))
        return self.record(point, scores=scores)

    def record(self, point: SequentialPoint, **values: Any) -> SequentialRecord:
        requested = [t.name for t in self.config.topics[: point.step]]
        return SequentialRecord.of(point, self.setup.context, requested=requested, **values)


def run_sequential(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    config: SequentialConfig | None = None,
    output: str | Path = "runs/sequential",
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run (or resume) the sequence for every method; write records, plot and report to ``output``.

    Raises:
        SaeguardError: bad settings, an unreadable corpus or question set, or ``output``
            holding records of another setup.
    """
    config = config or SequentialConfig()
    documents = {"retain": (config.retain, "train")} | {
        f"forget-{t.name}": (t.forget, "train") for t in config.topics
    }
    setup = Setup.open(
        "sequential",
        model,
        tokenizer,
        sae,
        config,
        output,
        sets=[*config.forget_sets, *config.utility_mcq],
        documents=documents,
        record=SequentialRecord,
        cache_dir=cache_dir,
        show_progress=show_progress,
        log=log,
    )
    if BASE_KEY not in setup.records.done:
        base = setup.harness.score()
        setup.records.save(
            SequentialRecord(key=BASE_KEY, context=setup.context, method="base", step=0, scores=base)
        )
    run = _Run(setup, config)
    points = [SequentialPoint(m, k) for m in config.methods for k in range(1, len(config.topics) + 1)]
    counts = setup.grid(
        points, evaluate=run.evaluate, failed=lambda p, e: run.record(p, error=e), group=lambda p: p.method
    )
    records = [setup.records.done[BASE_KEY], *setup.ordered(points)]
    return finish(
        setup,
        records,
        counts,
        headlines(setup.records.done, config),
        threat_model=THREAT_MODEL,
        notes=[
            f"Requests in order: {', '.join(t.name for t in config.topics)}; kept subjects: "
            f"{', '.join(config.utility_mcq)}; retain text: {', '.join(config.retain)}.",
            "'union': one guardrail refitted on the union of the forget texts so far, N latents per topic.",
        ],
        title="saeguard experiment: sequential unlearning",
        summary="Forget accuracy of every requested topic and utility on kept subjects after each request, "
        "for stacked DSG guardrails, one union guardrail, and gradient baselines applied in turn.",
        sections=[_table(records, config)],
        figures={"sequential.png": (_plot(records, config), "Accuracy after each request")},
    )


def headlines(done: Mapping[str, SequentialRecord], config: SequentialConfig) -> list[Headline]:
    """Per method after the last request: the worst forgotten topic and utility relative to the base."""
    base = done[BASE_KEY].scores
    assert base is not None
    base_utility = base.accuracy(config.utility_mcq) or 1.0
    last = len(config.topics)
    out = []
    for method in config.methods:
        record = done.get(f"{method}:step={last}")
        if record is None or record.scores is None:
            continue
        forgotten = [a for name in config.forget_sets if (a := record.scores.accuracy([name])) is not None]
        worst = max(forgotten) if forgotten else None
        kept = record.scores.accuracy(config.utility_mcq)
        utility = kept / base_utility if kept is not None else None
        out.append(
            bounded(
                f"{method}: worst forget accuracy after {last} requests", worst, CHANCE + 0.10, at_most=True
            )
        )
        out.append(
            bounded(
                f"{method}: utility / unguarded after {last} requests",
                utility,
                config.utility_target,
                at_most=False,
            )
        )
    return out


def _table(records: list[SequentialRecord], config: SequentialConfig) -> Section:
    header = ["method", "step", *[t.name for t in config.topics], "utility", "utility flagged", "error"]
    rows = []
    for r in records:
        flagged = r.scores.flagged(config.utility_mcq) if r.scores else None
        cells = [accuracy_cell(r.scores, [t.mcq]) for t in config.topics]
        rows.append(
            [r.method, str(r.step), *cells, accuracy_cell(r.scores, config.utility_mcq)]
            + [num(flagged), r.error or ""]
        )
    caption = "n = known items; 'utility flagged': share of kept-subject questions some gate flagged."
    return Section("Every step", blocks=[Table(header, rows, caption=caption)])


def _plot(records: list[SequentialRecord], config: SequentialConfig) -> Figure:
    panels = [(t.name, [t.mcq]) for t in config.topics] + [("utility", config.utility_mcq)]
    fig = Figure(figsize=(3.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    base = next(r for r in records if r.method == "base")
    for ax, (title, sets) in zip(axes, panels, strict=True):
        for method in config.methods:
            mine = [r for r in records if r.method == method and r.scores is not None]
            ys = [or_nan(r.scores.accuracy(sets)) for r in mine if r.scores is not None]
            ax.plot([r.step for r in mine], ys, marker="o", label=method)
        if base.scores is not None:
            ax.axhline(or_nan(base.scores.accuracy(sets)), color="black", lw=0.8, ls="--", label="unguarded")
        ax.axhline(CHANCE, color="gray", lw=0.8, ls=":", label="chance")
        ax.set_title(title if title == "utility" else f"forget: {title}", fontsize=10)
        ax.set_xlabel("requests so far")
        ax.set_xticks(range(1, len(config.topics) + 1))
        ax.set_ylim(-0.02, 1.05)
    axes[0].set_ylabel("accuracy")
    axes[-1].legend(fontsize=7, loc="lower right")
    return fig
