"""`saeguard fit`, `generate` and `inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _load_model(name: str, dtype: str):
    import torch

    from saeguard.hf.models import load_model

    return load_model(name, dtype=getattr(torch, dtype))


def fit(
    forget: Annotated[
        str,
        typer.Option(help="Forget corpus: .txt, .jsonl, hf:name:split, or a built-in name (wiki:biology)"),
    ],
    retain: Annotated[str, typer.Option(help="Retain corpus, same forms as --forget")],
    sae: Annotated[str, typer.Option(help="SAELens folder or release:sae_id")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the guardrail artifact")],
    model: Annotated[
        str, typer.Option(help="HF model name or folder; 'default' = embedded SmolLM2")
    ] = "default",
    layer: Annotated[
        str | None, typer.Option(help="Hook layer index or hook name; default: the SAE's")
    ] = None,
    n_features: Annotated[int, typer.Option("--n-features", "-n")] = 20,
    ratio_percentile: float = 95.0,
    gate_percentile: float = 95.0,
    clamp: Annotated[
        str, typer.Option(help="Absolute value (500) or multiple of the mean activation (10x)")
    ] = "500",
    seq_len: int = 1024,
    batch_size: int = 8,
    memory_budget_gb: Annotated[
        float | None, typer.Option(help="Size statistics batches to this many GiB of activations")
    ] = None,
    max_chunks: Annotated[int | None, typer.Option(help="Cap on chunks per corpus")] = None,
    calibration: Annotated[
        str, typer.Option(help="prompts (chat-wrapped, prompt-length) or chunks")
    ] = "prompts",
    gate_statistic: Annotated[
        str,
        typer.Option(help="fraction (the paper: share of tokens where a latent fires) or activation"),
    ] = "fraction",
    clamp_scope: Annotated[
        str, typer.Option(help="fired (the paper: tokens where a latent fires) or input (every token)")
    ] = "fired",
    dtype: str = "float32",
) -> None:
    """Select forget features, calibrate the gate, write the artifact."""
    from saeguard.config import Clamp, FitConfig
    from saeguard.core.guardrail import Guardrail
    from saeguard.hf.corpus import resolve_corpus

    config = FitConfig(
        layer=layer,
        n_features=n_features,
        ratio_percentile=ratio_percentile,
        gate_percentile=gate_percentile,
        clamp=Clamp.parse(clamp),
        seq_len=seq_len,
        batch_size=batch_size,
        memory_budget_gb=memory_budget_gb,
        max_forget_chunks=max_chunks,
        max_retain_chunks=max_chunks,
        calibration=calibration,  # type: ignore[arg-type]
        gate_statistic=gate_statistic,  # type: ignore[arg-type]
        clamp_scope=clamp_scope,  # type: ignore[arg-type]
    )
    config.validate()  # fail before the model loads
    lm, tokenizer = _load_model(model, dtype)
    guard = Guardrail.fit(
        lm,
        tokenizer,
        sae,
        forget=resolve_corpus(forget, "train"),
        retain=resolve_corpus(retain, "train"),
        config=config,
    )
    path = guard.save(output)
    console.print(f"guardrail written to [bold]{path}[/bold]")
    _print_summary(guard.summary())


def generate(
    guard: Annotated[Path, typer.Option(help="Guardrail folder from `saeguard fit`")],
    prompt: Annotated[list[str], typer.Option(help="Prompt (repeat for a batch)")],
    model: str = "default",
    max_new_tokens: int = 64,
    compare: Annotated[bool, typer.Option(help="Also show the unguarded answer")] = True,
    strict: Annotated[
        bool, typer.Option(help="Refuse a model whose weights differ from the fitted one")
    ] = True,
    dtype: str = "float32",
) -> None:
    """Generate with the guard (and without, to compare)."""
    from saeguard.core.guardrail import Guardrail

    lm, tokenizer = _load_model(model, dtype)
    loaded = Guardrail.load(guard, lm, strict=strict)
    texts, records = loaded.generate(lm, tokenizer, prompt, max_new_tokens=max_new_tokens)
    plain = (
        loaded.generate(lm, tokenizer, prompt, max_new_tokens=max_new_tokens, guarded=False)[0]
        if compare
        else None
    )
    prefill = records[0] if records else None
    for row, text in enumerate(texts):
        flagged = bool(prefill.flagged[row]) if prefill is not None else False
        rho = float(prefill.rho[row]) if prefill is not None else float("nan")
        verdict = "FLAGGED" if flagged else "passed"
        console.rule(f"prompt {row + 1}: {verdict} (rho={rho:.3f}, tau={loaded.tau:.3f})")
        console.print(f"[bold]prompt:[/bold] {prompt[row]}")
        console.print(f"[bold]guarded:[/bold] {text}")
        if plain is not None:
            console.print(f"[bold]unguarded:[/bold] {plain[row]}")


def inspect(
    guard: Annotated[Path, typer.Argument(help="Guardrail folder")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Features, scores, tau and the calibration distributions of an artifact."""
    from saeguard.core.guardrail import Guardrail

    loaded = Guardrail.load(guard)
    summary = loaded.summary()
    if loaded.provenance is not None:
        summary["selection"] = loaded.provenance.selection.to_dict()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
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
    for name, calib in (summary.get("calibration") or {}).items():
        if calib.get("count"):
            console.print(
                f"{name}: {calib['count']} inputs, mean rho {calib['mean']:.3f}, "
                f"flagged {100 * calib['flagged_fraction']:.1f}%"
            )


def register(app: typer.Typer) -> None:
    app.command()(fit)
    app.command()(generate)
    app.command()(inspect)
