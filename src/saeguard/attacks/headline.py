"""The demo's attack rows (issue 13 §5): the two attacks that broke the paper's gate, on known items.

``saeguard demo`` runs these after its MCQ table: 400 tokens of benign text (held-out Austen)
before each blocked forget question, and the question split over 3 user turns, plus the clean
reference; the same metrics and resumable records as ``saeguard attack`` (which runs the full
grid). Each row reads: attack success (blocked questions answered again), the gate's firing on
forget questions, and its false positives on retain questions under the same transformation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from saeguard.attacks.base import Attack, Clean
from saeguard.attacks.dilution import BenignText, dilution_grid
from saeguard.attacks.multiturn import multiturn_grid
from saeguard.attacks.report import summary_rows
from saeguard.attacks.runner import AttackRecord, AttackSets, attack_context, run_attacks
from saeguard.core.guardrail import Guardrail
from saeguard.errors import SaeguardError
from saeguard.eval.items import McqItem
from saeguard.eval.scorers import McqConfig
from saeguard.io import read_jsonl_records

HEADLINE_TOKENS = 400
HEADLINE_TURNS = 3


def headline_attacks(tokenizer: Any, *, seed: int = 0) -> list[Attack]:
    """Clean, 400 benign tokens before the question (Austen), the question over 3 user turns."""
    benign = BenignText(tokenizer)
    return [
        Clean(),
        *dilution_grid(
            benign, sources=("austen",), tokens=(HEADLINE_TOKENS,), positions=("before",), seed=seed
        ),
        *multiturn_grid((HEADLINE_TURNS,), seed=seed),
    ]


def headline_rows(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    forget: Sequence[McqItem],
    retain: Sequence[McqItem],
    records_path: str | Path,
    *,
    mcq: McqConfig | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """:func:`~saeguard.attacks.report.summary_rows` of :func:`headline_attacks` on these known items.

    ``records_path`` is the demo's own: records of the same setup (model, guard, questions,
    scoring) are reused, so a rerun of the demo costs nothing here; records of another setup
    (an earlier demo's guard) are replaced.

    Raises:
        SaeguardError: no forget items.
    """
    sets = AttackSets(forget=list(forget), retain=list(retain))
    mcq = mcq or McqConfig(scorer="cloze")
    records_path = Path(records_path)
    if not _same_setup(records_path, attack_context(model, guard, sets, mcq)):
        records_path.unlink(missing_ok=True)
    records = run_attacks(
        model,
        tokenizer,
        guard,
        headline_attacks(tokenizer),
        sets,
        records_path,
        mcq=mcq,
        show_progress=show_progress,
    )
    return summary_rows(records)


def _same_setup(path: Path, context: str) -> bool:
    """Whether ``path`` holds records, all of setup ``context`` (an unreadable file does not)."""
    try:
        recorded = read_jsonl_records(path, AttackRecord.from_dict, "attack run")
    except SaeguardError:
        return False
    return bool(recorded) and all(record.context == context for record in recorded)


def rate_cell(row: dict[str, Any], role: str, name: str) -> str:
    """``"7% (1/14)"`` for one metric of one row, ``"-"`` when the row has none."""
    rate = row["metrics"].get(role, {}).get(name)
    if not rate or rate["value"] is None:
        return "-"
    return f"{100 * rate['value']:.0f}% ({rate['k']}/{rate['n']})"
