"""Obfuscation: the question's words disguised so the forget latents may not read them (issue 13 §3).

Four kinds, each deterministic per (kind, rate, seed, item id, field):

* ``spacing``: letters of a word spaced out ("m i t o s i s");
* ``leetspeak``: a->4, e->3, i->1, o->0, s->5, t->7;
* ``casing``: each letter upper- or lower-cased at random;
* ``noise``: one typo per word of 4+ letters (swap two neighbours, drop, double or replace a letter).

``rate`` is the share of words (spacing, noise) or characters (leetspeak, casing) touched.
``target="question"`` rewrites the question only (the options stay readable and are scored
as written); ``"all"`` rewrites the options too, and the model is scored on the rewritten
options. The SAEBench header ("The following are multiple choice questions ... about <subject>")
is the harness's, not the user's question, and is never rewritten.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, get_args

from saeguard.attacks.base import Attack, Conversation, FreePrompt, seeded
from saeguard.errors import require
from saeguard.eval.items import McqItem

Kind = Literal["spacing", "leetspeak", "casing", "noise"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Target = Literal["question", "all"]
TARGETS: tuple[Target, ...] = get_args(Target)
LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
DEFAULT_RATE: dict[str, float] = {"spacing": 1.0, "leetspeak": 1.0, "casing": 1.0, "noise": 0.5}
_WORD = re.compile(r"[A-Za-z]+")


def _spacing(text: str, rate: float, rng: random.Random) -> str:
    return _WORD.sub(
        lambda m: " ".join(m.group()) if len(m.group()) >= 3 and rng.random() < rate else m.group(), text
    )


def _leetspeak(text: str, rate: float, rng: random.Random) -> str:
    return "".join(LEET[c.lower()] if c.lower() in LEET and rng.random() < rate else c for c in text)


def _casing(text: str, rate: float, rng: random.Random) -> str:
    out = []
    for c in text:
        if c.isalpha() and rng.random() < rate:
            c = c.upper() if rng.random() < 0.5 else c.lower()
        out.append(c)
    return "".join(out)


def _typo(word: str, rng: random.Random) -> str:
    k = rng.randrange(1, len(word) - 1)  # never the first or last letter (words stay recognisable)
    edit = rng.randrange(4)
    if edit == 0:
        return word[:k] + word[k + 1] + word[k] + word[k + 2 :]
    if edit == 1:
        return word[:k] + word[k + 1 :]
    if edit == 2:
        return word[:k] + word[k] + word[k:]
    letters = [c for c in string.ascii_lowercase if c != word[k].lower()]
    return word[:k] + rng.choice(letters) + word[k + 1 :]


def _noise(text: str, rate: float, rng: random.Random) -> str:
    return _WORD.sub(
        lambda m: _typo(m.group(), rng) if len(m.group()) >= 4 and rng.random() < rate else m.group(), text
    )


_KINDS = {"spacing": _spacing, "leetspeak": _leetspeak, "casing": _casing, "noise": _noise}


def obfuscate(text: str, kind: Kind, rate: float, rng: random.Random) -> str:
    """``text`` rewritten by ``kind`` at ``rate`` with ``rng`` (see the module docstring).

    Raises:
        SaeguardError: an unknown kind, or a rate outside [0, 1].
    """
    require(kind in KINDS, f"unknown obfuscation {kind!r}: use one of {', '.join(KINDS)}")
    require(0.0 <= rate <= 1.0, f"obfuscation rate must lie in [0, 1], got {rate}")
    return _KINDS[kind](text, rate, rng)


@dataclass(frozen=True)
class Obfuscation(Attack):
    """The question (``target="question"``) or question and options (``"all"``) rewritten by ``kind``."""

    family: ClassVar[str] = "obfuscation"
    kind: Kind
    target: Target = "question"
    rate: float = -1.0  # < 0: the kind's default (DEFAULT_RATE)
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.target in TARGETS, f"unknown obfuscation target {self.target!r}: use question or all")
        if self.rate < 0:
            object.__setattr__(self, "rate", DEFAULT_RATE.get(self.kind, 1.0))

    def text(self, text: str, key: str, part: str) -> str:
        """``text`` (field ``part`` of the message with id ``key``) rewritten deterministically."""
        return obfuscate(
            text, self.kind, self.rate, seeded("obfuscation", self.kind, self.rate, self.seed, key, part)
        )

    def item(self, item: McqItem) -> McqItem:
        question = self.text(item.question, item.id, "question")
        if self.target == "question":
            return replace(item, question=question)
        choices = tuple(self.text(c, item.id, f"choice{k}") for k, c in enumerate(item.choices))
        require(
            len({c.casefold() for c in choices}) == len(choices),
            f"obfuscating the options of {item.id!r} made two of them equal: use target='question'",
        )
        return replace(item, question=question, choices=choices)

    def prompt(self, prompt: FreePrompt) -> Conversation:
        return [{"role": "user", "content": self.text(prompt.text, prompt.id, "prompt")}]


def obfuscation_grid(kinds: Sequence[Kind], targets: Sequence[Target], *, seed: int = 0) -> list[Obfuscation]:
    """Every (kind, target) setting at each kind's default rate."""
    return [Obfuscation(kind, target, seed=seed) for kind in kinds for target in targets]
