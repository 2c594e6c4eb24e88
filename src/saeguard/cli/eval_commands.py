"""`saeguard eval`, `sweep` and `report`: the evaluation harness from the shell."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.models import OptionInfo

from saeguard.cli.fit_options import FitSettings, fit_options
from saeguard.cli.muse_commands import MUSE_PANEL, MuseMethods, MuseQuick, run_muse
from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    Device,
    Dtype,
    GuardSae,
    Model,
    Sae,
    calibration_warnings,
    check_output,
    fit_length,
    load_cli_model,
    note,
    print_table,
    resolve_device,
    resolve_sae,
)
from saeguard.eval.items import Scorer, mcq_set
from saeguard.eval.items import as_items as as_mcq_items
from saeguard.eval.known import Orderings
from saeguard.eval.score import format_accuracy, wilson_interval
from saeguard.io import to_jsonable

if TYPE_CHECKING:
    from torch import nn

    from saeguard.core.guardrail import Guardrail
    from saeguard.eval.items import McqItem
    from saeguard.eval.known import KnownConfig
    from saeguard.eval.mcq import McqConfig

console = Console()
GRID_PANEL = "Sweep grid (SweepGrid; repeat an option for several values)"
GRID_AXES = ("ratio_percentile", "n_features", "clamp", "gate_percentile")
DEFAULT_SCORER: Scorer = "cloze"


def _grid_option(name: str, what: str) -> OptionInfo:
    """An option for one grid axis; its shown default is SweepGrid's, read from the dataclass."""
    from dataclasses import fields

    from saeguard.config import field_default
    from saeguard.runs.sweep import SweepGrid

    spec = next(spec for spec in fields(SweepGrid) if spec.name == name)
    default = ", ".join(str(v) for v in field_default(spec))
    return typer.Option(help=f"{what} {escape(f'[default: {default}]')}", rich_help_panel=GRID_PANEL)


def eval_command(
    mcq: Annotated[
        list[str] | None,
        typer.Option(help="Question set: .jsonl, hf:cais/wmdp/wmdp-bio:test, or wiki:biology"),
    ] = None,
    guard: Annotated[Path | None, typer.Option(help="Guardrail folder; omit for the plain model")] = None,
    model: Model = DEFAULT_MODEL,
    sae: GuardSae = None,
    scorer: Annotated[Scorer, typer.Option(help="letter or cloze")] = DEFAULT_SCORER,
    known: Annotated[bool, typer.Option(help="Restrict to items the base model knows")] = True,
    permutations: Annotated[
        Orderings,
        typer.Option(
            help="Known filter orders: all (24, the protocol) or cyclic (4 rotations, ~6x cheaper); "
            "a time estimate is printed before a long filter"
        ),
    ] = "all",
    limit: Annotated[int | None, typer.Option(min=1, help="Items per set before filtering")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Folder for eval.json (the table) and one JSON result per set")
    ] = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
    muse: Annotated[
        str | None,
        typer.Option(
            help="MUSE Books instead of MCQs: forget this Austen novel (e.g. prideprejudice), keep the "
            "others; the original model, DSG (--guard, or fitted with the default SAE) and "
            "GA/GradDiff/NPO/RMU side by side (--limit: samples per metric); docs/muse.md",
            rich_help_panel=MUSE_PANEL,
        ),
    ] = None,
    method: MuseMethods = None,
    quick: MuseQuick = False,
) -> None:
    """MCQ accuracy with and without a guardrail (counts, Wilson 95% intervals); --muse BOOK: MUSE Books."""
    if sae is not None and guard is None:
        raise typer.BadParameter("--sae is a TopK guardrail's SAE: give it with --guard", param_hint="--sae")
    if muse is not None:  # issue 16: MUSE-style metrics, DSG beside the gradient baselines
        if mcq:
            raise typer.BadParameter("give --mcq or --muse, not both (two separate runs)", param_hint="--mcq")
        index = run_muse(
            muse,
            guard=guard,
            sae=sae,
            model=model,
            methods=method,
            quick=quick,
            limit=limit,
            output=output,
            device=device,
            dtype=dtype,
            console=console,
        )
        typer.echo(f"report: {index}")  # one line, never wrapped: a path to copy
        return
    if not mcq:
        raise typer.BadParameter("give at least one --mcq question set (or --muse BOOK)", param_hint="--mcq")
    if method or quick:
        raise typer.BadParameter("--method and --quick belong to --muse BOOK", param_hint="--method/--quick")
    from saeguard.core.guardrail import Guardrail
    from saeguard.eval.known import KnownConfig
    from saeguard.eval.mcq import McqConfig
    from saeguard.io import write_json

    if output is not None:
        output = check_output(output, folder=True)
    lm, tokenizer = load_cli_model(model, device, dtype)
    loaded = Guardrail.load(guard, lm, strict=False, sae=sae) if guard else None
    config = McqConfig(scorer=scorer)
    known_config = KnownConfig(mcq=config, permutations=permutations) if known else None
    rows = [
        _evaluate_set(lm, tokenizer, spec, mcq_set(spec, limit), loaded, config, known_config, output)
        for spec in mcq
    ]
    print_table(console, _table(rows, scorer, known_config))
    for row in rows:
        for warning in row.warnings:
            typer.secho(f"WARNING: {row.spec}: {warning}", fg=typer.colors.YELLOW, err=True)
    if output is not None:
        path = write_json(
            output / "eval.json", {"kind": "saeguard-eval", "sets": [row.to_dict() for row in rows]}
        )
        console.print(f"results: {path}")


@dataclass
class _SetRow:
    """One question set's counts: all items unguarded, known items unguarded and guarded, gate firings."""

    spec: str
    scorer: str
    items: int
    base_all: tuple[int, int]  # (correct, questions) unguarded on every item
    known: int | None = None  # known items (None: no known filter)
    orders: int | None = None  # option orders the known filter required
    base_known: tuple[int, int] | None = None
    guarded: tuple[int, int] | None = None  # on the known items (all items without the filter)
    fired: tuple[int, int] | None = None  # (questions flagged, questions)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def accuracy(pair: tuple[int, int] | None) -> dict[str, Any] | None:
            if pair is None or pair[1] == 0:
                return None
            low, high = wilson_interval(*pair)
            return {"correct": pair[0], "n": pair[1], "accuracy": pair[0] / pair[1], "wilson95": [low, high]}

        return {
            "set": self.spec,
            "scorer": self.scorer,
            "items": self.items,
            "known": self.known,
            "known_orders": self.orders,
            "unguarded_all_items": accuracy(self.base_all),
            "unguarded_known": accuracy(self.base_known),
            "guarded": accuracy(self.guarded),
            "guarded_on": "all items" if self.known is None else "known items",
            "gate_fired": None if self.fired is None else {"flagged": self.fired[0], "n": self.fired[1]},
            "warnings": list(self.warnings),
        }


MIN_KNOWN_ITEMS = 30
"""Fewer known items than this make an accuracy too uncertain to compare (see its interval)."""
ESTIMATE_ABOVE_SECONDS = 20.0


def _evaluate_set(
    lm: nn.Module,
    tokenizer: Any,
    spec: str,
    items: list[McqItem],
    guard: Guardrail | None,
    config: McqConfig,
    known_config: KnownConfig | None,
    output: Path | None,
) -> _SetRow:
    """Evaluate one question set: unfiltered base, known filter (estimated first), known base, guarded."""
    from saeguard.eval.known import estimate_known_cost, known_cache_path, known_items
    from saeguard.eval.mcq import evaluate_mcq
    from saeguard.progress import format_seconds

    name = spec.replace("/", "_").replace(":", "_")
    base_all = evaluate_mcq(lm, tokenizer, items, config=config, dataset=spec)
    row = _SetRow(spec, config.scorer, len(items), (base_all.n_correct, base_all.n_items))
    chosen, base = items, base_all
    if known_config is not None:
        if not known_cache_path(lm, tokenizer, as_mcq_items(items, source=spec), known_config).is_file():
            estimate = estimate_known_cost(lm, tokenizer, items, config=known_config, dataset=spec)
            if estimate.seconds >= ESTIMATE_ABOVE_SECONDS:
                note(
                    f"known-set filter for {spec}: {estimate.items} questions x {estimate.orders} orders at "
                    f"{estimate.seconds_per_question:.2f} s each: up to {format_seconds(estimate.seconds)} "
                    "(questions stop at their first miss; cached afterwards)"
                )
        known_set = known_items(lm, tokenizer, items, dataset=spec, config=known_config)
        row.known, row.orders = known_set.count, len(known_config.orders)
        if known_set.count == 0:
            row.warnings.append(
                f"no known items (of {len(items)}): the base model answers none under all "
                f"{row.orders} orders, so there is no accuracy to compare; use more or easier questions"
            )
            return row
        chosen = known_set.select(items)
        base = evaluate_mcq(lm, tokenizer, chosen, config=config, dataset=spec, show_progress=False)
        row.base_known = (base.n_correct, base.n_items)
        if known_set.count < MIN_KNOWN_ITEMS:
            low, high = wilson_interval(base.n_correct, base.n_items)
            row.warnings.append(
                f"only {known_set.count} known items (under {MIN_KNOWN_ITEMS}): an accuracy on them is "
                f"uncertain by tens of points (their unguarded {100 * base.accuracy:.0f}% has a 95% interval "
                f"of {100 * low:.0f}-{100 * high:.0f}%); use more questions (--limit) for a number to compare"
            )
    if output is not None:
        base.save(output / f"{name}.base.json")
    if guard is not None:
        guarded = evaluate_mcq(
            lm,
            tokenizer,
            chosen,
            guard=guard,
            config=config,
            dataset=spec,
            base=base,
            output=output / f"{name}.guarded.json" if output else None,
        )
        row.guarded = (guarded.n_correct, guarded.n_items)
        row.fired = (sum(bool(p.flagged) for p in guarded.predictions), guarded.n_items)
    return row


SCORERS = {
    "cloze": "cloze scorer: length-normalised log-likelihood of each option's text",
    "letter": "letter scorer: probability of the answer letter A-D",
}


def _table(rows: list[_SetRow], scorer: str, known_config: KnownConfig | None) -> Table:
    """The eval table: count, accuracy and Wilson 95% interval in every accuracy cell."""
    filtered = known_config is not None
    scope = "known" if filtered else "all items"
    title = f"MCQ accuracy ({SCORERS[scorer]})"
    if known_config is not None:
        title += f"; known = answered right under all {len(known_config.orders)} option orders"
    table = Table(title=title, caption="correct/questions = accuracy [Wilson 95% interval]")
    for column in ("set", "items", "known", "unguarded, all items", f"unguarded, {scope}"):
        table.add_column(column, justify="left" if column == "set" else "right")
    table.add_column(f"guarded, {scope}", justify="right")
    table.add_column("gate fired", justify="right")
    for row in rows:
        own = row.base_known if filtered else row.base_all
        fired = (
            "-"
            if row.fired is None
            else f"{row.fired[0]}/{row.fired[1]} = {100 * row.fired[0] / row.fired[1]:.1f}%"
        )
        table.add_row(
            escape(row.spec),
            str(row.items),
            "-" if row.known is None else str(row.known),
            format_accuracy(*row.base_all),
            "-" if own is None else format_accuracy(*own),
            "-" if row.guarded is None else format_accuracy(*row.guarded),
            fired,
        )
    return table


@fit_options(skip=GRID_AXES)
def sweep_command(
    forget: Annotated[
        list[str], typer.Option(help="Forget corpus (file, hf:..., or wiki:biology); repeat to mix sources")
    ],
    retain: Annotated[list[str], typer.Option(help="Retain corpus, same forms; repeat to mix sources")],
    forget_mcq: Annotated[list[str], typer.Option(help="Forget question set(s)")],
    utility_mcq: Annotated[list[str], typer.Option(help="Utility question set(s)")],
    output: Annotated[Path, typer.Option(help="JSONL of results; a rerun resumes it")],
    sae: Sae = None,
    model: Model = DEFAULT_MODEL,
    ratio_percentile: Annotated[
        list[float] | None, _grid_option("ratio_percentile", "p_ratio values")
    ] = None,
    n_features: Annotated[list[int] | None, _grid_option("n_features", "N values")] = None,
    clamp: Annotated[
        list[str] | None, _grid_option("clamp", "Clamps: absolute (500) or relative (10x)")
    ] = None,
    gate_percentile: Annotated[list[float] | None, _grid_option("gate_percentile", "p_dyn values")] = None,
    scorer: Annotated[Scorer, typer.Option(help="letter or cloze")] = DEFAULT_SCORER,
    limit: Annotated[int | None, typer.Option(min=1, help="Items per question set")] = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
    *,
    settings: FitSettings,
) -> None:
    """Sweep (p_ratio, N, c, p_dyn) over one statistics pass; resumable."""
    from saeguard.eval.mcq import McqConfig
    from saeguard.hf.corpus import corpus_mix
    from saeguard.runs.sweep import SweepConfig, SweepGrid, run_sweep

    default = SweepGrid()  # an axis not given (or given empty) keeps SweepGrid's values
    grid = SweepGrid(
        ratio_percentile=list(ratio_percentile or default.ratio_percentile),
        n_features=list(n_features or default.n_features),
        clamp=list(clamp or default.clamp),
        gate_percentile=list(gate_percentile or default.gate_percentile),
    )
    grid.points()  # check every clamp and axis before the model loads
    output = check_output(output, folder=False)
    device = resolve_device(device)  # a bad device fails before the default SAE trains
    sae_spec = resolve_sae(sae, model)
    lm, tokenizer = load_cli_model(model, device, dtype)
    config = SweepConfig(
        grid=grid,
        fit=fit_length(settings.config, lm, given=settings.given),
        mcq=McqConfig(scorer=scorer),
    )
    with calibration_warnings():
        result = run_sweep(
            lm,
            tokenizer,
            sae_spec,
            forget=corpus_mix(forget, "train"),
            retain=corpus_mix(retain, "train"),
            forget_mcq={s: mcq_set(s, limit) for s in forget_mcq},
            utility_mcq={s: mcq_set(s, limit) for s in utility_mcq},
            output=output,
            config=config,
        )
    console.print(json.dumps(to_jsonable(result.score), indent=2))  # no Python repr of the best Outcome


def report_command(
    sweep: Annotated[Path, typer.Option(help="Sweep JSONL from `saeguard sweep`")],
    output: Annotated[Path, typer.Option(help="Report folder")],
    guard: Annotated[Path | None, typer.Option(help="Guardrail whose rho distributions to plot")] = None,
) -> None:
    """Pareto plot, rho distributions and a per-configuration table as HTML + markdown."""
    from saeguard.core.guardrail import Guardrail
    from saeguard.runs.sweep_report import write_report

    loaded = Guardrail.load(guard) if guard else None
    distributions = (
        {k.removesuffix("_rho"): v.tolist() for k, v in loaded.distributions.items()} if loaded else None
    )
    path = write_report(
        output,
        sweep=sweep,
        distributions=distributions,
        tau=loaded.tau if loaded else None,
        guard=loaded,
    )
    console.print(f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_command)
    app.command(name="sweep")(sweep_command)
    app.command(name="report")(report_command)
