"""Data of the MUSE-style metrics: cloze KnowMem questions, VerbMem passages, the offline Books setting.

KnowMem questions are built from the text itself, without an LLM (:func:`cloze_questions`);
few-shot demonstrations and asked questions come from different documents
(``data.corpora.split_of``), so no question is its own shot. The Books setting
(:func:`books_data`) is MUSE Books on the embedded Austen novels: forget = one novel,
retain = the other five.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saeguard.data.corpora import AUSTEN_BOOKS, load_corpus, split_of
from saeguard.errors import require
from saeguard.eval.items import McqItem

BLANK = "___"
KNOWMEM_INSTRUCTION = "Fill in the blank (___) with the missing name."
#: Capitalised words of 3+ letters that are not names of the text's people and places: titles,
#: interjections, days and months (general knowledge, not knowledge of the text).
_NOT_NAMES = frozenset(
    {"Mrs", "Miss", "Sir", "Lady", "Lord", "Colonel", "Captain", "Madam", "Madame", "Yes", "Nay", "Aye"}
    | {"God", "Heaven", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
    | {"January", "February", "March", "April", "May", "June", "July", "August", "September"}
    | {"October", "November", "December", "Christmas", "Michaelmas", "Easter"}
)
_SENTENCE = re.compile(r"(?<=[.!?])[\"'”’]?\s+")
_WORD = re.compile(r"[A-Z][a-z]{2,}")
_MIA_MIN_WORDS = 20  # shorter texts give too few token scores for Min-K%++


@dataclass
class MuseSizes:
    """How many samples each metric draws and how long they are."""

    prefix_tokens: int = 32
    continuation_tokens: int = 64
    verbmem_samples: int = 40
    knowmem_questions: int = 60
    knowmem_shots: int = 3
    min_name_count: int = 3  # a blanked name occurs at least this often in the corpus
    privleak_samples: int = 100  # per side
    seed: int = 0


@dataclass(frozen=True)
class ClozeQuestion:
    """A sentence with one name blanked (``___``); ``answer`` is the name."""

    question: str
    answer: str


def cloze_questions(documents: Sequence[str], *, min_count: int = 3) -> list[ClozeQuestion]:
    """KnowMem questions from text, no LLM: per sentence, its first recurring non-initial capitalised name.

    A candidate is a capitalised word of 3+ letters that does not open the sentence or a
    quotation, is not a title, interjection, day or month (Mrs, Lady, Yes, Sunday, ...), occurs
    at least ``min_count`` times capitalised in ``documents`` (names of characters and places,
    not chance words), and occurs once in its sentence (else the answer is in the question).
    Sentences of 6-60 words only.
    """
    counts: dict[str, int] = {}
    for doc in documents:
        for word in _WORD.findall(doc):
            counts[word] = counts.get(word, 0) + 1
    out = []
    for doc in documents:
        for sentence in _SENTENCE.split(doc):
            sentence = sentence.strip()
            if not 6 <= len(sentence.split()) <= 60:
                continue
            for match in _WORD.finditer(sentence):
                word, before = match.group(), sentence[: match.start()].rstrip()
                opens = not before or before[-1] in "\"'“‘.!?:;(—-"
                if opens or word in _NOT_NAMES or counts.get(word, 0) < min_count:
                    continue
                if len(re.findall(rf"\b{word}\b", sentence)) == 1:
                    blanked = sentence[: match.start()] + BLANK + sentence[match.end() :]
                    out.append(ClozeQuestion(blanked, word))
                break
    return out


@dataclass
class KnowMemSet:
    """Few-shot demonstrations and the questions asked (from documents of the other split)."""

    shots: list[ClozeQuestion]
    questions: list[ClozeQuestion]


def knowmem_set(documents: Sequence[str], config: MuseSizes, source: str) -> KnowMemSet:
    """Cloze questions of ``documents``: shots from the ``train`` side of ``split_of(source, text)``,
    asked questions from the ``heldout`` side.

    Raises:
        SaeguardError: too few questions for the shots or for one question.
    """
    rng = random.Random(config.seed)
    parts = {
        split: cloze_questions(
            [d for d in documents if split_of(source, d) == split], min_count=config.min_name_count
        )
        for split in ("train", "heldout")
    }
    shots = rng.sample(parts["train"], min(config.knowmem_shots, len(parts["train"])))
    asked = rng.sample(parts["heldout"], min(config.knowmem_questions, len(parts["heldout"])))
    require(
        len(shots) == config.knowmem_shots and len(asked) > 0,
        f"the {source} text gives too few cloze questions ({len(parts['train'])} + {len(parts['heldout'])}): "
        "give more text with recurring names",
    )
    return KnowMemSet(shots, asked)


def choice_items(known: KnowMemSet, seed: int = 0) -> list[McqItem]:
    """The asked questions as four-option items: the answer and 3 other names of the set (seeded order).

    For small models that rarely generate the exact name, a likelihood choice among names of the
    same text (chance 25%) still shows what the model knows; scored with ``eval.mcq``'s cloze scorer.
    """
    names = sorted({q.answer for q in [*known.shots, *known.questions]})
    rng = random.Random(seed)
    items = []
    for index, question in enumerate(known.questions):
        others = [name for name in names if name != question.answer]
        if len(others) < 3:
            continue
        choices = [question.answer, *rng.sample(others, 3)]
        rng.shuffle(choices)
        items.append(
            McqItem(
                f"Which name fills the blank? {question.question}",
                tuple(choices),
                choices.index(question.answer),
                "names in a novel",
                f"cloze-{index}",
            )
        )
    return items


def knowmem_prompt(shots: Sequence[ClozeQuestion], question: ClozeQuestion) -> str:
    """The few-shot cloze prompt: an instruction, the shots with answers, then the question."""
    blocks = [f"Sentence: {q.question}\nAnswer: {q.answer}" for q in shots]
    return "\n\n".join([KNOWMEM_INSTRUCTION, *blocks, f"Sentence: {question.question}\nAnswer:"])


def first_answer(generated: str) -> str:
    """The answer in a generation: its first line, first word, without surrounding punctuation."""
    words = generated.strip().split("\n", 1)[0].split()
    return words[0].strip(".,;:!?\"'“”‘’()") if words else ""


def passages(tokenizer: Any, documents: Sequence[str], config: MuseSizes) -> list[tuple[str, str]]:
    """VerbMem (prefix, true continuation) pairs from documents long enough, in a seeded order."""
    need = config.prefix_tokens + config.continuation_tokens
    order = list(documents)
    random.Random(config.seed).shuffle(order)
    out = []
    for doc in order:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            prefix, rest = ids[: config.prefix_tokens], ids[config.prefix_tokens : need]
            out.append((tokenizer.decode(prefix), tokenizer.decode(rest)))
        if len(out) == config.verbmem_samples:
            break
    require(bool(out), f"no forget document has {need} tokens: give longer forget text for VerbMem")
    return out


@dataclass
class MuseData:
    """The texts the metrics read: VerbMem passages, KnowMem sets, Min-K%++ members and non-members."""

    passages: list[tuple[str, str]]  # (prefix, true continuation) of forget text
    knowmem_forget: KnowMemSet
    knowmem_retain: KnowMemSet
    members: list[str]  # forget text (PrivLeak positives)
    nonmembers: list[str]  # holdout text never unlearned (PrivLeak negatives)


def muse_data(
    tokenizer: Any,
    *,
    forget: Sequence[str],
    retain: Sequence[str],
    holdout: Sequence[str],
    sizes: MuseSizes | None = None,
) -> MuseData:
    """The metrics' data from any forget, retain and holdout documents.

    ``holdout`` is text like the forget text that the unlearning never saw (MUSE's D_holdout).

    Raises:
        SaeguardError: a corpus too small for its metric (one line naming it).
    """
    sizes = sizes or MuseSizes()
    rng = random.Random(sizes.seed)
    members = [d for d in forget if len(d.split()) >= _MIA_MIN_WORDS]
    nonmembers = [d for d in holdout if len(d.split()) >= _MIA_MIN_WORDS]
    count = min(sizes.privleak_samples, len(members), len(nonmembers))
    require(
        count >= 2,
        f"PrivLeak needs 2+ forget and 2+ holdout documents of {_MIA_MIN_WORDS}+ words: give more text",
    )
    return MuseData(
        passages=passages(tokenizer, forget, sizes),
        knowmem_forget=knowmem_set(forget, sizes, "forget"),
        knowmem_retain=knowmem_set(retain, sizes, "retain"),
        members=rng.sample(members, count),
        nonmembers=rng.sample(nonmembers, count),
    )


def books_corpora(book: str) -> dict[str, list[str]]:
    """MUSE Books on the embedded Austen novels: ``forget``/``holdout`` = ``book``'s train/heldout
    paragraphs, ``retain`` = the train paragraphs of the other five (``data.corpora`` splits).

    Raises:
        SaeguardError: an unknown book (the message lists them), or the Austen data is missing.
    """
    name = book.removeprefix("austen:")
    require(name in AUSTEN_BOOKS, f"unknown Austen novel {book!r}: use one of {', '.join(AUSTEN_BOOKS)}")
    retain = [
        doc for other in AUSTEN_BOOKS if other != name for doc in load_corpus(f"austen:{other}", "train")
    ]
    return {
        "forget": load_corpus(f"austen:{name}", "train"),
        "retain": retain,
        "holdout": load_corpus(f"austen:{name}", "heldout"),
    }
