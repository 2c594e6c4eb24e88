"""MCQ items: loading WMDP/MMLU-style rows, validating them, building the shared prompt.

Rows come from a .jsonl file (``question``, ``choices`` (4), ``answer`` (0-3 or
A-D), optional ``subject`` and ``id``), a list of dicts (``data.mcq.build_mcq``)
or a Hugging Face dataset ``hf:cais/wmdp/wmdp-bio:test``. A malformed row is
reported with its line number rather than scored as a silent wrong answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from saeguard.errors import SaeguardError, one_line, require
from saeguard.hf.chat import chat_spans, encode_text_spans
from saeguard.hf.prompts import encode_with_span, has_chat_template, render_chat
from saeguard.io import check_unicode, parse_json, text_fingerprint

N_CHOICES = 4
LETTERS = "ABCD"
Scorer = Literal["letter", "cloze"]
#: What the assistant turn starts with: the letter scorer reads the next token after "(".
ANSWER_PREFIX: dict[str, str] = {"letter": "Answer: (", "cloze": "Answer:"}
#: Subjects for HF configs that carry no subject column (WMDP).
_CONFIG_SUBJECTS = {"wmdp-bio": "biology", "wmdp-cyber": "computer security", "wmdp-chem": "chemistry"}


@dataclass(frozen=True)
class Framing:
    """How a user text is put to the model: benign text around it, or split over user turns.

    The user's message is ``prefix + text + suffix``; ``breaks`` are character offsets into it
    where a new user turn starts (strictly increasing, inside the message), and ``replies`` the
    assistant's turn after each user turn but the last (one per break). The attack suite
    (``saeguard.attacks``: dilution, multi-turn splitting) builds these; every user turn counts
    for the gate.

    Raises:
        SaeguardError: breaks out of order, or not one reply per break.
    """

    prefix: str = ""
    suffix: str = ""
    breaks: tuple[int, ...] = ()
    replies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(
            len(self.replies) == len(self.breaks),
            f"a framing needs one assistant reply per turn break: {len(self.breaks)} breaks, "
            f"{len(self.replies)} replies",
        )
        breaks = self.breaks
        require(
            all(b > 0 for b in breaks) and all(a < b for a, b in zip(breaks, breaks[1:], strict=False)),
            f"turn breaks {breaks} must be increasing positive character offsets",
        )

    def message(self, text: str) -> str:
        """The user's whole message: ``prefix + text + suffix``."""
        return self.prefix + text + self.suffix

    def messages(self, text: str) -> list[dict[str, str]]:
        """The conversation: the message cut at ``breaks`` into user turns, ``replies`` between them.

        Raises:
            SaeguardError: a break at or past the end of the message.
        """
        message = self.message(text)
        require(
            not self.breaks or self.breaks[-1] < len(message),
            f"turn break {self.breaks[-1] if self.breaks else 0} is past the end of the "
            f"{len(message)}-character message: cut inside the message",
        )
        cuts = [0, *self.breaks, len(message)]
        turns: list[dict[str, str]] = []
        for k in range(len(cuts) - 1):
            turns.append({"role": "user", "content": message[cuts[k] : cuts[k + 1]]})
            if k < len(self.replies):
                turns.append({"role": "assistant", "content": self.replies[k]})
        return turns


@dataclass(frozen=True)
class McqItem:
    """One four-option question; ``answer`` is the index (0-3) of the right choice.

    ``id`` must be unique within a set (known sets and base results are keyed by it).
    ``framing`` (attacks only) puts benign text around the question or splits it over turns.
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""
    id: str = ""
    framing: Framing | None = None

    def permuted(self, order: Sequence[int]) -> McqItem:
        """The same question with options reordered: new option k is old option order[k]."""
        choices = tuple(self.choices[i] for i in order)
        return replace(self, choices=choices, answer=list(order).index(self.answer))

    def to_dict(self) -> dict[str, Any]:
        """The item as a JSON row (``choices`` as a list), the format :func:`item_from_row` reads.

        ``framing`` appears only when set, so a plain item's row (and fingerprint) is unchanged.
        """
        row = asdict(self) | {"choices": list(self.choices)}
        if self.framing is None:
            del row["framing"]
        return row


def _answer_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.upper() in tuple(LETTERS) and len(text) == 1:
            return LETTERS.index(text.upper())
        if text.lstrip("-").isdigit():
            return int(text)
    return None


def item_from_row(row: Any, where: str, *, subject: str = "", default_id: str = "") -> McqItem:
    """Validate one row; ``where`` (e.g. ``items.jsonl:12``) names it in the error.

    Raises:
        SaeguardError: not a mapping, an empty question, not exactly 4 string choices, text
            with an unpaired surrogate, or an answer that is not 0-3 / A-D.
    """
    require(isinstance(row, Mapping), f"{where}: expected a JSON object with question/choices/answer")
    question = row.get("question")
    require(
        isinstance(question, str) and bool(question.strip()),
        f"{where}: empty or missing question: give every row a non-empty 'question'",
    )
    choices = row.get("choices")
    require(
        isinstance(choices, (list, tuple)) and all(isinstance(c, str) and c.strip() for c in choices),
        f"{where}: 'choices' must be a list of {N_CHOICES} non-empty strings",
    )
    require(
        len(choices) == N_CHOICES,
        f"{where}: has {len(choices)} choices, expected {N_CHOICES}: fix the row or drop it",
    )
    for text in (question, *choices):
        check_unicode(text, where)
    answer = _answer_index(row.get("answer"))
    if answer is None or not 0 <= answer < N_CHOICES:
        raise SaeguardError(
            f"{where}: answer {row.get('answer')!r} is out of range: use 0-{N_CHOICES - 1} or A-D"
        )
    item_subject = str(row.get("subject") or subject or "")
    return McqItem(
        question=question,
        choices=tuple(choices),
        answer=int(answer),
        subject=item_subject.replace("_", " "),
        id=str(row.get("id", default_id) or default_id),
    )


def as_items(rows: Iterable[McqItem | Mapping[str, Any]], *, source: str = "items") -> list[McqItem]:
    """Items from McqItem objects or dicts (as ``data.mcq.build_mcq`` returns).

    Raises:
        SaeguardError: ``rows`` is a string or path (read files with :func:`load_mcq`), or a
            row is malformed.
    """
    require(
        not isinstance(rows, (str, bytes, Path)),
        f"{source}: items must be a list of McqItem or dicts, got a {type(rows).__name__}: "
        "read a file with load_mcq(path) first",
    )
    items = []
    for index, row in enumerate(rows):
        if isinstance(row, McqItem):
            items.append(row)
        else:
            items.append(item_from_row(row, f"{source}[{index}]", default_id=f"{source}:{index}"))
    return items


def load_mcq(
    spec: str | Path | Sequence[McqItem | Mapping[str, Any]],
    *,
    subject: str = "",
    limit: int | None = None,
) -> list[McqItem]:
    """Items from a .jsonl file, an ``hf:name/config:split`` spec or a list of rows.

    Raises:
        SaeguardError: a missing file, a malformed row (named by line), an unloadable
            HF dataset, an empty set, or duplicate ids.
    """
    require(
        limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1),
        f"limit must be a positive number of items (or None for all), got {limit!r}",
    )
    if not isinstance(spec, (str, Path)):
        items = as_items(spec)
    elif str(spec).startswith("hf:"):
        items = _load_hf(str(spec), subject)
    else:
        items = _load_jsonl(Path(spec).expanduser(), subject)
    items = items[:limit] if limit is not None else items
    require(bool(items), f"MCQ set {spec if isinstance(spec, (str, Path)) else 'list'} is empty")
    ids = [item.id for item in items]
    require(len(set(ids)) == len(ids), f"MCQ set {spec!s:.80} has duplicate ids: make ids unique")
    return items


def mcq_set(spec: str, limit: int | None = None) -> list[McqItem]:
    """A question set named on the command line: a built-in offline set, a .jsonl file or ``hf:...``.

    Built-in sets (``wiki:biology``, ``cwe``... :func:`saeguard.data.mcq.available_mcq`) are read
    from their held-out split. A spec that names an existing file, or looks like a path (it has a
    suffix such as ``.jsonl`` or a ``/``), is read as a file; any other name must be built in.

    Raises:
        SaeguardError: a path-like spec whose file does not exist ("not found"), a bare name that
            is no built-in set (the known names listed), or what :func:`load_mcq` refuses.
    """
    path = Path(spec).expanduser()
    if spec.startswith("hf:") or path.exists() or _looks_like_path(spec):
        return load_mcq(spec, limit=limit)
    from saeguard.data.mcq import build_mcq

    return load_mcq(build_mcq(spec, "heldout", limit=limit), limit=limit)


def _looks_like_path(spec: str) -> bool:
    """A suffix (``mine.jsonl``), a folder separator or a leading ``.``/``~``: meant as a file."""
    return bool(Path(spec).suffix) or "/" in spec or "\\" in spec or spec.startswith((".", "~"))


def _load_jsonl(path: Path, subject: str) -> list[McqItem]:
    require(path.is_file(), f"MCQ file {path} not found: pass a .jsonl file or hf:name/config:split")
    items = []
    try:
        with path.open(encoding="utf-8-sig") as handle:  # a leading byte-order mark is not text
            lines = list(handle)
    except UnicodeDecodeError:
        raise SaeguardError(f"MCQ file {path} is not UTF-8 text: convert it first") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}:{number}")
        items.append(
            item_from_row(row, f"{path}:{number}", subject=subject, default_id=f"{path.stem}:{number}")
        )
    return items


def _load_hf(spec: str, subject: str) -> list[McqItem]:
    """``hf:cais/wmdp/wmdp-bio:test`` or ``hf:cais/mmlu/college_biology:test`` (needs the hub)."""
    parts = spec[3:].split(":")
    name, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else "test")
    config = None
    if name.count("/") >= 2:
        name, config = name.rsplit("/", 1)
    try:
        import datasets

        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 - hub errors vary
        raise SaeguardError(f"cannot load HF dataset {spec!r}: {one_line(error)}") from None
    default_subject = subject or _CONFIG_SUBJECTS.get(config or "", (config or "").replace("_", " "))
    prefix = config or name
    return [
        item_from_row(dict(row), f"{spec}[{i}]", subject=default_subject, default_id=f"{prefix}:{split}:{i}")
        for i, row in enumerate(dataset)
    ]


def items_fingerprint(items: Sequence[McqItem]) -> str:
    """Fingerprint of the items' content and order (cache keys, result records)."""
    return text_fingerprint(json.dumps(item.to_dict(), sort_keys=True) for item in items)


# -- prompts ------------------------------------------------------------------
def question_text(item: McqItem) -> str:
    """The user's message: the SAEBench header, the question and all four options (docs/method.md §5)."""
    about = f" about {item.subject}" if item.subject else ""
    header = f"The following are multiple choice questions (with answers){about}."
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices, strict=True))
    return f"{header}\n{item.question}\n{options}"


@dataclass
class SharedPrompt:
    """Token ids of the prompt every option shares, and which of them are the user's text."""

    text: str
    ids: list[int]
    user_mask: list[bool]
    add_special_tokens: bool = False  # how ``text`` was encoded (chat text carries its own)


def shared_prompt(
    tokenizer, item: McqItem, scorer: Scorer, *, chat: bool = True, system: str | None = None
) -> SharedPrompt:
    """The prompt all four options share: :func:`question_text` in the chat template, then the answer prefix.

    The prefix is ``"Answer: ("`` for the letter scorer and ``"Answer:"`` for cloze
    (docs/method.md §5). ``user_mask`` marks the tokens of the question text, the
    only tokens the gate counts; a template that rewrites the message counts all.
    An item's ``framing`` adds its benign text to the message (counted: it is the user's)
    or splits the message over user turns (every user turn counted, replies not).

    Raises:
        SaeguardError: a split item without a chat template, or a template that hides a turn.
    """
    framing = item.framing or Framing()
    user_text = framing.message(question_text(item))
    prefix = ANSWER_PREFIX[scorer]
    if chat and has_chat_template(tokenizer) and framing.breaks:  # a split question: every user turn counts
        head = [] if system is None else [{"role": "system", "content": system}]
        rendered, spans = chat_spans(tokenizer, head + framing.messages(question_text(item)))
        ids, mask = encode_text_spans(tokenizer, rendered + prefix, spans)
        return SharedPrompt(rendered + prefix, ids, mask)
    require(
        not framing.breaks,
        f"question {item.id!r} is split over several turns, which needs a chat template: "
        "use a tokenizer with one (chat=True)",
    )
    if chat and has_chat_template(tokenizer):
        rendered = render_chat(tokenizer, user_text, system)
        start = rendered.rfind(user_text)
        text = rendered + prefix
        if start < 0:  # a template that rewrites the message: count every token
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            return SharedPrompt(text, ids, [True] * len(ids))
        ids, mask = encode_with_span(tokenizer, text, (start, start + len(user_text)))
        return SharedPrompt(text, ids, mask)
    text = f"{user_text}\n{prefix}"
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    mask = [a < len(user_text) and b > a for a, b in encoded["offset_mapping"]]
    return SharedPrompt(text, list(encoded["input_ids"]), mask, add_special_tokens=True)


def option_ids(tokenizer, prompt: SharedPrompt, choice: str) -> list[int]:
    """Tokens of `` choice`` after the prompt; split from the joint encoding when it agrees."""
    joint = prompt.text + " " + choice
    whole = tokenizer(joint, add_special_tokens=prompt.add_special_tokens)["input_ids"]
    if list(whole[: len(prompt.ids)]) == prompt.ids and len(whole) > len(prompt.ids):
        return list(whole[len(prompt.ids) :])
    return list(tokenizer(" " + choice, add_special_tokens=False)["input_ids"])


def letter_token_ids(tokenizer) -> list[list[int]]:
    """Per letter, the single-token ids of "A" and " A" (the scorer takes the max).

    Raises:
        SaeguardError: the tokenizer has no single-token form of some letter (use cloze).
    """
    ids = []
    for letter in LETTERS:
        variants = []
        for text in (letter, " " + letter):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] not in variants:
                variants.append(int(encoded[0]))
        require(
            bool(variants),
            f"the tokenizer splits the answer letter {letter!r} into several tokens: "
            "use the cloze scorer (scorer='cloze')",
        )
        ids.append(variants)
    return ids
