"""`saeguard eval`, `sweep` and `report`: the evaluation harness from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def _items(spec: str, limit: int | None):
    """A .jsonl path, hf:..., or a built-in offline set such as wiki:biology or cwe."""
    from saeguard.eval.items import load_mcq

    if Path(spec).expanduser().exists() or spec.startswith("hf:"):
        items = load_mcq(spec)
        return items[:limit] if limit else items
    from saeguard.data.mcq import build_mcq

    return build_mcq(spec, "heldout", limit=limit)


def _model(name: str):
    import torch

    from saeguard.hf.models import load_model

    return load_model(name, dtype=torch.float32)


def eval_command(
    mcq: Annotated[
        list[str], typer.Option(help="Question set: .jsonl, hf:cais/wmdp/wmdp-bio:test, or wiki:biology")
    ],
    guard: Annotated[Path | None, typer.Option(help="Guardrail folder; omit for the plain model")] = None,
    model: str = "default",
    scorer: Annotated[str, typer.Option(help="letter or cloze")] = "cloze",
    known: Annotated[bool, typer.Option(help="Restrict to items the base model knows")] = True,
    permutations: Annotated[str, typer.Option(help="Known filter orders: all (24) or cyclic (4)")] = "all",
    limit: Annotated[int | None, typer.Option(help="Items per set before filtering")] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for one JSON result per set")] = None,
) -> None:
    """MCQ accuracy (known items) with and without a guardrail."""
    from saeguard.core.guardrail import Guardrail
    from saeguard.eval.known import KnownConfig, known_items
    from saeguard.eval.mcq import McqConfig, evaluate_mcq

    lm, tokenizer = _model(model)
    loaded = Guardrail.load(guard, lm, strict=False) if guard else None
    config = McqConfig(scorer=scorer)  # type: ignore[arg-type]
    for spec in mcq:
        items = _items(spec, limit)
        total = len(items)
        if known:
            known_set = known_items(
                lm, tokenizer, items, dataset=spec, config=KnownConfig(mcq=config, permutations=permutations)
            )  # type: ignore[arg-type]
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


def sweep_command(
    sae: Annotated[str, typer.Option(help="SAELens folder or release:sae_id")],
    forget: Annotated[str, typer.Option(help="Forget corpus (file, hf:..., or wiki:biology)")],
    retain: Annotated[str, typer.Option(help="Retain corpus")],
    forget_mcq: Annotated[list[str], typer.Option(help="Forget question set(s)")],
    utility_mcq: Annotated[list[str], typer.Option(help="Utility question set(s)")],
    output: Annotated[Path, typer.Option(help="JSONL of results; a rerun resumes it")],
    model: str = "default",
    layer: str | None = None,
    ratio_percentile: Annotated[list[float], typer.Option()] = [90.0, 95.0],  # noqa: B006
    n_features: Annotated[list[int], typer.Option()] = [10, 20, 30],  # noqa: B006
    clamp: Annotated[list[str], typer.Option(help="Absolute or relative (10x)")] = ["10x", "25x", "50x"],  # noqa: B006
    gate_percentile: Annotated[list[float], typer.Option()] = [95.0],  # noqa: B006
    scorer: str = "cloze",
    seq_len: int = 1024,
    limit: Annotated[int | None, typer.Option(help="Items per question set")] = None,
) -> None:
    """Sweep (p_ratio, N, c, p_dyn) over one statistics pass; resumable."""
    from saeguard.config import FitConfig
    from saeguard.eval.mcq import McqConfig
    from saeguard.hf.corpus import resolve_corpus
    from saeguard.runs.sweep import SweepConfig, SweepGrid, run_sweep

    if clamp is None:
        clamp = ["10x", "25x", "50x"]
    lm, tokenizer = _model(model)
    config = SweepConfig(
        grid=SweepGrid(
            ratio_percentile=ratio_percentile,
            n_features=n_features,
            clamp=list(clamp),
            gate_percentile=gate_percentile,
        ),
        fit=FitConfig(layer=layer, seq_len=seq_len),
        mcq=McqConfig(scorer=scorer),  # type: ignore[arg-type]
    )
    result = run_sweep(
        lm,
        tokenizer,
        sae,
        forget=resolve_corpus(forget, "train"),
        retain=resolve_corpus(retain, "train"),
        forget_mcq={s: _items(s, limit) for s in forget_mcq},
        utility_mcq={s: _items(s, limit) for s in utility_mcq},
        output=output,
        config=config,
    )
    console.print(json.dumps(getattr(result, "score", None) and result.score.__dict__, default=str, indent=2))


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
