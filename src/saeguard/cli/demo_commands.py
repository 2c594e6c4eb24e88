"""`saeguard demo`: the main job on the embedded default model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder")] = Path("reports/demo"),
    n_features: int = 20,
    clamp: Annotated[str, typer.Option(help="Absolute (500) or relative to mean activation (10x)")] = "5x",
    gate_percentile: float = 95.0,
    gate_statistic: Annotated[
        str, typer.Option(help="activation (default) or fraction (the paper's rho)")
    ] = "activation",
    clamp_scope: Annotated[
        str, typer.Option(help="input (every token of a flagged input) or fired (the paper)")
    ] = "input",
    forget_items: Annotated[
        int, typer.Option(help="Biology questions to draw (before the known filter)")
    ] = 150,
    other_items: Annotated[int, typer.Option(help="Questions per retain / near-domain topic")] = 60,
    permutations: Annotated[
        str, typer.Option(help="Known-set filter: cyclic (4 orders) or all (24)")
    ] = "cyclic",
) -> None:
    """Fit a biology guardrail on SmolLM2-135M-Instruct and show before/after (offline, CPU)."""
    from saeguard.demo import DemoConfig, run_demo

    config = DemoConfig(
        n_features=n_features,
        clamp=clamp,
        gate_percentile=gate_percentile,
        gate_statistic=gate_statistic,
        clamp_scope=clamp_scope,
        forget_items=forget_items,
        items_per_other_set=other_items,
        permutations=permutations,
    )
    run_demo(config, output)
    typer.echo(f"report: {output / 'demo.html'}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
