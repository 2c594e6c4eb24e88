"""``experiment ablation``: static vs dynamic clamp over c, p_dyn, p_ratio and N (paper Fig. 7/11).

Each axis is varied alone around the centre (the experiment's fit settings); every other
setting stays at the centre. "dynamic" is DSG (clamp only inputs the gate flags); "static"
is the same selected latents with the gate forced on (``gate="always"``: every input is
clamped wherever a selected latent fires), so with the paper's clamp scope ("fired") the two
differ by the gate alone. One
statistics pass serves every point; selection and calibration run once per (p_ratio, N),
tau and c are re-derived per point (``core.fit.retune``), as ``runs.sweep`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from matplotlib.figure import Figure
from torch import nn

from saeguard.config import Clamp, FitConfig
from saeguard.core.fit import retune
from saeguard.core.guardrail import Guardrail
from saeguard.errors import require
from saeguard.experiments.common import (
    CHANCE,
    QUICK_EVAL,
    Record,
    Setup,
    Statistics,
    experiment_fit,
    quick_fit,
)
from saeguard.experiments.harness import EvalSettings
from saeguard.experiments.report import ExperimentResult, Headline, accuracy_cell, finish, num, or_nan
from saeguard.report import Section, Table

THREAT_MODEL = (
    "ordinary users ask ordinary questions; the ablation measures how the trade-off depends on the "
    "settings, not robustness to attacks. Both variants run at inference time and hold only where "
    "their hooks cannot be removed."
)
AXES = ("clamp", "gate_percentile", "ratio_percentile", "n_features")
LABELS = {"clamp": "clamp c", "gate_percentile": "p_dyn", "ratio_percentile": "p_ratio", "n_features": "N"}
GATES = {"dynamic": "dsg", "always": "static"}


@dataclass
class AblationConfig:
    """The values of each axis; ``fit`` is the centre every other axis stays at."""

    forget: list[str] = field(default_factory=lambda: ["wiki:biology"])
    retain: list[str] = field(default_factory=lambda: ["wiki:not-biology", "austen"])
    forget_mcq: list[str] = field(default_factory=lambda: ["wiki:biology"])
    utility_mcq: list[str] = field(default_factory=lambda: ["wiki:geography", "wiki:history", "wiki:arts"])
    clamp: list[str] = field(default_factory=lambda: ["1x", "2x", "5x", "10x", "20x", "50x"])
    gate_percentile: list[float] = field(default_factory=lambda: [80.0, 90.0, 95.0, 97.0, 99.0])
    ratio_percentile: list[float] = field(default_factory=lambda: [80.0, 90.0, 95.0, 99.0])
    n_features: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80])
    gates: list[str] = field(default_factory=lambda: ["dynamic", "always"])
    fit: FitConfig = field(default_factory=experiment_fit)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @classmethod
    def quick(cls) -> AblationConfig:
        return cls(
            clamp=["1x", "5x", "20x"],
            gate_percentile=[90.0, 95.0, 99.0],
            ratio_percentile=[90.0, 95.0],
            n_features=[10, 20, 40],
            fit=quick_fit(),
            eval=QUICK_EVAL,
        )

    needs_sae: ClassVar[bool] = True

    def validate(self) -> None:
        unknown = sorted(set(self.gates) - set(GATES))
        require(not unknown and bool(self.gates), f"unknown gates {unknown}: use dynamic and/or always")
        for axis in AXES:
            require(bool(getattr(self, axis)), f"the {axis} axis is empty: give it at least one value")
        for value in self.clamp:
            Clamp.parse(value)
        self.fit.validate()

    def points(self) -> list[AblationPoint]:
        """Each axis varied alone around the centre, for each gate; the centre once per gate."""
        centre = self.fit
        out: dict[str, AblationPoint] = {}
        for gate in self.gates:
            for axis in AXES:
                if axis == "gate_percentile" and gate == "always":
                    continue  # the static clamp has no gate to calibrate
                for value in getattr(self, axis):
                    values = {a: getattr(centre, a) for a in AXES} | {axis: value}
                    point = AblationPoint(
                        gate,
                        float(values["ratio_percentile"]),
                        int(values["n_features"]),
                        str(Clamp.parse(values["clamp"])),
                        float(values["gate_percentile"]) if gate == "dynamic" else None,
                    )
                    out.setdefault(point.key, point)
        return list(out.values())


@dataclass(frozen=True)
class AblationPoint:
    gate: str  # "dynamic" (DSG) or "always" (static clamp)
    ratio_percentile: float
    n_features: int
    clamp: str
    gate_percentile: float | None  # None: the static clamp has no gate

    @property
    def key(self) -> str:
        tail = "" if self.gate_percentile is None else f",p_dyn={self.gate_percentile:g}"
        return (
            f"{GATES[self.gate]}:p_ratio={self.ratio_percentile:g},n={self.n_features},c={self.clamp}{tail}"
        )


@dataclass(kw_only=True)
class AblationRecord(Record):
    gate: str
    ratio_percentile: float
    n_features: int
    clamp: str
    gate_percentile: float | None
    kind: str = "saeguard-ablation-record"

    def value(self, axis: str) -> float:
        """This record's value on ``axis`` (a relative clamp as its multiple)."""
        if axis == "clamp":
            return Clamp.parse(self.clamp).value
        return float(getattr(self, axis))


def static(guard: Guardrail) -> Guardrail:
    """``guard`` with its gate forced on: every input clamped where a selected latent fires.

    The clamp scope is the paper's ("fired"): with the gate forced on, clamping every token of
    every input ("input" scope) would not be a static feature clamp but a blanket edit.
    """
    return replace(guard, config=replace(guard.config, gate="always", clamp_scope="fired"))


@dataclass
class _Run:
    setup: Setup
    config: AblationConfig
    stats: Statistics | None = None  # one pass for every point

    def prepare(self, members: list[AblationPoint]) -> Guardrail:
        """Selection and calibration once per (p_ratio, N)."""
        if self.stats is None:
            self.stats = self.setup.statistics(self.setup.documents["forget"], self.setup.documents["retain"])
        first = members[0]
        fit = replace(self.config.fit, ratio_percentile=first.ratio_percentile, n_features=first.n_features)
        return self.stats.guard(fit)

    def evaluate(self, point: AblationPoint, template: Guardrail) -> AblationRecord:
        guard = retune(template, gate_percentile=point.gate_percentile, clamp=point.clamp)
        chosen = guard if point.gate == "dynamic" else static(guard)
        scores = self.setup.harness.score([chosen], names=[GATES[point.gate]])
        return AblationRecord.of(point, self.setup.context, scores=scores)


def run_ablation(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    config: AblationConfig | None = None,
    output: str | Path = "runs/ablation",
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Run (or resume) every point; records, the four-panel plot and the report go to ``output``.

    Raises:
        SaeguardError: bad settings, no SAE, unreadable data, or ``output`` holding records of
            another setup.
    """
    config = config or AblationConfig()
    setup = Setup.open(
        "ablation",
        model,
        tokenizer,
        sae,
        config,
        output,
        sets=[*config.forget_mcq, *config.utility_mcq],
        documents={"forget": (config.forget, "train"), "retain": (config.retain, "train")},
        record=AblationRecord,
        cache_dir=cache_dir,
        show_progress=show_progress,
        log=log,
    )
    run = _Run(setup, config)
    points = config.points()
    counts = setup.grid(
        points, prepare=run.prepare, group=lambda p: (p.ratio_percentile, p.n_features), evaluate=run.evaluate
    )
    ordered = setup.ordered(points)
    fit = config.fit
    return finish(
        setup,
        ordered,
        counts,
        headlines(ordered, config),
        threat_model=THREAT_MODEL,
        notes=[
            f"Centre: p_ratio {fit.ratio_percentile:g}, N {fit.n_features}, clamp {fit.clamp}, p_dyn "
            f"{fit.gate_percentile:g}, gate statistic {fit.gate_statistic}, clamp scope {fit.clamp_scope}."
        ],
        title="saeguard experiment: ablation (static vs dynamic clamp)",
        summary="Forget and utility accuracy as the clamp c, the gate percentile p_dyn, the ratio percentile "
        "p_ratio and the number of latents N vary one at a time, with and without the gate.",
        sections=[_table(ordered, config)],
        figures={"ablation.png": (_plot(ordered, config), "One axis at a time around the centre")},
    )


def along(records: list[AblationRecord], axis: str, gate: str, centre: FitConfig) -> list[AblationRecord]:
    """The records of ``gate`` that differ from the centre on ``axis`` only, ordered by its value.

    The static clamp has no gate percentile: nothing lies along that axis for it.
    """
    if axis == "gate_percentile" and gate == "always":
        return []
    fixed = {a: str(centre.clamp) if a == "clamp" else getattr(centre, a) for a in AXES if a != axis}
    if gate == "always":
        fixed.pop("gate_percentile")
    mine = [
        r
        for r in records
        if r.gate == gate and r.scores is not None and all(getattr(r, a) == v for a, v in fixed.items())
    ]
    return sorted(mine, key=lambda r: r.value(axis))


def headlines(records: list[AblationRecord], config: AblationConfig) -> list[Headline]:
    """The centre with and without the gate, and how far forget accuracy moves along each axis."""
    out = []
    for gate in config.gates:
        centre = along(records, "clamp", gate, config.fit)
        match = [r for r in centre if r.clamp == str(config.fit.clamp) and r.scores is not None]
        if match and match[0].scores is not None:
            out.append(
                Headline(
                    f"{GATES[gate]} centre: forget accuracy", match[0].scores.accuracy(config.forget_mcq)
                )
            )
            out.append(
                Headline(
                    f"{GATES[gate]} centre: utility accuracy", match[0].scores.accuracy(config.utility_mcq)
                )
            )
        for axis in AXES:
            values = [
                v
                for r in along(records, axis, gate, config.fit)
                if r.scores is not None and (v := r.scores.accuracy(config.forget_mcq)) is not None
            ]
            if len(values) > 1:
                out.append(
                    Headline(
                        f"{GATES[gate]}: forget accuracy range over {LABELS[axis]}", max(values) - min(values)
                    )
                )
    return out


def _table(records: list[AblationRecord], config: AblationConfig) -> Section:
    header = ["point", "forget acc", "utility acc", "forget flagged", "utility flagged", "error"]
    rows = []
    for r in records:
        forget = r.scores.flagged(config.forget_mcq) if r.scores else None
        utility = r.scores.flagged(config.utility_mcq) if r.scores else None
        rows.append(
            [
                r.key,
                accuracy_cell(r.scores, config.forget_mcq),
                accuracy_cell(r.scores, config.utility_mcq),
                num(forget),
                num(utility),
                r.error or "",
            ]
        )
    return Section("Every point", blocks=[Table(header, rows, caption="n = known items.")])


def _plot(records: list[AblationRecord], config: AblationConfig) -> Figure:
    fig = Figure(figsize=(9.5, 7.0))
    axes = fig.subplots(2, 2).flatten()
    colors = {"dynamic": "tab:red", "always": "tab:blue"}
    for ax, axis in zip(axes, AXES, strict=True):
        plotted: list[float] = []
        for gate in config.gates:
            mine = along(records, axis, gate, config.fit)
            xs = [r.value(axis) for r in mine]
            plotted += [x for x, r in zip(xs, mine, strict=True) if r.scores]
            for sets, style, what in (
                (config.forget_mcq, "-", "forget"),
                (config.utility_mcq, "--", "utility"),
            ):
                ys = [or_nan(r.scores.accuracy(sets)) if r.scores else math.nan for r in mine]
                ax.plot(xs, ys, style, marker="o", color=colors[gate], label=f"{GATES[gate]} {what}")
        ax.axhline(CHANCE, color="gray", lw=0.8, ls=":")
        if axis == "clamp" and any(x > 0 for x in plotted):  # every point failed: no log axis to draw
            ax.set_xscale("log")
        ax.set_xlabel(LABELS[axis] + (" (x mean forget activation)" if axis == "clamp" else ""))
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.05)
    axes[0].legend(fontsize=7)
    return fig
