"""``demo.html``: the demo's results as one page (known-item accuracy, gate, held-out text, generations).

Built from the JSON form of ``saeguard.demo.DemoResult`` (what ``demo.json`` holds), so
the page can be rebuilt from a saved run and this module needs nothing above the leaf layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saeguard.report.figures import rho_label
from saeguard.report.render import Figure, Link, Page, Sample, Section, Table, percent_with_n, write_page

DEMO_FILE = "demo.html"
INDEX_FILE = "index.html"
RHO_FILE = "rho.png"
EXPLAIN_FILE = "explain/index.html"  # saeguard.explain.demo writes it


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}g}" if abs(float(value)) >= 1e4 else f"{float(value):.{digits}f}"


def _topic(name: str) -> str:
    return name.split(":", 1)[-1]


def _title(data: Mapping[str, Any]) -> str:
    model = (data["guard"].get("model") or {}).get("name")
    where = f" in {model.rsplit('/', 1)[-1]}" if model else ""
    return f"saeguard demo: forgetting {_topic(data['config']['forget'])}{where}"


def _accuracy(data: Mapping[str, Any]) -> Section:
    rows = []
    for group, row in data["accuracy"].items():
        known = int(row["known"])
        base, guarded = row["base_accuracy"], row["guarded_accuracy"]
        relative = guarded / base if known and base else None
        rows.append(
            [
                group,
                str(row["items"]),
                str(known),
                percent_with_n(base, known),
                percent_with_n(guarded, known),
                "-" if relative is None else f"{100 * relative:.1f}%",
                percent_with_n(row["flagged_fraction"], known),
            ]
        )
    config = data["config"]
    sets = {"forget": [config["forget_mcq"]], "retain": config["retain_mcq"], "near": config["near_mcq"]}
    return Section(
        "Known-item accuracy before and after the guard",
        paragraphs=[
            "Each topic's questions are first filtered to the items the unguarded model answers under every "
            f"option order checked ({config['permutations']}); accuracies are on those known items, so the "
            "unguarded model scores 100% by construction. Forget should fall, retain and near should stay.",
            "Question sets: " + "; ".join(f"{g}: {', '.join(names)}" for g, names in sets.items()) + ".",
        ],
        blocks=[
            Table(
                ["topic", "items asked", "known items", "unguarded", "guarded", "relative", "gate fired"],
                rows,
                caption=f"n = known items; scorer {config['scorer']}.",
            )
        ],
    )


def _gate(data: Mapping[str, Any], folder: Path) -> Section:
    guard = data["guard"]
    estimate = guard.get("tau_estimate") or {}
    interval = (
        f" (bootstrap 95% interval {_num(estimate['bootstrap_low'])} to {_num(estimate['bootstrap_high'])}, "
        f"the {estimate['percentile']:g}th percentile of retain rho)"
        if estimate
        else ""
    )
    paragraphs = [
        f"Layer {guard['layer']}, {guard['n_features']} selected latents, "
        f"{guard['gate_statistic']} statistic, "
        f"tau = {_num(guard['tau'])}{interval}; a flagged input's latents are clamped to "
        f"-{_num(guard['clamp_value'])} (clamp {guard['clamp']}, {guard['clamp_scope']} scope)."
    ]
    blocks: list[Any] = []
    if (folder / RHO_FILE).is_file():
        blocks.append(
            Figure(RHO_FILE, f"{rho_label(guard['gate_statistic'])}. One value per input; tau in red.")
        )
    calibration = guard.get("calibration") or {}
    if calibration:
        rows = [
            [
                role,
                str(s["count"]),
                _num(s["mean"]),
                _num(s["median"]),
                percent_with_n(s["flagged_fraction"], s["count"]),
            ]
            for role, s in calibration.items()
        ]
        blocks.append(
            Table(
                ["calibration set", "inputs", "mean rho", "median rho", "rho > tau"],
                rows,
                caption="n = inputs.",
            )
        )
    return Section("The gate", paragraphs=paragraphs, blocks=blocks)


def _text(text: Mapping[str, Any]) -> Section | None:
    blocks: list[Any] = []
    loss = text.get("loss") or {}
    if loss:
        rows = [
            [
                name,
                f"{m['sequences']} / {m['tokens']}",
                _num(m["base_perplexity"], 2),
                _num(m["guarded_perplexity"], 2),
                percent_with_n(m["flagged_fraction"], m["sequences"]),
            ]
            for name, m in loss.items()
        ]
        header = [
            "held-out text",
            "chunks / tokens",
            "perplexity unguarded",
            "perplexity guarded",
            "chunks flagged",
        ]
        blocks.append(Table(header, rows, caption="Perplexity on held-out chunks; n = chunks."))
    firing = text.get("firing") or {}
    if firing:
        rows = [
            [name, str(m["count"]), percent_with_n(m["flagged_fraction"], m["count"]), _num(m["mean_rho"])]
            for name, m in firing.items()
        ]
        blocks.append(
            Table(["held-out prompts", "prompts", "gate fired", "mean rho"], rows, caption="n = prompts.")
        )
    return Section("Held-out text", blocks=blocks) if blocks else None


def _fluency(generation: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The generation's fluency line (``explain.demo.add_fluency``), when the demo measured it."""
    f = generation.get("fluency")
    if not f:
        return []
    return [
        (
            "fluency",
            f"perplexity under the unguarded model {_num(f['unguarded_perplexity'], 1)} unguarded, "
            f"{_num(f['guarded_perplexity'], 1)} guarded; distinct-2 {_num(f['unguarded_distinct_2'], 2)} "
            f"unguarded, {_num(f['guarded_distinct_2'], 2)} guarded",
        )
    ]


def _generations(generations: Sequence[Mapping[str, Any]]) -> Section | None:
    if not generations:
        return None
    samples = [
        Sample(
            f"[{g['topic']}] {g['prompt']}",
            [("unguarded", g["unguarded"].strip()), ("guarded", g["guarded"].strip())] + _fluency(g),
            badge=f"{'flagged' if g['flagged'] else 'passed'}, rho = {g['rho']:.2f}",
            alert=bool(g["flagged"]),
        )
        for g in generations
    ]
    return Section(
        "Generations",
        paragraphs=[
            "Greedy answers with and without the guard; the badge is the gate's decision on the prompt."
        ],
        blocks=samples,
    )


def demo_nav() -> list[Link]:
    """Links between the demo's pages: ``demo.html``, the gate report ``index.html``, the explain report."""
    return [
        Link("demo summary", DEMO_FILE),
        Link("gate statistic report", INDEX_FILE),
        Link("guard explained", EXPLAIN_FILE),
    ]


def demo_page(data: Mapping[str, Any], folder: str | Path) -> Page:
    """The page for a demo result in JSON form (``demo.json``), written into ``folder``."""
    folder = Path(folder)
    seconds = data.get("seconds") or {}
    sections = [_accuracy(data), _gate(data, folder), _text(data.get("text") or {})]
    sections.append(_generations(data.get("generations") or []))
    if seconds:
        rows = [[step, f"{value:.1f}"] for step, value in seconds.items()]
        sections.append(Section("Timings", blocks=[Table(["step", "seconds"], rows)]))
    nav = [link for link in demo_nav() if link.href == DEMO_FILE or (folder / link.href).is_file()]
    return Page(
        title=_title(data),
        summary=(
            "What the demo guard does: known-item accuracy on the forgotten topic and on kept topics before "
            "and after the guard, how the gate separates them, held-out perplexity and sample generations."
        ),
        sections=[s for s in sections if s is not None],
        nav=nav,
    )


def write_demo_page(data: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``demo.html`` into ``folder`` (after ``rho.png`` and ``index.html``); returns its path."""
    return write_page(demo_page(data, folder), Path(folder) / DEMO_FILE)
