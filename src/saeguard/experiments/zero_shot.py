"""``experiment zero-shot``: latents chosen by their descriptions, no forget data (issue 15 §4).

The paper's zero-shot DSG searched Neuronpedia's descriptions of Gemma Scope latents for
"Biology" and set tau by hand (0.6 bio, 0.2 cyber). Here every latent is described by its
strongest activations on general text that holds no forget document
(``experiments.descriptions``; imported descriptions can be added), the ``N`` latents whose
examples best match the topic's keywords are selected, and tau is the ``gate_percentile``-th
percentile of rho on retain prompts (as a fit calibrates it) or set by hand. The clamp and
the activation statistic use the latents' mean activation on the general text, since no
forget text exists. The Fisher selection (with forget data, same settings) is measured on
the same harness for comparison, with the overlap of the two latent sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from saeguard.config import FitConfig
from saeguard.core.fit import prepare_fit
from saeguard.core.guardrail import Guardrail
from saeguard.errors import require
from saeguard.experiments.common import QUICK_EVAL, Record, Setup, experiment_fit, quick_fit
from saeguard.experiments.descriptions import (
    DescribeSettings,
    SelectedLatent,
    describe_latents,
    import_descriptions,
    zero_shot_guard,
)
from saeguard.experiments.harness import EvalSettings, Scores
from saeguard.experiments.report import ExperimentResult, Headline, accuracy_cell, finish, num
from saeguard.io import cache_root
from saeguard.report import Section, Table

THREAT_MODEL = (
    "the defender has no forget data at all, only a topic name and keywords; users ask ordinary "
    "questions. The guard runs at inference time, so it holds only where its hooks cannot be removed."
)
#: Matched at word starts (``descriptions.keyword_pattern``), so a stem must not start common words:
#: "gene" matched "general" and "generic", and on the default model picked latents firing on "general".
BIOLOGY_KEYWORDS = [
    "biolog",
    "cell",
    "protein",
    "genes",
    "genetic",
    "genom",
    "dna",
    "rna",
    "enzyme",
    "bacteri",
    "virus",
    "species",
    "organism",
    "tissue",
    "disease",
    "blood",
    "molecul",
    "chromosom",
    "mitochondri",
    "membrane",
]


@dataclass
class ZeroShotConfig:
    """The topic query, the general text latents are described on, and how tau is set."""

    keywords: list[str] = field(default_factory=lambda: list(BIOLOGY_KEYWORDS))
    general: list[str] = field(default_factory=lambda: ["wordnet", "wiki:not-biology", "austen"])
    descriptions: str | None = None  # imported descriptions (JSON/JSONL: index, description)
    max_frequency: float = 0.05  # skip latents firing on more general-text tokens than this
    hand_taus: list[float] = field(default_factory=lambda: [0.6])  # the paper's bio value (fraction rho)
    describe: DescribeSettings = field(default_factory=DescribeSettings)
    retain: list[str] = field(default_factory=lambda: ["wiki:not-biology", "austen"])
    forget: list[str] = field(default_factory=lambda: ["wiki:biology"])  # the Fisher comparison only
    fisher: bool = True
    forget_mcq: list[str] = field(default_factory=lambda: ["wiki:biology"])
    utility_mcq: list[str] = field(default_factory=lambda: ["wiki:geography", "wiki:history", "wiki:arts"])
    fit: FitConfig = field(default_factory=experiment_fit)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @classmethod
    def quick(cls) -> ZeroShotConfig:
        describe = DescribeSettings(max_chunks=200)
        return cls(describe=describe, fit=quick_fit(), eval=QUICK_EVAL)

    needs_sae: ClassVar[bool] = True

    def validate(self) -> None:
        require(bool(self.keywords), "keywords is empty: give the topic's words, e.g. ['cell', 'protein']")
        require(0.0 < self.max_frequency <= 1.0, f"max_frequency must be in (0, 1], got {self.max_frequency}")
        self.fit.validate()

    def points(self) -> list[ZeroShotPoint]:
        rule = f"p{self.fit.gate_percentile:g}"
        points = [
            ZeroShotPoint("zero-shot", rule),
            *(ZeroShotPoint("zero-shot", f"{t:g}") for t in self.hand_taus),
        ]
        return points + ([ZeroShotPoint("fisher", rule)] if self.fisher else [])


@dataclass(frozen=True)
class ZeroShotPoint:
    method: str  # "zero-shot" or "fisher"
    tau_rule: str  # "p95": a retain percentile; "0.6": by hand

    @property
    def key(self) -> str:
        return f"{self.method}:tau={self.tau_rule}"


@dataclass(kw_only=True)
class ZeroShotRecord(Record):
    method: str
    tau_rule: str
    selected: list[SelectedLatent] = field(default_factory=list)  # zero-shot points only
    kind: str = "saeguard-zero-shot-record"

    @classmethod
    def parse(cls, data: dict[str, Any]) -> dict[str, Any]:
        return super().parse(data) | {"selected": [SelectedLatent(**s) for s in data.get("selected", [])]}


@dataclass
class _Run:
    setup: Setup
    config: ZeroShotConfig

    def prepare(self, members: list[ZeroShotPoint]) -> tuple[Guardrail, list[SelectedLatent]]:
        config, setup, docs = self.config, self.setup, self.setup.documents
        if members[0].method == "fisher":
            return setup.statistics(docs["forget"], docs["retain"]).guard(config.fit), []
        inputs = prepare_fit(
            setup.model, setup.tokenizer, setup.sae, docs["general"], docs["retain"], config.fit
        )
        inputs = replace(inputs, sae_spec=setup.sae_spec)  # the provenance names where the SAE came from
        descriptions = describe_latents(
            setup.model,
            setup.tokenizer,
            inputs.sae,
            inputs.layer,
            docs["general"],
            config.describe,
            cache=cache_root(setup.cache_dir),
            show_progress=setup.show_progress,
        )
        if config.descriptions is not None:
            imported = import_descriptions(config.descriptions)
            for d in descriptions.latents:
                d.text = imported.get(d.latent, "")
        return zero_shot_guard(
            inputs,
            descriptions,
            config.keywords,
            config.fit,
            max_frequency=config.max_frequency,
            show_progress=setup.show_progress,
        )

    def evaluate(
        self, point: ZeroShotPoint, prepared: tuple[Guardrail, list[SelectedLatent]]
    ) -> ZeroShotRecord:
        guard, selected = prepared
        if not point.tau_rule.startswith("p"):
            guard = replace(guard, tau=float(point.tau_rule))
        scores = self.setup.harness.score([guard], names=[point.method])
        return ZeroShotRecord.of(point, self.setup.context, scores=scores, selected=selected)


def run_zero_shot(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    config: ZeroShotConfig | None = None,
    output: str | Path = "runs/zero-shot",
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run (or resume) zero-shot selection and the Fisher comparison; records and report to ``output``.

    Raises:
        SaeguardError: bad settings, no SAE, unreadable data or descriptions, keywords no latent
            matches, or ``output`` holding records of another setup.
    """
    config = config or ZeroShotConfig()
    documents = {"general": (config.general, "train"), "retain": (config.retain, "train")}
    setup = Setup.open(
        "zero-shot",
        model,
        tokenizer,
        sae,
        config,
        output,
        sets=[*config.forget_mcq, *config.utility_mcq],
        documents=documents | ({"forget": (config.forget, "train")} if config.fisher else {}),
        record=ZeroShotRecord,
        cache_dir=cache_dir,
        show_progress=show_progress,
        log=log,
    )
    run = _Run(setup, config)
    points = config.points()
    counts = setup.grid(points, prepare=run.prepare, group=lambda p: p.method, evaluate=run.evaluate)
    ordered = setup.ordered(points)
    return finish(
        setup,
        ordered,
        counts,
        headlines(ordered, config, setup.harness.score()),
        threat_model=THREAT_MODEL,
        notes=[
            f"Keywords: {', '.join(config.keywords)}; latents described on {', '.join(config.general)} "
            f"(train split, no forget document); imported descriptions: {config.descriptions or 'none'}."
        ],
        title="saeguard experiment: zero-shot latent selection",
        summary="Forget and utility accuracy of latents chosen by their descriptions (no forget data), "
        "with tau from retain data or by hand, against the Fisher selection.",
        sections=_sections(ordered, config),
        figures={},
    )


def overlap(records: list[ZeroShotRecord]) -> tuple[int, float] | None:
    """Shared latents and Jaccard index of the zero-shot and Fisher selections (None: one is missing)."""
    ids = {r.method: set(r.scores.guards[0].latent_ids) for r in records if r.scores is not None}
    if "zero-shot" not in ids or "fisher" not in ids:
        return None
    shared = ids["zero-shot"] & ids["fisher"]
    return len(shared), len(shared) / len(ids["zero-shot"] | ids["fisher"])


def headlines(records: list[ZeroShotRecord], config: ZeroShotConfig, base: Scores) -> list[Headline]:
    out = [Headline("unguarded forget accuracy", base.accuracy(config.forget_mcq))]
    for r in records:
        if r.scores is not None:
            out.append(Headline(f"{r.key}: forget accuracy", r.scores.accuracy(config.forget_mcq)))
            out.append(Headline(f"{r.key}: utility accuracy", r.scores.accuracy(config.utility_mcq)))
    shared = overlap(records)
    if shared is not None:
        out.append(
            Headline(f"latents shared with the Fisher selection (of {config.fit.n_features})", shared[0])
        )
        out.append(Headline("Jaccard overlap with the Fisher selection", shared[1]))
    return out


def _sections(records: list[ZeroShotRecord], config: ZeroShotConfig) -> list[Section]:
    rows = []
    for r in records:
        guard = r.scores.guards[0] if r.scores and r.scores.guards else None
        rows.append(
            [
                r.key,
                accuracy_cell(r.scores, config.forget_mcq),
                accuracy_cell(r.scores, config.utility_mcq),
                num(r.scores.flagged(config.forget_mcq) if r.scores else None),
                num(guard.tau if guard else None),
                r.error or "",
            ]
        )
    header = ["point", "forget acc", "utility acc", "forget flagged", "tau", "error"]
    sections = [Section("Every point", blocks=[Table(header, rows, caption="n = known items.")])]
    chosen = next((r.selected for r in records if r.selected), [])
    if chosen:
        rows = [[str(s.latent), num(s.score), f"{s.frequency:.4f}", " | ".join(s.contexts)] for s in chosen]
        table = Table(["latent", "match", "frequency", "strongest contexts"], rows)
        sections.append(Section("Zero-shot latents", blocks=[table]))
    return sections
