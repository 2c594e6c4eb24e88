"""`saeguard eval`, `sweep` and `report`: the evaluation harness from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from typer.models import OptionInfo
from rich.console import Console
from rich.markup import escape

from saeguard.cli.fit_options import FitSettings, fit_options
from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    Device,
    Dtype,
    Model,
    Sae,
    check_output,
    fit_length,
    load_cli_model,
    resolve_device,
    resolve_sae,
)
from saeguard.eval.items import Scorer
from saeguard.eval.known import Orderings
from saeguard.io import to_jsonable

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


def _items(spec: str, limit: int | None):
    """A .jsonl path, hf:..., or a built-in offline set such as wiki:biology or cwe."""
    from saeguard.eval.items import load_mcq

    if Path(spec).expanduser().exists() or spec.startswith("hf:"):
        items = load_mcq(spec)
        return items[:limit] if limit else items
    from saeguard.data.mcq import build_mcq

    return build_mcq(spec, "heldout", limit=limit)


def eval_command(
    mcq: Annotated[
        list[str], typer.Option(help="Question set: .jsonl, hf:cais/wmdp/wmdp-bio:test, or wiki:biology")
    ],
    guard: Annotated[Path | None, typer.Option(help="Guardrail folder; omit for the plain model")] = None,
    model: Model = DEFAULT_MODEL,
    scorer: Annotated[Scorer, typer.Option(help="letter or cloze")] = DEFAULT_SCORER,
    known: Annotated[bool, typer.Option(help="Restrict to items the base model knows")] = True,
    permutations: Annotated[Orderings, typer.Option(help="Known filter orders: all (24) or cyclic (4)")] = "all",
    limit: Annotated[int | None, typer.Option(help="Items per set before filtering")] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for one JSON result per set")] = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
) -> None:
    """MCQ accuracy (known items) with and without a guardrail."""
    from saeguard.core.guardrail import Guardrail
    from saeguard.eval.known import KnownConfig, known_items
    from saeguard.eval.mcq import McqConfig, evaluate_mcq

    if output is not None:
        output = check_output(output, folder=True)
    lm, tokenizer = load_cli_model(model, device, dtype)
    loaded = Guardrail.load(guard, lm, strict=False) if guard else None
    config = McqConfig(scorer=scorer)
    for spec in mcq:
        items = _items(spec, limit)
        total = len(items)
        if known:
            known_set = known_items(
                lm, tokenizer, items, dataset=spec, config=KnownConfig(mcq=config, permutations=permutations)
            )
            items = known_set.select(items)
        name = spec.replace("/", "_").replace(":", "_")
        base = evaluate_mcq(lm, tokenizer, items, config=config, dataset=spec)
        counted = f"{len(items)} known of {total} items" if known else f"{total} items"
        line = f"{spec}: {counted}, unguarded {100 * base.accuracy:.1f}%"
        if loaded is not None:
            guarded = evaluate_mcq(
                lm,
                tokenizer,
                items,
                guard=loaded,
                config=config,
                dataset=spec,
                base=base,
                output=output / f"{name}.guarded.json" if output else None,
            )
            fired = 100 * (guarded.flagged_fraction or 0)
            line += f", guarded {100 * guarded.accuracy:.1f}% (gate fired {fired:.1f}%)"
        if output:
            base.save(output / f"{name}.base.json")
        console.print(line)


@fit_options(skip=GRID_AXES)
def sweep_command(
    forget: Annotated[str, typer.Option(help="Forget corpus (file, hf:..., or wiki:biology)")],
    retain: Annotated[str, typer.Option(help="Retain corpus")],
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
    limit: Annotated[int | None, typer.Option(help="Items per question set")] = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
    *,
    settings: FitSettings,
) -> None:
    """Sweep (p_ratio, N, c, p_dyn) over one statistics pass; resumable."""
    from saeguard.eval.mcq import McqConfig
    from saeguard.hf.corpus import resolve_corpus
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
        fit=fit_length(settings.config, lm, given="seq_len" in settings.given),
        mcq=McqConfig(scorer=scorer),
    )
    result = run_sweep(
        lm,
        tokenizer,
        sae_spec,
        forget=resolve_corpus(forget, "train"),
        retain=resolve_corpus(retain, "train"),
        forget_mcq={s: _items(s, limit) for s in forget_mcq},
        utility_mcq={s: _items(s, limit) for s in utility_mcq},
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
