"""Corpora: reading text sources and turning them into token batches.

A corpus is a list of strings, a .txt file (one document per blank-line
separated paragraph), a .jsonl file with a text field, a Hugging Face
``datasets`` spec ``hf:name[/config]:split[:field]``, a built-in offline name
(``wiki:biology``; ``saeguard data list``), or a :class:`CorpusMix` of several of
these read one after another (``--retain mine.txt --retain wiki:geography``).
Documents are streamed, so memory stays flat however large the corpus is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saeguard.errors import SaeguardError, one_line, require
from saeguard.io import check_unicode, parse_json

_TEXT_FIELDS = ("text", "content", "document", "extract", "question")


@dataclass(frozen=True)
class CorpusMix:
    """Several corpora read as one, in order: e.g. your own retain file plus a built-in topic.

    ``parts`` are corpus specs of any single form (a list of documents, a file,
    ``hf:...`` or a built-in name); built-in names are read from ``split``.
    """

    parts: tuple[CorpusSpec, ...]
    split: str = "train"


CorpusSpec = str | Path | Sequence[str] | CorpusMix


def _is_builtin(spec: str) -> bool:
    """A built-in offline corpus name (``wiki:biology``, ``cwe``...) that is not also a file path."""
    if Path(spec).expanduser().exists() or spec.startswith("hf:"):
        return False
    from saeguard.data.corpora import available_corpora

    names = available_corpora()
    return spec in names or spec.split(":")[0] in {name.split(":")[0] for name in names}


def resolve_corpus(spec: CorpusSpec, split: str = "train") -> CorpusSpec:
    """Built-in offline corpus names (``wiki:biology``, ``cwe``...) become their documents.

    Raises:
        SaeguardError: a built-in family with an unknown topic, or its data missing
            (the message says to run ``saeguard data fetch``).
    """
    if isinstance(spec, str) and _is_builtin(spec):
        from saeguard.data.corpora import load_corpus

        return load_corpus(spec, split)
    return spec


def corpus_mix(specs: Sequence[str | Path], split: str = "train") -> CorpusSpec:
    """One corpus from one or more specs (a repeated ``--forget``/``--retain``), built-ins resolved.

    One spec gives that corpus; several give a :class:`CorpusMix` that reads them in order.

    Raises:
        SaeguardError: no spec at all, or a built-in name that cannot be loaded.
    """
    require(len(specs) > 0, "no corpus given: pass at least one file, hf:name:split or built-in name")
    resolved = [resolve_corpus(spec, split) for spec in specs]
    if len(resolved) == 1:
        return resolved[0]
    return CorpusMix(tuple(resolved), split)


def iter_documents(spec: CorpusSpec, text_field: str | None = None) -> Iterator[str]:
    """Stream the documents of a corpus, skipping empty ones.

    A built-in name is read from its ``train`` split (a :class:`CorpusMix` says
    which split); a mix yields its parts' documents in order. ``text_field`` names
    the JSONL/HF column; default: the first of ``text``, ``content``, ``document``,
    ``extract``, ``question`` present.

    Raises:
        SaeguardError: a missing or non-UTF-8 file, a bad JSONL line (with its number),
            a row without a text field, a non-string list entry, text with an unpaired surrogate,
            or an unloadable HF dataset.
    """
    if isinstance(spec, CorpusMix):
        for part in spec.parts:
            yield from iter_documents(resolve_corpus(part, spec.split), text_field)
        return
    if isinstance(spec, str) and _is_builtin(spec):
        yield from iter_documents(resolve_corpus(spec), text_field)
        return
    if isinstance(spec, (list, tuple)):
        for index, doc in enumerate(spec):
            require(isinstance(doc, str), "corpus entries must be strings")
            check_unicode(doc, f"corpus entry {index}")
            if doc.strip():
                yield doc
        return
    text = str(spec)
    if text.startswith("hf:"):
        yield from _iter_hf(text[3:], text_field)
        return
    path = Path(text).expanduser()
    if not path.is_file():
        raise SaeguardError(
            f"corpus file {path} cannot be read: pass an existing .txt/.jsonl file, "
            "a list of strings, hf:name:split or a built-in name (saeguard data list)"
        )
    try:
        if path.suffix == ".jsonl":
            yield from _iter_jsonl(path, text_field)
        else:
            yield from _iter_txt(path)
    except UnicodeDecodeError:
        raise SaeguardError(f"corpus file {path} is not UTF-8 text: convert it first") from None


def _iter_txt(path: Path) -> Iterator[str]:
    block: list[str] = []
    with path.open(encoding="utf-8-sig") as handle:  # a leading byte-order mark is not text
        for line in handle:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield "\n".join(block)
                block = []
    if block:
        yield "\n".join(block)


def _iter_jsonl(path: Path, text_field: str | None) -> Iterator[str]:
    """Each row is a JSON string or an object with a text field; a null or blank text is skipped."""
    with path.open(encoding="utf-8-sig") as handle:  # a leading byte-order mark is not text
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = parse_json(line, where)
            if isinstance(row, str):
                text = row
            else:
                require(
                    isinstance(row, dict),
                    f"{where} is a JSON {type(row).__name__}, not a document: give each line a string "
                    "or an object with a 'text' field",
                )
                field = text_field or next((f for f in _TEXT_FIELDS if f in row), None)
                require(
                    field is not None and field in row,
                    f"{where} has no text field: add 'text' or pass --text-field",
                )
                text = row[field]
                require(
                    text is None or isinstance(text, str),
                    f"{where}: field {field!r} holds a {type(text).__name__}, not text: fix that line",
                )
            if text and text.strip():
                yield text


def _iter_hf(spec: str, text_field: str | None) -> Iterator[str]:
    parts = spec.split(":")
    require(len(parts) >= 2, "HF corpus spec must be hf:name[/config]:split[:field]")
    name, split = parts[0], parts[1]
    field = parts[2] if len(parts) > 2 else text_field
    config = None
    if name.count("/") >= 2:
        name, config = name.rsplit("/", 1)
    try:
        import datasets

        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as error:  # noqa: BLE001 - hub errors vary
        raise SaeguardError(f"cannot load HF dataset 'hf:{spec}': {one_line(error)}") from None
    for row in _streamed_rows(dataset, spec):
        key = field or next((f for f in _TEXT_FIELDS if f in row), None)
        require(
            key is not None and key in row,
            f"HF dataset 'hf:{spec}' has no text column {key or ''!r}: end the spec with :FIELD, "
            f"one of {', '.join(sorted(row))}",
        )
        if row[key] and str(row[key]).strip():
            yield str(row[key])


def _streamed_rows(dataset: Iterable[Any], spec: str) -> Iterator[Any]:
    """The rows of a streamed dataset; a file that fails to read (e.g. missing from the cache) is one line."""
    rows = iter(dataset)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - reading fails as variously as loading
            raise SaeguardError(f"cannot read HF dataset 'hf:{spec}': {one_line(error)}") from None
        yield row


@dataclass
class TokenBatch:
    """Token ids plus the mask of tokens that count (real, non-special, in scope)."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 1 for real tokens
    counted: torch.Tensor  # (B, T) bool: tokens statistics and the gate look at


def check_tokenizer(tokenizer: Any, what: str = "this call") -> None:
    """Fail clearly unless ``tokenizer`` is a Hugging Face tokenizer (callable, with special ids).

    Raises:
        SaeguardError: None, a string, or another object in its place.
    """
    require(
        tokenizer is not None and callable(tokenizer) and hasattr(tokenizer, "all_special_ids"),
        f"{what} needs the model's tokenizer (e.g. AutoTokenizer.from_pretrained(...)), "
        f"got {type(tokenizer).__name__}: pass tokenizer=...",
    )


def special_token_ids(tokenizer) -> set[int]:
    """Ids never counted by statistics or the gate: all special tokens, BOS, EOS and PAD."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


SENTENCE_END_MARKS = ".?!\n\u3002\uff1f\uff01"
"""Characters that end a sentence for the gate's sentence rule: ``.``, ``?``, ``!``, a newline and
the CJK full stop, question and exclamation marks."""


def sentence_end_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of every token whose text holds a sentence-end mark (:data:`SENTENCE_END_MARKS`), ascending.

    Each vocabulary entry is decoded on its own (``convert_tokens_to_string``), so byte-level
    tokens such as ``Ċ`` (a newline) count; special tokens never do (they are uncounted, which
    closes a sentence anyway). Source: issue 13, the gate's sentence rule (``core/gate.py``).
    """
    special = special_token_ids(tokenizer)
    vocab = tokenizer.get_vocab()
    ends = []
    for token, index in vocab.items():
        if index in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if any(mark in text for mark in SENTENCE_END_MARKS):
            ends.append(int(index))
    return tuple(sorted(ends))


def counted_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Iterable[int]
) -> torch.Tensor:
    """Real tokens that are not special: BOS/EOS/PAD are excluded by id, never by position."""
    mask = attention_mask.bool().clone()
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    if special.numel():
        mask &= ~torch.isin(input_ids, special)
    return mask


def iter_chunks(
    documents: Iterable[str], tokenizer, seq_len: int, *, max_chunks: int | None = None
) -> Iterator[list[int]]:
    """Documents joined with EOS and cut into ``seq_len``-token chunks (the paper's recipe).

    Each chunk starts with BOS when the tokenizer has one, as the model saw in training.
    The final partial chunk is kept if it has at least 2 tokens. The paper uses
    1,024-token chunks (docs/method.md §2.1).

    Raises:
        SaeguardError: ``seq_len`` < 2.
    """
    require(seq_len >= 2, f"seq_len must be at least 2, got {seq_len}")
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    body = seq_len - (1 if bos is not None else 0)
    buffer: list[int] = []
    produced = 0
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        buffer.extend(ids)
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= body:
            chunk, buffer = buffer[:body], buffer[body:]
            yield ([bos] if bos is not None else []) + chunk
            produced += 1
            if max_chunks is not None and produced >= max_chunks:
                return
    if len(buffer) >= 2:
        yield ([bos] if bos is not None else []) + buffer


def count_chunks(
    documents: Sequence[str], tokenizer, seq_len: int, *, max_chunks: int | None = None, batch: int = 256
) -> int:
    """How many chunks :func:`iter_chunks` yields for ``documents`` (a progress total), without building them.

    Tokenizes in batches of ``batch`` documents and stops early once ``max_chunks`` is reached.

    Raises:
        SaeguardError: ``seq_len`` < 2.
    """
    require(seq_len >= 2, f"seq_len must be at least 2, got {seq_len}")
    body = seq_len - (1 if getattr(tokenizer, "bos_token_id", None) is not None else 0)
    per_document = 1 if getattr(tokenizer, "eos_token_id", None) is not None else 0
    tokens = 0
    for start in range(0, len(documents), batch):
        encoded = tokenizer(list(documents[start : start + batch]), add_special_tokens=False)["input_ids"]
        tokens += sum(len(ids) + per_document for ids in encoded)
        if max_chunks is not None and tokens // body >= max_chunks:
            return max_chunks
    full, rest = divmod(tokens, body)
    return full + (1 if rest >= 2 else 0)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, T) int64 with T the longest sequence; padded right or left.

    ``sequences`` must not be empty.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if left:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
        else:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def pad_token_id(tokenizer) -> int:
    """The id to pad with: PAD, else EOS, else BOS, else 0 (padding is masked out either way)."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
