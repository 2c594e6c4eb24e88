"""How ``saeguard demo`` prints its result: the MCQ table, the attack rows, text metrics, generations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from saeguard.demo import DemoResult


def print_demo(result: DemoResult, console: Console) -> None:
    table = Table(title="DSG demo: known-item MCQ accuracy before / after the guard")
    for column in ("topic", "items", "known", "unguarded", "guarded", "relative", "gate fired"):
        table.add_column(column, justify="right" if column != "topic" else "left")
    for group, row in result.accuracy.items():
        base, guarded = row["base_accuracy"], row["guarded_accuracy"]
        relative = guarded / base if base else float("nan")
        table.add_row(
            group,
            str(row["items"]),
            str(row["known"]),
            f"{100 * base:.1f}%",
            f"{100 * guarded:.1f}%",
            f"{100 * relative:.1f}%",
            f"{100 * row['flagged_fraction']:.1f}%",
        )
    console.print(table)
    if result.attacks:
        from saeguard.attacks.headline import rate_cell

        attacks = Table(title="Attacks on the known questions (saeguard attack runs the full grid)")
        for column in ("attack", "attack success", "forget fired", "retain false positives"):
            attacks.add_column(column, justify="right" if column != "attack" else "left")
        for attack in result.attacks:
            success = rate_cell(attack, "forget", "success") if attack["family"] != "clean" else "-"
            fired, false_positive = rate_cell(attack, "forget", "fired"), rate_cell(attack, "retain", "fired")
            attacks.add_row(escape(str(attack["key"]).split(",seed")[0]), success, fired, false_positive)
        console.print(attacks)
    loss = result.text.get("loss", {})
    for name, metrics in loss.items():
        console.print(
            f"perplexity {name}: {metrics['base_perplexity']:.2f} -> {metrics['guarded_perplexity']:.2f}"
        )
    for name, metrics in result.text.get("firing", {}).items():
        console.print(f"gate fires on held-out {name} prompts: {100 * metrics['flagged_fraction']:.1f}%")
    for item in result.generations:
        state = (
            "FLAGGED" if item["flagged"] else ("flipped" if item.get("flipped_at") is not None else "passed")
        )
        console.rule(f"[{item['topic']}] {escape(item['prompt'])}  ({state}, rho={item['rho']:.2f})")
        if item.get("gate"):
            console.print(f"[bold]gate:     [/bold] {escape(item['gate'])}", soft_wrap=True)
        console.print(f"[bold]unguarded:[/bold] {escape(item['unguarded'].strip())}", soft_wrap=True)
        console.print(f"[bold]guarded:  [/bold] {escape(item['guarded'].strip())}", soft_wrap=True)
    console.print(f"timings (s): { {k: round(v, 1) for k, v in result.seconds.items()} }")
