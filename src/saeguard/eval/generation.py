"""What the gate did while generating, in words: the prompt's decision and where it flipped.

``saeguard generate`` and the demo's generations print one line per answer from
:func:`~saeguard.core.guardrail.row_decisions`: a prompt can pass the gate and a
later generated token flip it (rho is a running statistic over the counted
tokens), after which the rest of the answer is generated clamped (issue 12 §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from saeguard.core.guardrail import Guardrail, RowDecision, row_decisions
from saeguard.errors import require
from saeguard.progress import progress_bar


def decision_line(decision: RowDecision, tau: float, token: str | None = None) -> str:
    """What the gate did to one generated row, in words (``saeguard generate`` and the demo).

    ``token`` is the text of the generated token at ``decision.flipped_at`` when known.
    """
    if decision.prompt_flagged:
        return f"FLAGGED on the prompt (rho {decision.prompt_rho:.3f} > tau {tau:.3f}): clamped throughout"
    if decision.flipped_at is None:
        return (
            f"passed (prompt rho {decision.prompt_rho:.3f} <= tau {tau:.3f}); never flipped while "
            f"generating (final rho {decision.final_rho:.3f})"
        )
    shown = f" {token!r}" if token is not None else ""
    return (
        f"passed on the prompt (rho {decision.prompt_rho:.3f} <= tau {tau:.3f}), then FLIPPED at generated "
        f"token {decision.flipped_at + 1}{shown}: clamped from the next token on (final rho "
        f"{decision.final_rho:.3f})"
    )


def flipped_token(tokenizer: Any, text: str, decision: RowDecision) -> str | None:
    """The text of the generated token where the gate flipped, re-encoded from ``text``.

    None when the gate did not flip, or when re-encoding ``text`` does not give back
    the same text (then token positions are not trustworthy).
    """
    if decision.flipped_at is None:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if decision.flipped_at >= len(ids) or tokenizer.decode(ids) != text:
        return None
    return str(tokenizer.decode(ids[decision.flipped_at : decision.flipped_at + 1]))


@dataclass(frozen=True)
class FlipRate:
    """What the running gate did to benign prompts while the model answered them (issue 13).

    ``rows``: prompts generated; ``prompt_flagged``: flagged on the prompt (the prompt-decision
    false positives); ``flipped``: passed on the prompt, then flagged by a generated token (the
    generation flips); ``max_new_tokens``: the answer length the flips were looked for in.
    """

    rows: int
    prompt_flagged: int
    flipped: int
    max_new_tokens: int
    flipped_at: list[int] = field(default_factory=list)  # per flipped row: the generated token index

    @property
    def flip_rate(self) -> float:
        """Flipped rows / rows (0 when there are none)."""
        return self.flipped / self.rows if self.rows else 0.0

    @property
    def prompt_rate(self) -> float:
        """Prompt-flagged rows / rows (0 when there are none)."""
        return self.prompt_flagged / self.rows if self.rows else 0.0


def generation_flips(
    model: Any,
    tokenizer: Any,
    guard: Guardrail,
    prompts: Sequence[str | Sequence[dict[str, str]]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    show_progress: bool = False,
) -> FlipRate:
    """Generate greedy answers to ``prompts`` with ``guard`` and count the gate's decisions.

    The flips are what the MCQ harness cannot see: it freezes the prompt's decision, while
    the running gate of ``Guardrail.generate`` keeps counting generated tokens (issue 13,
    "flips during generation"). Give benign prompts to read false positives.

    Raises:
        SaeguardError: no prompts, a bad ``batch_size``, or what ``Guardrail.generate`` raises.
    """
    require(len(prompts) > 0, "generation_flips needs prompts: give benign questions to measure")
    require(
        type(batch_size) is int and batch_size >= 1,
        f"batch_size must be a positive integer, got {batch_size!r}",
    )
    flagged = flipped = 0
    where: list[int] = []
    with progress_bar(
        "generation flips", total=len(prompts), unit="prompts", enabled=show_progress
    ) as advance:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            _, records = guard.generate(model, tokenizer, batch, max_new_tokens=max_new_tokens)
            for decision in row_decisions(records, len(batch)):
                flagged += decision.prompt_flagged
                if decision.flipped_at is not None:
                    flipped += 1
                    where.append(decision.flipped_at)
            advance(len(batch))
    return FlipRate(len(prompts), flagged, flipped, max_new_tokens, where)
