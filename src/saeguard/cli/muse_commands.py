"""`saeguard eval --muse BOOK`: MUSE Books (issue 16) from the shell.

``eval_commands.eval_command`` declares the options and hands ``--muse`` runs to :func:`run_muse`.
Every input is checked before the model loads: the novel, the methods, ``--guard`` and the
output folder (which must be new, empty or an earlier Books report), so a bad value is one
line, never a failure after an hour of training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from saeguard.cli.options import (
    DEFAULT_MODEL,
    TorchDtype,
    check_output,
    check_replace,
    load_cli_model,
    note,
    resolve_sae,
)
from saeguard.errors import require

QUICK_SAMPLES = 16
"""``--quick``: samples per metric (VerbMem passages, KnowMem questions and PrivLeak texts per side)."""

MUSE_PANEL = "MUSE Books (--muse; docs/muse.md)"

MuseMethods = Annotated[
    list[str] | None,
    typer.Option(
        "--method",
        help="With --muse: a method to measure beside the original model (repeat): dsg, ga, graddiff, "
        "npo or rmu; all five when not given",
        rich_help_panel=MUSE_PANEL,
    ),
]
MuseQuick = Annotated[
    bool,
    typer.Option(
        "--quick",
        help=f"With --muse: {QUICK_SAMPLES} samples per metric instead of 40/60/100 (same methods and "
        "training; --limit overrides): about 0.6 of the full run's time, docs/muse.md",
        rich_help_panel=MUSE_PANEL,
    ),
]


def _methods(given: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """The ``--method`` values, lower-cased and without repeats, in the order given; ``default`` if none.

    Raises:
        SaeguardError: a name that is neither ``dsg`` nor a registered gradient method.
    """
    from saeguard.baselines import names

    if not given:
        return default
    chosen = tuple(dict.fromkeys(name.strip().lower() for name in given))
    for name in chosen:
        require(
            name == "dsg" or name in names(),
            f"unknown --method {name!r}: use dsg or one of {', '.join(names())}",
        )
    return chosen


def run_muse(
    book: str,
    *,
    guard: Path | None,
    sae: str | None = None,
    model: str,
    methods: list[str] | None,
    quick: bool,
    limit: int | None,
    output: Path | None,
    device: str,
    dtype: TorchDtype,
    console: Console,
) -> Path:
    """Measure the original model, DSG and the gradient baselines on MUSE Books; returns ``index.html``.

    DSG uses ``guard`` (a guard fitted to forget ``book``; ``sae``: a TopK guard's full SAE) or a
    guard fitted on the book with the demo's settings and the default SAE (trained first if it is not cached).

    Raises:
        SaeguardError: an unknown novel or method, ``--limit`` under 2, ``--guard`` without DSG
            among the methods or not loadable, DSG without ``--guard`` on a model other than the
            default, or an ``output`` that holds something else.
    """
    from saeguard.core.guardrail import Guardrail
    from saeguard.runs.muse_books import INDEX_FILE, RESULT_FILE, books_config, run_books

    config = books_config(book, limit if limit is not None else QUICK_SAMPLES if quick else None)
    config = dataclasses.replace(config, methods=_methods(methods, config.methods))
    require(
        guard is None or "dsg" in config.methods,
        "--guard is the guard DSG is measured with: add --method dsg or leave out --guard",
    )
    require(
        guard is not None or "dsg" not in config.methods or model == DEFAULT_MODEL,
        f"DSG on --model {model} needs --guard (a guard fitted on it to forget {config.book}); "
        "only the default model has a default SAE to fit one with",
    )
    output = check_output(output or Path("reports/muse"), folder=True)
    check_replace(output, force=True, is_ours=lambda path: (path / RESULT_FILE).is_file(), what="MUSE report")
    # a bad artifact fails before the model loads
    loaded = Guardrail.load(guard, sae=sae) if guard is not None else None
    sae_spec = resolve_sae(None, model) if "dsg" in config.methods and loaded is None else None
    lm, tokenizer = load_cli_model(model, device, dtype)
    if loaded is not None:
        loaded.check_model(lm, strict=False)
    sizes = config.muse.sizes
    note(
        f"MUSE Books, forgetting {config.book}: original, {', '.join(config.methods)}; "
        f"{sizes.verbmem_samples} VerbMem passages; {sizes.knowmem_questions} KnowMem questions and "
        f"{sizes.privleak_samples} PrivLeak texts per side (docs/muse.md: cost)"
    )
    run_books(lm, tokenizer, config, sae=sae_spec, guard=loaded, output=output, log=console.print)
    return output / INDEX_FILE
