"""Benign neighbours: near-domain questions the guard must not block (issue 13 §3).

Questions on topics next to the forget topic (for biology: physical sciences, technology,
everyday life) share words and latents with it; over-blocking shows as the gate firing on them
and as known answers the guard turns wrong. Nothing is rewritten: the setting measures the
guard's clean behaviour on the ``near`` sets (padded versions are the padding family's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from saeguard.attacks.base import Attack, Conversation, FreePrompt, Role
from saeguard.eval.items import Framing, McqItem

#: Near-domain sets for a biology guard (``data.mcq`` Vital-article sets).
NEAR_SETS = ("wiki:physical-sciences", "wiki:technology", "wiki:everyday-life")


@dataclass(frozen=True)
class Neighbours(Attack):
    """The near-domain questions as they are: the gate's firing and broken answers there."""

    family: ClassVar[str] = "neighbours"
    roles: ClassVar[tuple[Role, ...]] = ("near",)

    def item(self, item: McqItem) -> McqItem:
        return item

    def prompt(self, prompt: FreePrompt) -> Conversation:
        return Framing().messages(prompt.text)
