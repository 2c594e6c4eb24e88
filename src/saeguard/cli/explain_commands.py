"""`saeguard explain`: the guard's latents and calibration as a report, and one prompt's trace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    Device,
    Dtype,
    GuardSae,
    Model,
    check_output,
    check_replace,
    load_cli_model,
    resolve_device,
)
from saeguard.errors import require

TEXT_PANEL = "Text to scan (top contexts and histograms; built-in names read their held-out split)"


def explain(
    guard: Annotated[Path, typer.Argument(help="Guardrail folder (from `saeguard fit`)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder (index.html, explain.json)")],
    prompt: Annotated[
        str | None, typer.Option(help="Also trace this prompt token by token (trace.html + trace.json)")
    ] = None,
    forget: Annotated[
        list[str] | None,
        typer.Option(
            help="Forget-topic text: .txt, .jsonl, hf:..., or wiki:biology", rich_help_panel=TEXT_PANEL
        ),
    ] = None,
    retain: Annotated[
        list[str] | None, typer.Option(help="Other text, same forms", rich_help_panel=TEXT_PANEL)
    ] = None,
    contexts: Annotated[
        int,
        typer.Option(min=1, help="Top-activating contexts per latent and text", rich_help_panel=TEXT_PANEL),
    ] = 8,
    max_chunks: Annotated[
        int, typer.Option(min=1, help="128-token chunks scanned per text", rich_help_panel=TEXT_PANEL)
    ] = 64,
    chat: Annotated[
        bool, typer.Option(help="Wrap --prompt in the chat template (as the guard was fitted)")
    ] = True,
    model: Model = DEFAULT_MODEL,
    sae: GuardSae = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
) -> None:
    """Why the guard decides: each selected latent's numbers, contexts and output tokens; a prompt's trace."""
    from saeguard.core.guardrail import Guardrail
    from saeguard.explain.guard import explain_guard, read_texts
    from saeguard.explain.latents import ScanConfig
    from saeguard.explain.prompt import trace_latents
    from saeguard.explain.report import is_explain_report, write_explain_report
    from saeguard.hf.corpus import corpus_mix

    # every input is checked before the model loads: the output, the device, the texts, the guard
    output = check_output(output, folder=True)
    check_replace(output, force=True, is_ours=is_explain_report, what="saeguard explain report")
    device = resolve_device(device)
    require(prompt is None or bool(prompt.strip()), "--prompt is empty: give the text to trace")
    texts = read_texts(
        {
            role: corpus_mix(specs, "heldout")
            for role, specs in (("forget", forget), ("retain", retain))
            if specs
        }
    )
    loaded = Guardrail.load(guard, sae=sae)
    lm, tokenizer = load_cli_model(model, device, dtype)
    # the trace first: a prompt beyond the model's positions fails before the scans
    trace = trace_latents(lm, tokenizer, loaded, prompt, chat=chat) if prompt is not None else None
    scan = ScanConfig(top_k=contexts, max_chunks=max_chunks)
    explanation = explain_guard(lm, tokenizer, loaded, texts=texts, scan=scan)
    index = write_explain_report(explanation, output, trace=trace)
    if trace is not None:
        state = "flagged" if trace.trace.flagged else "passed"
        typer.echo(f"prompt {state}: rho {trace.trace.rho:.4g} vs tau {trace.trace.tau:.4g}")
        typer.echo(f"trace: {output / 'trace.html'}")
    typer.echo(f"report: {index}")


def register(app: typer.Typer) -> None:
    app.command()(explain)
