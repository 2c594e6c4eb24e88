"""`saeguard fit`, `generate` and `inspect`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from saeguard.cli.fit_options import FitSettings, fit_options
from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    Device,
    Dtype,
    GuardSae,
    Model,
    Sae,
    TorchDtype,
    calibration_warnings,
    check_output,
    check_replace,
    fit_length,
    load_cli_model,
    resolve_device,
    resolve_sae,
)

if TYPE_CHECKING:
    from saeguard.core.fit_report import FitReport
    from saeguard.distributed import Launch

console = Console()


@fit_options()
def fit(
    forget: Annotated[
        list[str],
        typer.Option(
            help="Forget corpus: .txt, .jsonl, hf:name:split, or a built-in name (wiki:biology); "
            "repeat to mix sources"
        ),
    ],
    retain: Annotated[
        list[str],
        typer.Option(
            help="Retain corpus, same forms as --forget; repeat to mix (--retain mine.txt "
            "--retain wiki:geography)"
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the guardrail artifact")],
    sae: Sae = None,
    model: Model = DEFAULT_MODEL,
    force: Annotated[bool, typer.Option("--force", help="Replace a guardrail already in --output")] = False,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
    *,
    settings: FitSettings,
) -> None:
    """Select forget latents, calibrate the gate, write the artifact; then say what the fit did.

    Under ``torchrun --nproc-per-node N -m saeguard fit ...`` (or ``accelerate launch --multi_gpu``)
    the forward passes are divided over the N processes and rank 0 prints and writes.
    """
    from saeguard.core.artifact import is_replaceable_guardrail
    from saeguard.distributed import process_group, rank_device, torchrun_launch

    launch = torchrun_launch()  # WORLD_SIZE > 1: a data-parallel fit
    output = check_output(output, folder=True)  # before the model loads and the fit runs
    device = resolve_device(device)  # a bad device fails before the default SAE trains
    check_replace(output, force=force, is_ours=is_replaceable_guardrail, what="guardrail")
    if launch is None:
        _fit_and_report(forget, retain, output, sae, model, device, dtype, settings)
        return
    device = rank_device(launch, device)
    with process_group(launch, device), _silenced(not launch.is_main):
        _fit_and_report(forget, retain, output, sae, model, device, dtype, settings, launch=launch)


def _fit_and_report(
    forget: list[str],
    retain: list[str],
    output: Path,
    sae: str | None,
    model: str,
    device: str,
    dtype: TorchDtype,
    settings: FitSettings,
    *,
    launch: Launch | None = None,
) -> None:
    """The fit itself; with a ``launch``, data-parallel, and only rank 0 writes and prints."""
    from saeguard.core.fit_report import fit_report
    from saeguard.core.guardrail import Guardrail
    from saeguard.distributed import fit_data_parallel, main_process_first
    from saeguard.hf.corpus import corpus_mix

    with nullcontext() if launch is None else main_process_first():  # one rank fills the caches
        sae_spec = resolve_sae(sae, model)
        lm, tokenizer = load_cli_model(model, device, dtype)
    config = fit_length(settings.config, lm, given=settings.given)
    forget_spec, retain_spec = corpus_mix(forget, "train"), corpus_mix(retain, "train")
    with calibration_warnings():  # printed after the summary, one yellow line
        if launch is None:
            guard = Guardrail.fit(
                lm, tokenizer, sae_spec, forget=forget_spec, retain=retain_spec, config=config
            )
        else:
            guard = fit_data_parallel(
                lm, tokenizer, sae_spec, forget=forget_spec, retain=retain_spec, config=config
            )
            if not launch.is_main:
                return
        path = guard.save(output)
        console.print(f"guardrail written to [bold]{path}[/bold]")
        _print_summary(guard.summary(), fit_report(guard))


def generate(
    guard: Annotated[Path, typer.Option(help="Guardrail folder from `saeguard fit`")],
    prompt: Annotated[list[str], typer.Option(help="Prompt (repeat for a batch)")],
    model: Model = DEFAULT_MODEL,
    max_new_tokens: int = 64,
    sae: GuardSae = None,
    compare: Annotated[bool, typer.Option(help="Also show the unguarded answer")] = True,
    strict: Annotated[
        bool, typer.Option(help="Refuse a model whose weights differ from the fitted one")
    ] = True,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
) -> None:
    """Generate with the guard (and without, to compare); say what the gate decided and when."""
    from saeguard.core.guardrail import Guardrail, row_decisions
    from saeguard.eval.generation import decision_line, flipped_token

    lm, tokenizer = load_cli_model(model, device, dtype)
    loaded = Guardrail.load(guard, lm, strict=strict, sae=sae)
    texts, records = loaded.generate(lm, tokenizer, prompt, max_new_tokens=max_new_tokens)
    plain = (
        loaded.generate(lm, tokenizer, prompt, max_new_tokens=max_new_tokens, guarded=False)[0]
        if compare
        else None
    )
    decisions = row_decisions(records)
    for row, text in enumerate(texts):
        console.rule(f"prompt {row + 1}", characters="-")
        console.print(f"[bold]prompt:[/bold] {escape(prompt[row])}", soft_wrap=True)
        if row < len(decisions):
            line = decision_line(decisions[row], loaded.tau, flipped_token(tokenizer, text, decisions[row]))
            console.print(f"[bold]gate:[/bold] {escape(line)}", soft_wrap=True)
        console.print(f"[bold]guarded:[/bold] {escape(text)}", soft_wrap=True)
        if plain is not None:
            console.print(f"[bold]unguarded:[/bold] {escape(plain[row])}", soft_wrap=True)


def inspect(
    guard: Annotated[Path, typer.Argument(help="Guardrail folder")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Features, scores, tau, the fit's corpus sizes and the calibration distributions of an artifact."""
    from saeguard.core.fit_report import fit_report
    from saeguard.core.guardrail import Guardrail

    loaded = Guardrail.load(guard, need_sae=False)  # a TopK guard's SAE is not needed to inspect it
    summary = loaded.summary()
    report = fit_report(loaded)
    if loaded.provenance is not None:
        summary["selection"] = loaded.provenance.selection.to_dict()
    if as_json:
        summary["fit_report"] = report.to_dict() if report is not None else None
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_summary(summary, report)
    if report is not None and report.warning is not None:
        typer.secho(f"WARNING: {report.warning}", fg=typer.colors.YELLOW, err=True)


@contextmanager
def _silenced(enabled: bool) -> Iterator[None]:
    """stdout and stderr go nowhere inside the block when ``enabled`` (ranks other than 0).

    An error still reaches the user: it is printed after the block, by ``main``.
    """
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
        yield


def _print_summary(summary: dict, report: FitReport | None = None) -> None:
    """The guard's settings, its selected latents (when in ``summary``) and what its fit did."""
    console.print(
        f"layer {summary['layer']}  features {summary['n_features']}  tau {summary['tau']:.4f}  "
        f"clamp {summary['clamp']} (c = {summary['clamp_value']:.3g})  SAE {summary['architecture']}"
    )
    selection = summary.get("selection") or {}
    if selection:
        table = Table(
            "latent", "forget importance", "retain importance", "ratio", "forget freq", "retain freq"
        )
        for i, latent in enumerate(selection["latent_ids"]):
            table.add_row(
                str(latent),
                f"{selection['forget_importance'][i]:.3g}",
                f"{selection['retain_importance'][i]:.3g}",
                f"{selection['ratio'][i]:.3g}",
                f"{selection['forget_frequency'][i]:.3f}",
                f"{selection['retain_frequency'][i]:.3f}",
            )
        console.print(table)
    for line in report.lines() if report is not None else []:
        console.print(line, highlight=False, soft_wrap=True)
    for name, calib in (summary.get("calibration") or {}).items():
        if calib.get("count"):
            console.print(
                f"{name} calibration: {calib['count']} inputs, mean rho {calib['mean']:.3f}, "
                f"{100 * calib['flagged_fraction']:.1f}% above tau"
            )


def register(app: typer.Typer) -> None:
    app.command()(fit)
    app.command()(generate)
    app.command()(inspect)
