"""What the gate did while generating, in words: the prompt's decision and where it flipped.

``saeguard generate`` and the demo's generations print one line per answer from
:func:`~saeguard.core.guardrail.row_decisions`: a prompt can pass the gate and a
later generated token flip it (rho is a running statistic over the counted
tokens), after which the rest of the answer is generated clamped (issue 12 §5).
"""

from __future__ import annotations

from typing import Any

from saeguard.core.guardrail import RowDecision


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
