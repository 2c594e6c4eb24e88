"""Dilution: benign text before, after or around the question (issue 13 §3).

The paper's gate averages evidence over the whole input, so enough benign context pushes a
forget question's rho under tau (measured: ~100 tokens of a novel get 95% of blocked questions
answered again). The padding is ``tokens`` tokens of the model's own tokenizer, cut from held-out
text of one benign source (never text the guard was fitted on):

* ``austen``: consecutive paragraphs of Jane Austen's novels;
* ``wordnet``: consecutive glosses of the non-living WordNet noun files (``GENERAL_LEXNAMES``);
* ``wiki``: consecutive lead paragraphs of non-biology Vital articles.

Each question gets its own stretch of text (start drawn from the seed and the item id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, get_args

from saeguard.attacks.base import Attack, Conversation, FreePrompt, seeded
from saeguard.errors import SaeguardError, require
from saeguard.eval.items import Framing, McqItem

Position = Literal["before", "after", "around"]
POSITIONS: tuple[Position, ...] = get_args(Position)
SOURCES = ("austen", "wordnet", "wiki")
SEPARATOR = "\n\n"


def offline_source(name: str) -> list[str]:
    """Held-out texts of benign source ``name`` (:data:`SOURCES`) from the offline corpora.

    Raises:
        SaeguardError: an unknown source, or offline data that cannot be read.
    """
    from saeguard.data.corpora import load_corpus, load_docs
    from saeguard.data.mcq import GENERAL_LEXNAMES

    check_sources([name])
    if name == "austen":
        return load_corpus("austen", "heldout")
    if name == "wiki":
        return load_corpus("wiki:not-biology", "heldout")
    return [doc.text for doc in load_docs("wordnet", "heldout") if doc.label in GENERAL_LEXNAMES]


@dataclass
class BenignText:
    """Benign padding of an exact length in the model's tokens, from named sources.

    ``sources`` maps a source name to its texts, or is filled on first use by ``load``
    (default :func:`offline_source`); tests pass texts made of the tiny vocabulary.
    """

    tokenizer: Any
    sources: dict[str, Sequence[str]] = field(default_factory=dict)
    load: Callable[[str], Sequence[str]] | None = None  # None: offline_source

    def texts(self, source: str) -> Sequence[str]:
        """The texts of ``source`` (loaded once).

        Raises:
            SaeguardError: an unknown source, or one without text.
        """
        if source not in self.sources:
            self.sources[source] = (self.load or offline_source)(source)
        texts = self.sources[source]
        require(bool(texts), f"padding source {source!r} has no text")
        return texts

    def text(self, source: str, tokens: int, key: str) -> str:
        """``tokens`` tokens (as the tokenizer encodes the text alone) of ``source``, from a seeded start.

        Consecutive texts from a start drawn by ``key`` are joined by blank lines until they hold
        ``tokens`` tokens; the text is cut after the last of them (so the count is exact for the
        text alone; in context a boundary token may merge differently).

        Raises:
            SaeguardError: ``tokens`` < 1, or a source too short to give that many tokens.
        """
        require(tokens >= 1, f"padding must be at least 1 token, got {tokens}")
        texts = self.texts(source)
        start = seeded("padding", source, key).randrange(len(texts))
        pieces: list[str] = []
        for step in range(len(texts)):
            pieces.append(texts[(start + step) % len(texts)])
            joined = SEPARATOR.join(pieces)
            if len(joined) < tokens:  # a token holds at least one character
                continue
            encoded = self.tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
            offsets = encoded["offset_mapping"]
            if len(offsets) >= tokens:
                return joined[: offsets[tokens - 1][1]]
        raise SaeguardError(f"padding source {source!r} holds fewer than {tokens} tokens: ask for fewer")


@dataclass(frozen=True)
class Dilution(Attack):
    """Benign text of ``tokens`` tokens from ``source`` before, after or around (half each side) the question.

    The padding is part of the user's message, so the gate counts it, as it would count
    anything a user types.
    """

    family: ClassVar[str] = "dilution"
    source: str
    tokens: int
    position: Position = "before"
    seed: int = 0
    benign: BenignText | None = field(default=None, compare=False, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        """Source, tokens, position and seed (not the text provider)."""
        return {"source": self.source, "tokens": self.tokens, "position": self.position, "seed": self.seed}

    def framing(self, key: str) -> Framing:
        """The benign text around a message whose id is ``key``.

        Raises:
            SaeguardError: no ``benign`` text provider, or a bad position or length.
        """
        require(self.benign is not None, "a dilution attack needs a BenignText (pass benign=...)")
        require(self.position in POSITIONS, f"unknown position {self.position!r}: use {', '.join(POSITIONS)}")
        assert self.benign is not None
        key = f"{self.seed}:{key}"
        if self.position == "before":
            return Framing(prefix=self.benign.text(self.source, self.tokens, key) + SEPARATOR)
        if self.position == "after":
            return Framing(suffix=SEPARATOR + self.benign.text(self.source, self.tokens, key))
        before = max(1, self.tokens // 2)
        return Framing(
            prefix=self.benign.text(self.source, before, key + ":before") + SEPARATOR,
            suffix=SEPARATOR + self.benign.text(self.source, max(1, self.tokens - before), key + ":after"),
        )

    def item(self, item: McqItem) -> McqItem:
        return replace(item, framing=self.framing(item.id))

    def prompt(self, prompt: FreePrompt) -> Conversation:
        return self.framing(prompt.id).messages(prompt.text)


def dilution_grid(
    benign: BenignText,
    *,
    sources: Sequence[str],
    tokens: Sequence[int],
    positions: Sequence[Position],
    seed: int = 0,
) -> list[Dilution]:
    """Every (source, tokens, position) setting, sources outermost."""
    return [
        Dilution(source, n, position, seed, benign)
        for source in sources
        for n in tokens
        for position in positions
    ]


def check_sources(names: Sequence[str]) -> None:
    """Raise ``SaeguardError`` naming the first unknown padding source (before any model loads)."""
    for name in names:
        require(name in SOURCES, f"unknown padding source {name!r}: use one of {', '.join(SOURCES)}")
