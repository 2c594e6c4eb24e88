"""Multiple-choice question sets built offline from held-out documents.

WMDP and MMLU need a hub; these sets need only the offline sources. Each item
is WMDP/MMLU-shaped (``question``, four ``choices``, ``answer`` index,
``subject``, ``id``). Everything random about an item (distractors, answer
position) is seeded by the item's id alone, so an item is identical in every set
that contains it and on every machine, and ``limit`` only truncates a fixed order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from saeguard.data.corpora import WIKI_SLUGS, Doc, load_docs
from saeguard.errors import SaeguardError

N_CHOICES = 4
CWE_SUBJECT = "computer security"
CWE_QUESTION = "Which software weakness does this describe? {description}"
WIKI_QUESTION = "What is {title}?"


def _seed(item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"mcq:{item_id}".encode()).digest()[:8], "big")


def _order_key(item: dict[str, Any]) -> bytes:
    """A fixed pseudo-random order, so ``limit`` gives a topic-mixed, not alphabetical, subset."""
    return hashlib.sha256(f"order:{item['id']}".encode()).digest()


def make_item(
    item_id: str, question: str, answer: str, pool: list[str], subject: str
) -> dict[str, Any] | None:
    """One item with three distractors drawn from ``pool``; None if the pool is too small.

    Distractors are distinct from each other and from the answer, compared
    case-insensitively, so no item has two right answers by spelling alone.
    """
    seen = {answer.casefold()}
    candidates = []
    for text in pool:
        folded = text.casefold()
        if text and folded not in seen:
            seen.add(folded)
            candidates.append(text)
    if len(candidates) < N_CHOICES - 1:
        return None
    rng = random.Random(_seed(item_id))
    choices = rng.sample(candidates, N_CHOICES - 1)
    position = rng.randrange(N_CHOICES)
    choices.insert(position, answer)
    return {
        "question": question,
        "choices": choices,
        "answer": position,
        "subject": subject,
        "id": item_id,
    }


def wiki_items(docs: Iterable[Doc], pool_docs: Iterable[Doc]) -> list[dict[str, Any]]:
    """ "What is <title>?" -> its Wikidata description, against descriptions of the same topic."""
    pools: dict[str, list[str]] = defaultdict(list)
    for doc in pool_docs:
        if doc.description:
            pools[doc.label].append(doc.description)
    for label in pools:
        pools[label] = sorted(set(pools[label]))  # order-independent pool
    items = []
    for doc in docs:
        if not doc.description:
            continue
        item = make_item(
            f"wiki:{doc.title}",
            WIKI_QUESTION.format(title=doc.title),
            doc.description,
            pools[doc.label],
            subject=doc.label.lower(),
        )
        if item is not None:
            items.append(item)
    return items


def cwe_items(docs: Iterable[Doc]) -> list[dict[str, Any]]:
    """CWE description -> weakness name, against names of other weaknesses."""
    docs = list(docs)
    pool = sorted({doc.title for doc in docs})
    items = []
    for doc in docs:
        item = make_item(
            f"cwe:{doc.key}",
            CWE_QUESTION.format(description=doc.description),
            doc.title,
            pool,
            subject=CWE_SUBJECT,
        )
        if item is not None:
            items.append(item)
    return items


def available_mcq() -> list[str]:
    """Names :func:`build_mcq` accepts (``wiki:not-<slug>`` works too)."""
    return ["wiki", *(f"wiki:{slug}" for slug in WIKI_SLUGS), "cwe"]


def build_mcq(name: str, split: str = "heldout", limit: int | None = None) -> list[dict[str, Any]]:
    """Build MCQ set ``name`` from ``split`` (held-out by default: never seen when fitting).

    Returns rows with ``id``, ``question``, ``choices`` (4), ``answer`` (0-3) and
    ``subject``, in a fixed order; ``limit`` keeps the first ``limit`` rows.

    Raises:
        SaeguardError: an unknown split or set name, or a negative ``limit``.
    """
    if split not in ("train", "heldout"):
        raise SaeguardError(f"MCQ split must be 'heldout' or 'train', not {split!r}")
    if limit is not None and limit < 0:
        raise SaeguardError(f"limit must be >= 0, got {limit}")
    source = name.partition(":")[0]
    if source == "wiki":
        # distractors come from the same split, so held-out sets use held-out text only
        items = wiki_items(load_docs(name, split), load_docs("wiki", split))
    elif name == "cwe":
        items = cwe_items(load_docs("cwe", split))
    else:
        raise SaeguardError(f"unknown MCQ set {name!r}; choose one of: {', '.join(available_mcq())}")
    items.sort(key=_order_key)
    return items if limit is None else items[:limit]


def write_jsonl(items: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write items one JSON object per line, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps(item, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read items written by :func:`write_jsonl` (or any WMDP/MMLU-style JSONL).

    Rows are returned as parsed, unvalidated (``eval.items.load_mcq`` validates).

    Raises:
        SaeguardError: ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise SaeguardError(f"MCQ file {path} does not exist; build it with build_mcq first")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
