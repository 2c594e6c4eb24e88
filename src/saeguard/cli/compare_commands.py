"""`saeguard compare`: DSG against the static clamp, the ungated clamp and GA/GradDiff/NPO/RMU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    Device,
    Dtype,
    Model,
    Sae,
    check_output,
    check_sae,
    load_cli_model,
    resolve_device,
    resolve_sae,
)
from saeguard.eval.known import Orderings

console = Console()


def compare(
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for compare.json, records, models, plot, table")
    ] = Path("runs/compare"),
    quick: Annotated[
        bool, typer.Option("--quick", help="One tiny configuration per method: a smoke run")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON file of CompareConfig settings (grids, data, ...)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Questions per MCQ set before the known filter")] = None,
    known: Annotated[
        Orderings | None, typer.Option(help="Known-set filter: 'all' (24 orders) or 'cyclic' (4 rotations)")
    ] = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", "-m", help="Only these methods (repeatable)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads; default: torch's")] = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
) -> None:
    """Run every method over its grid with one harness; resumes from OUTPUT/records.jsonl."""
    from dataclasses import replace

    import torch

    from saeguard.errors import SaeguardError, require
    from saeguard.hf.layers import max_positions
    from saeguard.runs.compare import CompareConfig, run_compare

    if threads is not None:
        torch.set_num_threads(threads)
    settings = CompareConfig.quick() if quick else CompareConfig()
    if config is not None:
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SaeguardError(f"cannot read --config {config}: {error}; pass a JSON object") from None
        settings = CompareConfig.from_dict(data)
    settings = replace(  # options given override the settings
        settings,
        mcq_limit=settings.mcq_limit if limit is None else limit,
        known_permutations=known or settings.known_permutations,
        methods=method or settings.methods,
    )
    settings.validate()
    output = check_output(output, folder=True)
    device = resolve_device(device)  # a bad device fails before the default SAE trains
    needs_sae = any(m in ("dsg", "static", "ungated") for m in settings.methods)
    sae_spec = resolve_sae(sae, model) if needs_sae or sae is not None else None
    lm, tokenizer = load_cli_model(model, device, dtype)
    check_sae(sae_spec, lm)  # an SAE of another width fails before the known-item filter
    limit_positions = max_positions(lm)
    require(
        limit_positions is None or settings.fit.seq_len <= limit_positions,
        f"seq_len {settings.fit.seq_len} is longer than the model's {limit_positions} positions: "
        f"set seq_len to {limit_positions} or less in --config",
    )
    result = run_compare(
        lm,
        tokenizer,
        sae_spec,
        settings,
        output,
        log=lambda line: console.print(f"[dim]{line}[/dim]"),
    )
    from rich.table import Table

    from saeguard.runs.compare_report import summary_table

    _, rows = summary_table(result)
    table = Table("method", "forget ↓", "utility ↑", "eligible", "fit/train s", "eval s")
    for row in rows:  # the compact view; compare.md has every column and each chosen configuration
        table.add_row(row[0], row[3], row[4], row[2], row[7], row[8])
    console.print(table)
    console.print(
        f"{result.computed} configurations computed, {result.skipped} resumed, {result.seconds:.0f} s; "
        f"report in [bold]{output}[/bold] (compare.json, compare.md, index.html, compare.png)"
    )


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
