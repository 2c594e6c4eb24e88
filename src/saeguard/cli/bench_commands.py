"""`saeguard bench`: speed and memory figures, each a ratio against a same-run baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def bench(
    model: Annotated[
        str, typer.Option(help="'default' (embedded SmolLM2-135M) or 'tiny' (random, seconds)")
    ] = ("default"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer shapes and repeats (~14 min on 2 busy cores)")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report as JSON here")
    ] = None,
    section: Annotated[
        list[str] | None, typer.Option("--section", "-s", help="Run only these sections (repeatable)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads (1 is steadiest on a busy machine); default: torch's")
    ] = None,
    layer: Annotated[int | None, typer.Option(help="Hook layer; default: the default SAE's")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Benchmark fit, guard, generation and evaluation speed and memory; print a table."""
    from rich.markup import escape

    from saeguard.bench import SECTIONS, BenchConfig, render_table, run_bench
    from saeguard.cli.options import print_table

    config = BenchConfig(
        model=model,
        quick=quick,
        sections=tuple(section) if section else SECTIONS,
        threads=threads,
        layer=layer,
        device=device,
        output=output,
    )
    report = run_bench(config, log=lambda line: console.print(f"[dim]{escape(line)}[/dim]"))
    print_table(console, render_table(report))
    if output is not None:
        console.print(f"report written to [bold]{output}[/bold]")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
