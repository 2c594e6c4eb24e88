"""`saeguard demo`: the main job on the embedded default model."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from saeguard.cli.fit_options import FitSettings, fit_options
from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    Device,
    Dtype,
    Sae,
    check_output,
    is_default_sae,
    resolve_device,
)
from saeguard.eval.known import Orderings


def _demo_default(name: str) -> str:
    """``[default: X]`` for a ``DemoConfig`` field, read from the dataclass (not written twice)."""
    from saeguard.demo import DemoConfig

    spec = next(spec for spec in fields(DemoConfig) if spec.name == name)
    return escape(f"[default: {spec.default}]")


@fit_options(default_preset="demo")
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder")] = Path("reports/demo"),
    sae: Sae = None,
    forget_items: Annotated[
        int | None,
        typer.Option(
            help=f"Biology questions to draw (before the known filter) {_demo_default('forget_items')}"
        ),
    ] = None,
    other_items: Annotated[
        int | None,
        typer.Option(help=f"Questions per retain / near-domain topic {_demo_default('items_per_other_set')}"),
    ] = None,
    permutations: Annotated[
        Orderings | None,
        typer.Option(help=f"Known-set filter: cyclic (4 orders) or all (24) {_demo_default('permutations')}"),
    ] = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
    *,
    settings: FitSettings,
) -> None:
    """Fit a biology guardrail on SmolLM2-135M-Instruct and show before/after (offline, CPU or GPU)."""
    import torch

    from saeguard.demo import DemoConfig, run_demo

    output = check_output(output, folder=True)
    chosen: dict[str, Any] = {
        "sae": None if is_default_sae(sae) else sae,
        "forget_items": forget_items,
        "items_per_other_set": other_items,
        "permutations": permutations,
    }
    config = replace(
        DemoConfig(fit=settings.config),
        **{name: value for name, value in chosen.items() if value is not None},
    )
    run_demo(config, output, device=resolve_device(device), dtype=getattr(torch, dtype))
    typer.echo(f"report: {output / 'demo.html'}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
