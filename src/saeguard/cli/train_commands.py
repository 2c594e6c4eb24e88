"""`saeguard train-sae`: SAEs for models that have none, via SAELens's trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def train_sae(
    layer: Annotated[list[int], typer.Option(help="Hook layer (repeat to train several from one harvest)")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Parent folder; one SAE folder per layer/width")
    ],
    model: str = "default",
    corpus: Annotated[
        str | None, typer.Option(help="Training text; default: the general offline mix")
    ] = None,
    width: Annotated[list[int], typer.Option(min=1, help="Latents (repeatable)")] = [4096],  # noqa: B006
    k: Annotated[int, typer.Option(min=1)] = 32,
    tokens: Annotated[int, typer.Option(min=1)] = 800_000,
    batch_size: Annotated[int, typer.Option(min=1)] = 1024,
    seed: int = 0,
) -> None:
    """Train BatchTopK SAEs (saved as JumpReLU) and report FVU, dead latents, LM loss."""
    import torch

    from saeguard.cli.options import check_output
    from saeguard.defaults import SAE_TRAINING_MIX, sae_training_documents
    from saeguard.hf.corpus import iter_documents, resolve_corpus
    from saeguard.hf.layers import parse_layer
    from saeguard.hf.models import load_model
    from saeguard.sae_training import SAETrainingConfig, train_and_save

    output = check_output(output, folder=True)  # before the model loads and training starts
    lm, tokenizer = load_model(model, dtype=torch.float32)
    layer = [parse_layer(hook_layer, lm) for hook_layer in layer]
    if corpus is None:
        train_docs, eval_docs, mix = (
            sae_training_documents("train", seed),
            sae_training_documents("heldout")[:64],
            "+".join(SAE_TRAINING_MIX),
        )
    else:
        docs = list(iter_documents(resolve_corpus(corpus)))
        train_docs, eval_docs, mix = docs[64:], docs[:64], corpus
    configs = [
        SAETrainingConfig(layer=hook_layer, width=w, k=k, tokens=tokens, batch_size=batch_size, seed=seed)
        for hook_layer in layer
        for w in width
    ]
    outputs = [output / f"layer{c.layer}-w{c.width}-k{c.k}" for c in configs]
    results = train_and_save(
        lm, tokenizer, train_docs, eval_docs, configs, outputs, model_name=model, data_mix=mix
    )
    for result in results:
        typer.echo(
            json.dumps(
                {
                    "path": result["path"],
                    "layer": result["layer"],
                    **result["metrics"],
                    "train_seconds": round(result["train_seconds"], 1),
                }
            )
        )


def register(app: typer.Typer) -> None:
    app.command(name="train-sae")(train_sae)
