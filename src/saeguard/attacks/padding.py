"""Benign padding: the false-positive side of dilution, on benign questions only (issue 13 §3).

The same text as :class:`~saeguard.attacks.dilution.Dilution`, measured on the retain and
near-domain questions: a gate whose statistic is robust to dilution (a local rule, a max over
windows) must still not fire on long benign inputs. Every attack is also measured on the
retain questions; this family adds long paddings without paying for the forget side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from saeguard.attacks.base import Role
from saeguard.attacks.dilution import BenignText, Dilution, Position


@dataclass(frozen=True)
class Padding(Dilution):
    """Benign text of ``tokens`` tokens around (by default) benign questions."""

    family: ClassVar[str] = "padding"
    roles: ClassVar[tuple[Role, ...]] = ("retain", "near")
    position: Position = "around"


def padding_grid(
    benign: BenignText, *, sources: Sequence[str], tokens: Sequence[int], seed: int = 0
) -> list[Padding]:
    """One setting per (source, tokens), the padding around the question."""
    return [Padding(source, n, "around", seed, benign) for source in sources for n in tokens]
