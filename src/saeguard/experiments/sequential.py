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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import nn

from saeguard.baselines import TrainConfig, grid_configs, names, unlearn
from saeguard.config import FitConfig
from saeguard.core.guardrail import Guardrail
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
    or_nan,
    write_experiment,
)
from saeguard.hf.fingerprint import model_identity
from saeguard.report import Section, Table
from saeguard.runs.grid import RecordFile, run_grid

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
    utility_target: float = 0.98  # of the unguarded model's utility

    @classmethod
    def quick(cls) -> SequentialConfig:
        """Fewer chunks, questions and training steps; RMU the only gradient method."""
        rmu = RMU_SETTINGS | {"steps": 60}
        return cls(methods=["dsg", "union", "rmu"], gradient={"rmu": rmu}, fit=quick_fit(), eval=QUICK_EVAL)

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


@dataclass
class SequentialRecord:
    """One method after ``step`` requests (``step`` 0: the unguarded base model)."""

    key: str
    context: str
    method: str
    step: int
    requested: list[str]  # topics forgotten so far, in order
    scores: Scores | None = None
    error: str | None = None
    seconds: float = 0.0
    kind: str = "saeguard-sequential-record"
    version: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequentialRecord:
        return cls(**(dict(data) | {"scores": scores_or_none(data.get("scores"))}))


@dataclass
class _Run:
    """Guards and unlearned models, made on demand in request order and kept for later steps."""

    model: nn.Module
    tokenizer: Any
    sae: Any
    config: SequentialConfig
    harness: Harness
    forget: dict[str, list[str]]
    retain: list[str]
    context: str
    cache_dir: str | Path | None
    show_progress: bool
    say: Callable[[str], None]
    guards: dict[str, Guardrail] = field(default_factory=dict)
    trained: dict[str, tuple[int, nn.Module]] = field(default_factory=dict)

    def guard(self, topics: list[Topic]) -> Guardrail:
        """The guard of one request (one topic) or of the union of several (N per topic)."""
        label = "+".join(t.name for t in topics)
        if label not in self.guards:
            self.say(f"fitting the {label} guardrail")
            docs = [doc for t in topics for doc in self.forget[t.name]]
            stats = Statistics.compute(
                self.model,
                self.tokenizer,
                self.sae,
                docs,
                self.retain,
                self.config.fit,
                cache_dir=self.cache_dir,
                show_progress=self.show_progress,
            )
            fit = replace(self.config.fit, n_features=self.config.fit.n_features * len(topics))
            self.guards[label] = stats.guard(fit)
        return self.guards[label]

    def unlearned(self, method: str, step: int) -> nn.Module:
        """The model after ``method`` unlearned topics 1..step, one request after another."""
        done, model = self.trained.get(method, (0, self.model))
        require(done <= step, "internal: sequential steps must be evaluated in order")
        base = TrainConfig(seed=self.config.fit.seed, device=train_device(self.model))
        settings = {k: [v] for k, v in self.config.gradient[method].items()}
        for index in range(done, step):
            topic = self.config.topics[index]
            self.say(f"{method}: unlearning {topic.name} (request {index + 1})")
            method_config = grid_configs(method, settings, base=base)[0]
            source = model if index else copy.deepcopy(self.model)
            self.trained.pop(method, None)  # trained in place: a failure leaves no half-trained chain
            model, _ = unlearn(
                source, self.tokenizer, method, self.forget[topic.name], self.retain, method_config
            )
            model.eval()
            self.trained = {method: (index + 1, model)}  # one method's chain in memory at a time
        return model

    def evaluate(self, point: SequentialPoint, _prepared: None) -> SequentialRecord:
        started = time.perf_counter()
        requested = self.config.topics[: point.step]
        if point.method == "dsg":
            stack = [self.guard([t]) for t in requested]
            scores = self.harness.score(stack, names=[t.name for t in requested])
        elif point.method == "union":
            scores = self.harness.score([self.guard(requested)], names=["union"])
        else:
            scores = self.harness.score(model=self.unlearned(point.method, point.step))
        return SequentialRecord(
            point.key,
            self.context,
            point.method,
            point.step,
            [t.name for t in requested],
            scores,
            seconds=time.perf_counter() - started,
        )

    def failed(self, point: SequentialPoint, error: str) -> SequentialRecord:
        names = [t.name for t in self.config.topics[: point.step]]
        return SequentialRecord(point.key, self.context, point.method, point.step, names, error=error)


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
        SaeguardError: bad settings, an unreadable corpus or question set, a set without known
            items, or ``output`` holding records of another setup.
    """
    started = time.perf_counter()
    config = config or SequentialConfig()
    config.validate()
    say = log or (lambda _line: None)
    out = Path(output).expanduser()
    require(sae is not None or not config.needs_sae, "the DSG methods need an SAE: pass one (--sae DIR)")
    sae_spec, sae = sae, (load_sae(sae) if sae is not None else None)
    say("loading question sets and known items")
    harness = Harness.build(
        model,
        tokenizer,
        [*config.forget_sets, *config.utility_mcq],
        config.eval,
        cache_dir=cache_dir,
        show_progress=show_progress,
    )
    seed = config.fit.seed
    forget = {
        t.name: load_documents(t.forget, "train", role=f"forget-{t.name}", seed=seed) for t in config.topics
    }
    retain = load_documents(config.retain, "train", role="retain", seed=seed)
    context = run_context("sequential", harness, sae, config, {"retain": retain} | forget)
    records = RecordFile.open(
        out / RECORDS_FILE, SequentialRecord.from_dict, context=context, what="sequential experiment"
    )
    if BASE_KEY not in records.done:
        records.save(SequentialRecord(BASE_KEY, context, "base", 0, [], harness.score()))
    run = _Run(model, tokenizer, sae, config, harness, forget, retain, context, cache_dir, show_progress, say)
    points = [SequentialPoint(m, k) for m in config.methods for k in range(1, len(config.topics) + 1)]
    counts = run_grid(
        records,
        points,
        evaluate=run.evaluate,
        failed=run.failed,
        group=lambda point: point.method,
        description="sequential",
        show_progress=show_progress,
    )
    result = ExperimentResult(
        experiment="sequential",
        config=settings_dict(config),
        context=context,
        model=model_identity(model),
        sae=sae_source(sae_spec, sae) if sae is not None else None,
        known=harness.known,
        threat_model=THREAT_MODEL,
        headlines=headlines(records.done, config),
        records=[records.done[BASE_KEY], *(records.done[p.key] for p in points)],
        computed=counts.computed,
        skipped=counts.skipped,
        seconds=time.perf_counter() - started,
        output=str(out),
        notes=[
            f"Requests in order: {', '.join(t.name for t in config.topics)}; kept subjects: "
            f"{', '.join(config.utility_mcq)}; retain text: {', '.join(config.retain)}.",
            "'union': one guardrail refitted on the union of the forget texts so far, N latents per topic.",
        ],
    )
    write_experiment(
        result,
        title="saeguard experiment: sequential unlearning",
        summary="Forget accuracy of every requested topic and utility on kept subjects after each request, "
        "for stacked DSG guardrails, one union guardrail, and gradient baselines applied in turn.",
        sections=[_table(result.records, config)],
        figures={"sequential.png": (_plot(result.records, config), "Accuracy after each request")},
    )
    return result


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
