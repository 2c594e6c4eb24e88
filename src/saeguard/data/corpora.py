"""Named text corpora built from the offline sources, with a fixed train/heldout split.

Every document has a stable key (article title, CWE id, WordNet synset, novel
paragraph); ``split_of(source, key)`` hashes it, so the split never depends on
file order, Python's hash seed or which other documents exist. Fitting uses
``train``; MCQ sets and evaluation use ``heldout`` only, so the guard never sees
the text it is judged on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saeguard.data.rdata import read_lazyload
from saeguard.data.sources import source_file
from saeguard.errors import SaeguardError

SPLITS = ("train", "heldout", "all")

#: Vital-article topic label -> corpus slug (``wiki:<slug>``).
WIKI_TOPICS: dict[str, str] = {
    "Arts": "arts",
    "Biology and health sciences": "biology",
    "Everyday life": "everyday-life",
    "Geography": "geography",
    "History": "history",
    "Mathematics": "mathematics",
    "People": "people",
    "Philosophy and religion": "philosophy-religion",
    "Physical sciences": "physical-sciences",
    "Society and social sciences": "society",
    "Technology": "technology",
    "Uncategorized": "uncategorized",
}
WIKI_SLUGS: dict[str, str] = {slug: topic for topic, slug in WIKI_TOPICS.items()}
#: "Uncategorized" mixes every topic (it holds Zoology, Abiogenesis, …), so ``wiki:not-<slug>``
#: leaves it out: a retain set must not contain forget-topic text.
MIXED_TOPIC = "Uncategorized"

#: WordNet 3.0 lexicographer files, indexed by the ``lex_filenum`` field of data.* lines.
WORDNET_LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip

AUSTEN_BOOKS: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


@dataclass(frozen=True)
class Doc:
    """One document: ``key`` decides its split, ``label`` its sub-corpus."""

    key: str
    text: str
    label: str
    title: str = ""
    description: str = ""


def split_of(source: str, key: str) -> str:
    """``"train"`` or ``"heldout"``: 50/50 by the parity of sha256(f"{source}:{key}")."""
    digest = hashlib.sha256(f"{source}:{key}".encode()).digest()
    return "heldout" if digest[0] & 1 else "train"


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# --- parsers (pure functions of a path, so tests can feed small fixture files) ---


def parse_wiki(path: Path) -> list[Doc]:
    """Vital articles from ``summaries_en-us.json``: text = lead paragraph, label = topic."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SaeguardError(f"cannot read {path}: {exc}; run: saeguard data fetch") from exc
    rows = raw.values() if isinstance(raw, dict) else raw
    docs = []
    for row in rows:
        text = _clean(row.get("extract") or "")
        title = _clean(row.get("title") or "")
        if text and title:
            docs.append(
                Doc(
                    key=title,
                    text=text,
                    label=row.get("topic") or MIXED_TOPIC,
                    title=title,
                    description=_clean(row.get("description") or ""),
                )
            )
    return docs


def parse_cwe(path: Path) -> list[Doc]:
    """CWE weaknesses (deprecated ones dropped): text = "name: description extended"."""
    root = ET.parse(path).getroot()
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    docs = []
    for node in root.iter(f"{ns}Weakness"):
        if node.get("Status") == "Deprecated":
            continue
        name = _clean(node.get("Name", ""))
        desc_node = node.find(f"{ns}Description")
        ext_node = node.find(f"{ns}Extended_Description")
        desc = _clean("".join(desc_node.itertext())) if desc_node is not None else ""
        ext = _clean(" ".join(ext_node.itertext())) if ext_node is not None else ""
        if name and desc:
            text = _clean(f"{name}: {desc} {ext}")
            cwe_id = f"CWE-{node.get('ID')}"
            docs.append(Doc(key=cwe_id, text=text, label="cwe", title=name, description=desc))
    return docs


_WN_MARKER = re.compile(r"\((a|p|ip)\)$")


def parse_wordnet_file(path: Path) -> list[Doc]:
    """Synsets of one WordNet ``data.<pos>`` file: text = "lemma, lemma: gloss"."""
    docs = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            head, gloss = line.split("|", 1)
            fields = head.split()
            offset, lexnum, pos, count = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
            words = [_WN_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2]]
            lexname = WORDNET_LEXNAMES[lexnum] if lexnum < len(WORDNET_LEXNAMES) else "unknown"
            text = f"{', '.join(words)}: {_clean(gloss)}"
            docs.append(Doc(key=f"{pos}{offset}", text=text, label=lexname, title=words[0]))
    return docs


def parse_austen(rdx: Path, rdb: Path) -> list[Doc]:
    """Paragraphs of the six novels (blank-line separated); headings and stubs dropped.

    Each novel is an R character vector (one element per line of the Project
    Gutenberg text) in the lazy-load database ``rdx``/``rdb``; raises
    ``SaeguardError`` if the database cannot be read.
    """
    books = read_lazyload(rdx, rdb)
    docs = []
    for name in AUSTEN_BOOKS:
        if name not in books:
            continue
        paragraph: list[str] = []
        index = 0
        for line in [*books[name].tolist(), ""]:  # numpy array of str (None = NA)
            if line and line.strip():
                paragraph.append(line.strip())
                continue
            # Project Gutenberg marks italics as _word_; drop the marks
            text = _clean(re.sub(r"_([^_]+)_", r"\1", " ".join(paragraph)))
            paragraph = []
            # headings like "CHAPTER I" have no lower-case letters; stubs are under 5 words
            if text and re.search(r"[a-z]", text) and len(text.split()) >= 5:
                docs.append(Doc(key=f"{name}:{index}", text=text, label=name))
                index += 1
    return docs


# --- cached loaders over the verified source files ---


@functools.cache
def _docs(source: str) -> tuple[Doc, ...]:
    if source == "wiki":
        return tuple(parse_wiki(source_file("wiki", "summaries_en-us.json")))
    if source == "cwe":
        return tuple(parse_cwe(source_file("cwe", "cwec_v4.14.xml")))
    if source == "wordnet":
        docs: list[Doc] = []
        for pos in ("noun", "verb", "adj", "adv"):
            docs += parse_wordnet_file(source_file("wordnet", f"data.{pos}"))
        return tuple(docs)
    if source == "austen":
        rdx = source_file("austen", "Rdata.rdx")
        return tuple(parse_austen(rdx, source_file("austen", "Rdata.rdb")))
    raise KeyError(source)


def _resolve(name: str) -> tuple[str, Callable[[str], bool]]:
    """Map a corpus name to (source, predicate on Doc.label)."""
    source, _, sub = name.partition(":")
    if source == "wiki":
        if not sub:
            return source, lambda label: True
        if sub in WIKI_SLUGS:
            topic = WIKI_SLUGS[sub]
            return source, lambda label: label == topic
        if sub.startswith("not-") and sub[4:] in WIKI_SLUGS and sub[4:] != "uncategorized":
            topic = WIKI_SLUGS[sub[4:]]
            return source, lambda label: label not in (topic, MIXED_TOPIC)
    elif source == "wordnet":
        if not sub:
            return source, lambda label: True
        if sub in WORDNET_LEXNAMES:
            return source, lambda label: label == sub
    elif source == "austen":
        if not sub:
            return source, lambda label: True
        if sub in AUSTEN_BOOKS:
            return source, lambda label: label == sub
    elif source == "cwe" and not sub:
        return source, lambda label: True
    raise SaeguardError(
        f"unknown corpus {name!r}: `saeguard data list` (API: available_corpora()) names them all, "
        "e.g. wiki:biology, wiki:not-biology, cwe, wordnet:noun.animal, austen"
    )


def available_corpora() -> list[str]:
    """Every corpus name :func:`load_corpus` accepts."""
    names = ["wiki"] + [f"wiki:{slug}" for slug in WIKI_SLUGS]
    names += [f"wiki:not-{slug}" for slug in WIKI_SLUGS if slug != "uncategorized"]
    names += ["cwe", "wordnet"] + [f"wordnet:{lex}" for lex in WORDNET_LEXNAMES]
    names += ["austen"] + [f"austen:{book}" for book in AUSTEN_BOOKS]
    return names


def load_docs(name: str, split: str = "train") -> list[Doc]:
    """Documents of corpus ``name`` in ``split`` (train / heldout / all), in source order.

    Raises:
        SaeguardError: an unknown split or corpus name, or source data that is missing
            or unreadable (the message says to run ``saeguard data fetch``).
    """
    if split not in SPLITS:
        raise SaeguardError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    source, keep = _resolve(name)
    return [
        doc
        for doc in _docs(source)
        if keep(doc.label) and (split == "all" or split_of(source, doc.key) == split)
    ]


def load_corpus(name: str, split: str = "train") -> list[str]:
    """Texts of corpus ``name`` (see :func:`available_corpora`) in ``split``.

    Raises:
        SaeguardError: as :func:`load_docs`.
    """
    return [doc.text for doc in load_docs(name, split)]
