"""What an attack is: a deterministic rewrite of a question (or a free-form prompt) before the gate sees it.

Each family module (``dilution``, ``multiturn``, ``obfuscation``, ``padding``, ``neighbours``)
defines :class:`Attack` subclasses. An attack rewrites an MCQ item through the harness's own
item fields (``McqItem.framing`` for text around the question and turn splits; the question
and choices for obfuscation), so the MCQ harness scores attacked items unchanged. Everything
random is seeded by the attack's ``seed`` and the item's id: the same attack gives the same
item on every run and machine.

``roles`` say which question sets an attack is measured on: ``forget`` (attack success),
``retain`` and ``near`` (the benign false-positive side, issue 13 §3).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from saeguard.errors import SaeguardError, require
from saeguard.eval.items import Framing, McqItem
from saeguard.io import parse_json

Role = Literal["forget", "retain", "near"]
ROLES: tuple[Role, ...] = get_args(Role)
PromptLabel = Literal["forget", "benign"]
Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class FreePrompt:
    """A free-form prompt for the gate-only measurements: ``label`` forget (should fire) or benign."""

    id: str
    text: str
    label: PromptLabel = "forget"


def seeded(*parts: object) -> random.Random:
    """A RNG seeded by ``parts`` (e.g. family, setting, seed, item id): the same on every machine.

    ``random.Random`` hashes a string seed with SHA-512, independent of ``PYTHONHASHSEED``.
    """
    return random.Random(":".join(str(p) for p in parts))


@dataclass(frozen=True)
class Attack(ABC):
    """One attack setting. Subclasses are frozen dataclasses whose fields are its parameters.

    ``key`` (``family:name=value,...``) names the setting in records and reports; ``roles``
    the sets it is measured on.
    """

    family: ClassVar[str]
    roles: ClassVar[tuple[Role, ...]] = ("forget", "retain")

    @property
    def params(self) -> dict[str, Any]:
        """The setting's parameters (the dataclass fields), JSON-ready."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def key(self) -> str:
        """``family`` or ``family:name=value,...``: unique within a grid."""
        values = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}:{values}" if values else self.family

    @abstractmethod
    def item(self, item: McqItem) -> McqItem:
        """The attacked question (same id, choices and answer meaning)."""

    @abstractmethod
    def prompt(self, prompt: FreePrompt) -> Conversation:
        """The attacked free-form prompt as a conversation (one or more user turns)."""


@dataclass(frozen=True)
class Clean(Attack):
    """No attack: the reference every attack is compared with (which questions the guard blocks)."""

    family: ClassVar[str] = "clean"

    def item(self, item: McqItem) -> McqItem:
        return item

    def prompt(self, prompt: FreePrompt) -> Conversation:
        return Framing().messages(prompt.text)


def load_prompts(path: str | Path) -> list[FreePrompt]:
    """Free-form prompts from a ``.txt`` file (one forget prompt a line) or ``.jsonl``.

    JSONL rows are ``{"prompt": str, "label": "forget" | "benign", "id": str (optional)}``.

    Raises:
        SaeguardError: a missing, empty or non-UTF-8 file, a row that is not such an object or not
            valid JSON (named by line).
    """
    path = Path(path).expanduser()
    require(path.is_file(), f"--prompts {path} not found: give a .txt (one prompt a line) or .jsonl file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not text
    except UnicodeDecodeError:
        raise SaeguardError(f"--prompts {path} is not UTF-8 text: convert it first") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(FreePrompt(f"{path.stem}:{number}", line.strip()))
            continue
        row = parse_json(line, f"{path}:{number}")
        label = row.get("label", "forget") if isinstance(row, Mapping) else None
        require(
            isinstance(row, Mapping) and isinstance(row.get("prompt"), str) and bool(row["prompt"].strip()),
            f"{path}:{number}: expected an object with a non-empty 'prompt' string",
        )
        require(
            label in get_args(PromptLabel),
            f"{path}:{number}: label {label!r} is not 'forget' or 'benign'",
        )
        kind: PromptLabel = "benign" if label == "benign" else "forget"
        prompts.append(FreePrompt(str(row.get("id") or f"{path.stem}:{number}"), row["prompt"], kind))
    require(bool(prompts), f"--prompts {path} holds no prompt: add one per line")
    ids = [p.id for p in prompts]
    require(len(set(ids)) == len(ids), f"--prompts {path} repeats an id: make ids unique")
    return prompts
