"""What ``saeguard demo`` adds from this package: fluency beside each generation, and the explain report.

:func:`explain_demo` is the one call the demo makes. Flagged generations can degenerate
("A of to of to ..."), so each generation gets the perplexity of its text under the
unguarded model given its prompt and its distinct-2 (``eval.muse_scores.generation_fluency``);
the explain report (``explain/report.py``) is written to ``<output>/explain`` and linked from
the demo page's navigation.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from saeguard.core.guardrail import Guardrail
from saeguard.eval.muse_scores import distinct_n, generation_fluency
from saeguard.explain.guard import explain_guard
from saeguard.explain.latents import ScanConfig
from saeguard.explain.report import write_explain_report
from saeguard.report import Link

EXPLAIN_FOLDER = "explain"


def add_fluency(
    model: nn.Module, tokenizer: Any, guard: Guardrail, generations: Sequence[MutableMapping[str, Any]]
) -> None:
    """Add ``fluency`` to each generation (a dict with ``prompt``, ``guarded`` and ``unguarded`` texts).

    ``fluency`` holds ``{guarded,unguarded}_perplexity`` (under the unguarded ``model``, given the
    chat-formatted prompt as it was generated; nan for an empty text) and ``{guarded,unguarded}_distinct_2``.
    """
    if not generations:
        return
    prompts = [str(g["prompt"]) for g in generations]
    chat = guard.config.chat_template
    scores = {
        side: generation_fluency(model, tokenizer, prompts, [str(g[side]) for g in generations], chat=chat)
        for side in ("guarded", "unguarded")
    }
    for i, generation in enumerate(generations):
        generation["fluency"] = {
            f"{side}_{name}": value
            for side, fluency in scores.items()
            for name, value in (
                ("perplexity", fluency.perplexities[i]),
                ("distinct_2", distinct_n([str(generation[side])], 2)),
            )
        }


def explain_demo(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    generations: Sequence[MutableMapping[str, Any]],
    output: str | Path,
    *,
    forget: Sequence[str],
    retain: Sequence[str],
    scan: ScanConfig | None = None,
) -> Path:
    """Fluency into ``generations`` (:func:`add_fluency`) and the explain report into ``output/explain``.

    ``forget`` and ``retain`` are held-out texts scanned for the latents' top contexts.
    Returns the explain report's ``index.html``.
    """
    add_fluency(model, tokenizer, guard, generations)
    explanation = explain_guard(
        model,
        tokenizer,
        guard,
        texts={"forget": forget, "retain": retain},
        scan=scan or ScanConfig(max_chunks=32),
    )
    back = [Link("demo summary", "../demo.html")]
    return write_explain_report(explanation, Path(output) / EXPLAIN_FOLDER, nav=back)
