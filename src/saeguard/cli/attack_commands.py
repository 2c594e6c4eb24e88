"""`saeguard attack`: the attack suite against a saved guardrail (issue 13 §3)."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from saeguard.cli.options import (
    AUTO_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_MODEL,
    Device,
    Dtype,
    GuardSae,
    Model,
    check_output,
    load_cli_model,
    resolve_device,
)
from saeguard.eval.items import Scorer
from saeguard.eval.known import Orderings

if TYPE_CHECKING:
    from torch import nn

    from saeguard.eval.items import McqItem
    from saeguard.eval.mcq import McqConfig

console = Console()
DEFAULT_FORGET = ("wiki:biology",)
DEFAULT_RETAIN = ("wiki:geography", "wiki:history", "wiki:arts")  # the demo's retain sets
QUICK_KNOWN = 24  # --quick: at most this many questions per role (known ones unless --no-known)
SETS_PANEL = "Questions"
GRID_PANEL = "Attack grid (default: every setting; --quick: a few)"


def _default(values: tuple[str, ...]) -> str:
    return escape(f"[default: {' '.join(values)}]")


def _known_questions(
    model: nn.Module,
    tokenizer: Any,
    specs: list[str],
    *,
    limit: int | None,
    known: bool,
    mcq: McqConfig,
    permutations: Orderings,
    cap: int | None,
) -> list[McqItem]:
    """Questions of ``specs`` (first ``limit`` of each; known ones with ``known``), at most ``cap``."""
    from saeguard.eval.items import mcq_set
    from saeguard.eval.known import KnownConfig, known_items

    chosen: list[McqItem] = []
    for spec in specs:
        items = mcq_set(spec, limit)
        if known:
            config = KnownConfig(mcq=mcq, permutations=permutations)
            items = known_items(model, tokenizer, items, config=config, dataset=spec).known_of(items)
        chosen += items
    return chosen[:cap] if cap is not None else chosen


def attack_command(
    guard: Annotated[Path, typer.Option(help="Guardrail folder to attack (from `saeguard fit` or the demo)")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Report folder; attack.jsonl there resumes a rerun")
    ],
    mcq: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Forget question set(s): .jsonl, hf:..., or built-in {_default(DEFAULT_FORGET)}",
            rich_help_panel=SETS_PANEL,
        ),
    ] = None,
    retain_mcq: Annotated[
        list[str] | None,
        typer.Option(help=f"Retain question set(s) {_default(DEFAULT_RETAIN)}", rich_help_panel=SETS_PANEL),
    ] = None,
    near_mcq: Annotated[
        list[str] | None,
        typer.Option(
            help="Near-domain question set(s) [default: physical sciences, technology, everyday life]"
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Free-form prompts: .txt (one forget prompt a line) or .jsonl {prompt, label}"),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A few settings per family, <= 24 questions per set (known ones unless --no-known)",
        ),
    ] = False,
    limit: Annotated[
        int, typer.Option(min=1, help="Forget questions drawn per set before the known filter")
    ] = 150,
    other_limit: Annotated[int, typer.Option(min=1, help="Retain / near questions drawn per set")] = 60,
    known: Annotated[bool, typer.Option(help="Attack only questions the base model knows")] = True,
    permutations: Annotated[
        Orderings, typer.Option(help="Known filter orders: cyclic (4) or all (24)")
    ] = "cyclic",
    tokens: Annotated[
        list[int] | None,
        typer.Option(help="Dilution lengths in tokens (replaces the grid's)", rich_help_panel=GRID_PANEL),
    ] = None,
    padding_tokens: Annotated[
        list[int] | None,
        typer.Option(
            help="Benign padding lengths on benign questions (replaces the grid's)",
            rich_help_panel=GRID_PANEL,
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            help="Padding sources: austen, wordnet, wiki (replaces the grid's)", rich_help_panel=GRID_PANEL
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice of the attacks")] = 0,
    scorer: Annotated[Scorer, typer.Option(help="letter or cloze")] = "cloze",
    model: Model = DEFAULT_MODEL,
    sae: GuardSae = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = DEFAULT_DTYPE,
) -> None:
    """Dilution, multi-turn, obfuscation, padding, near-domain: attack success, firing, false positives."""
    from saeguard.attacks import QUICK_GRID, AttackGrid, AttackSets, BenignText, load_prompts, run_attacks
    from saeguard.attacks.dilution import check_sources
    from saeguard.attacks.neighbours import NEAR_SETS
    from saeguard.attacks.report import summary_rows, write_report
    from saeguard.core.guardrail import Guardrail
    from saeguard.eval.mcq import McqConfig

    started = time.perf_counter()
    output = check_output(output, folder=True)
    grid = QUICK_GRID if quick else AttackGrid()
    grid = replace(
        grid,
        seed=seed,
        tokens=tuple(tokens or grid.tokens),
        padding_tokens=tuple(padding_tokens or grid.padding_tokens),
        sources=tuple(source or grid.sources),
    )
    check_sources(grid.sources)
    free = load_prompts(prompts) if prompts is not None else []
    device = resolve_device(device)
    lm, tokenizer = load_cli_model(model, device, dtype)
    loaded = Guardrail.load(guard, lm, strict=False, sae=sae)
    config = McqConfig(scorer=scorer)
    cap = QUICK_KNOWN if quick else None

    def questions(specs: list[str], drawn: int) -> list[McqItem]:
        return _known_questions(
            lm, tokenizer, specs, limit=drawn, known=known, mcq=config, permutations=permutations, cap=cap
        )

    sets = AttackSets(
        forget=questions(list(mcq or DEFAULT_FORGET), limit),
        retain=questions(list(retain_mcq or DEFAULT_RETAIN), other_limit),
        near=questions(list(near_mcq or NEAR_SETS), other_limit),
        prompts=free,
    )
    records = run_attacks(
        lm, tokenizer, loaded, grid.attacks(BenignText(tokenizer)), sets, output / "attack.jsonl", mcq=config
    )
    sizes = {"forget": len(sets.forget), "retain": len(sets.retain), "near": len(sets.near)}
    if free:
        sizes["prompts"] = len(free)
    command = "saeguard " + " ".join(sys.argv[1:])
    page = write_report(
        output,
        records,
        guard=loaded.summary() | {"gate_rule": loaded.config.gate_rule},
        sets=sizes,
        command=command,
        known=known,
    )
    _print(summary_rows(records), known=known)
    console.print(f"report: {page}  ({time.perf_counter() - started:.0f} s)")


def _print(rows: list[dict[str, Any]], *, known: bool) -> None:
    """The attack table: one row per setting; free-form prompt columns when ``--prompts`` was given."""
    from saeguard.attacks.headline import rate_cell as cell
    from saeguard.attacks.report import prompt_cells, prompt_columns, questions_label

    prompts = prompt_columns(rows)
    table = Table(title=f"saeguard attack ({questions_label(known)})")
    table.add_column("setting", overflow="fold")
    for column in ("attack success", "forget fired", "retain FP", "near FP", *prompts.values()):
        table.add_column(column, justify="right")

    for row in rows:
        if row["error"]:
            table.add_row(escape(row["key"]), "error", escape(row["error"][:60]), *[""] * (2 + len(prompts)))
            continue
        table.add_row(
            escape(row["key"]),
            cell(row, "forget", "success") if row["family"] != "clean" else "-",
            cell(row, "forget", "fired"),
            cell(row, "retain", "fired"),
            cell(row, "near", "fired"),
            *prompt_cells(row, prompts),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(name="attack")(attack_command)
