"""`saeguard experiment NAME`: the paper's experiments as commands (issue 15)."""

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
    fit_length,
    is_default_sae,
    load_cli_model,
    resolve_device,
    resolve_sae,
)

console = Console()
NAMES_HELP = "sequential, relearn, data-efficiency, zero-shot or ablation"


def experiment(
    name: Annotated[str, typer.Argument(help=f"Which experiment: {NAMES_HELP}", show_default=False)],
    model: Model = DEFAULT_MODEL,
    sae: Sae = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Folder for records, plots and report; default runs/NAME (runs/NAME-quick)"
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer points, questions and steps: a run in minutes")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="JSON file of settings over the defaults (or --quick's)"),
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads; default: torch's")] = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
) -> None:
    """Run (or resume) one experiment; records, plots and an index.html report go to OUTPUT."""
    import torch

    from saeguard.errors import SaeguardError
    from saeguard.experiments import experiment as find_experiment
    from saeguard.experiments.settings import settings_from_dict

    chosen = find_experiment(name)
    settings = chosen.config.quick() if quick else chosen.config()
    if config is not None:
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SaeguardError(f"cannot read --config {config}: {error}; pass a JSON object") from None
        settings = settings_from_dict(settings, data, f"{name} settings")
    settings.validate()
    output = check_output(output or Path("runs") / (f"{name}-quick" if quick else name), folder=True)
    device = resolve_device(device)  # a bad device fails before the default SAE trains
    needs_sae = settings.needs_sae and (model == DEFAULT_MODEL or not is_default_sae(sae))
    sae_spec = resolve_sae(sae, model) if needs_sae or not is_default_sae(sae) else None
    if threads is not None:
        torch.set_num_threads(threads)
    lm, tokenizer = load_cli_model(model, device, dtype)
    check_sae(sae_spec, lm)  # an SAE of another width fails here, not once per point
    settings.fit = fit_length(settings.fit, lm, given=())
    result = chosen.run(
        lm, tokenizer, sae_spec, settings, output, log=lambda line: console.print(f"[dim]{line}[/dim]")
    )
    from rich.table import Table

    from saeguard.experiments.report import num

    table = Table("headline", "value", "target", "met", title=f"experiment {name}")
    for headline in result.headlines:
        met = {True: "yes", False: "no", None: "-"}[headline.met]
        table.add_row(headline.label, num(headline.value), headline.target or "-", met)
    console.print(table)
    console.print(
        f"{result.computed} points computed, {result.skipped} resumed, {result.seconds:.0f} s; "
        f"report in [bold]{output}[/bold] (index.html, {name}.md, {name}.json, records.jsonl)"
    )


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment)
