"""Corpus parsing, the train/heldout split and the R-data reader (fixtures + real data)."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest

from saeguard.data import corpora
from saeguard.data.corpora import (
    available_corpora,
    load_corpus,
    load_docs,
    parse_cwe,
    parse_wiki,
    parse_wordnet_file,
    split_of,
)
from saeguard.data.rdata import read_lazyload, read_rds, unserialize
from saeguard.errors import SaeguardError

# --- a tiny R serializer (XDR, version 3) to build fixtures without R ---


def _i(value: int) -> bytes:
    return struct.pack(">i", value)


class RWriter:
    """Writes the subset of R serialization our reader handles, with symbol back-references."""

    def __init__(self) -> None:
        self.symbols: list[str] = []

    def header(self) -> bytes:
        return b"X\n" + _i(3) + _i(0x040201) + _i(0x030500) + _i(5) + b"UTF-8"

    def char(self, text: str | None) -> bytes:
        if text is None:
            return _i(9) + _i(-1)
        raw = text.encode()
        return _i(9 | (8 << 12)) + _i(len(raw)) + raw

    def sym(self, name: str) -> bytes:
        if name in self.symbols:
            return _i(((self.symbols.index(name) + 1) << 8) | 255)
        self.symbols.append(name)
        return _i(1) + self.char(name)

    def names_attr(self, names: list[str]) -> bytes:
        return _i(2 | (1 << 10)) + self.sym("names") + self.strs(names) + _i(254)

    def strs(self, values: list[str | None], names: list[str] | None = None) -> bytes:
        flags = 16 | ((1 << 9) if names else 0)
        body = _i(flags) + _i(len(values)) + b"".join(self.char(v) for v in values)
        return body + (self.names_attr(names) if names else b"")

    def ints(self, values: list[int]) -> bytes:
        return _i(13) + _i(len(values)) + b"".join(_i(v) for v in values)

    def vec(self, items: list[bytes], names: list[str] | None = None) -> bytes:
        flags = 19 | ((1 << 9) if names else 0)
        body = _i(flags) + _i(len(items)) + b"".join(items)
        return body + (self.names_attr(names) if names else b"")


def test_rdata_reader_roundtrip():
    w = RWriter()
    obj = w.vec([w.strs(["a", None, "é"], names=["x", "y", "z"]), w.ints([1, -(2**31)])], ["s", "i"])
    out = unserialize(w.header() + obj)
    assert out.names() == ["s", "i"]
    assert out.value[0].value == ["a", None, "é"]
    assert out.value[0].names() == ["x", "y", "z"]  # second "names" symbol is a back-reference
    assert out.value[1].value == [1, None]


def test_rdata_compact_intseq():
    w = RWriter()
    info = _i(2) + w.sym("compact_intseq") + _i(2) + w.sym("base") + _i(2) + w.ints([13]) + _i(254)
    state = _i(14) + _i(3) + struct.pack(">3d", 4, 10, 1)
    out = unserialize(w.header() + _i(238) + info + state + _i(254))
    assert out.value == [10, 11, 12, 13]


def _lazyload_db(tmp_path: Path, objects: dict[str, bytes]) -> tuple[Path, Path]:
    """Build an R lazy-load database (.rdx index + .rdb blobs) like R packages ship."""
    blob, where = b"", []
    for raw in objects.values():
        record = struct.pack(">I", len(raw)) + zlib.compress(raw)
        where.append((len(blob), len(record)))
        blob += record
    w = RWriter()
    variables = w.vec([w.ints(list(pair)) for pair in where], names=list(objects))
    index = w.vec([variables, w.vec([]), _i(10) + _i(1) + _i(1)], ["variables", "references", "compressed"])
    rdx, rdb = tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb"
    rdx.write_bytes(gzip.compress(w.header() + index))
    rdb.write_bytes(blob)
    return rdx, rdb


def test_lazyload_and_austen_paragraphs(tmp_path):
    w1, w2 = RWriter(), RWriter()
    emma = w1.header() + w1.strs(
        [
            "EMMA",
            "",
            "CHAPTER I",
            "",
            "Emma Woodhouse, handsome,",
            "clever, and _rich_.",
            "",
            "",
            "Short one.",
            "",
        ]
    )
    pers = w2.header() + w2.strs(["Sir Walter Elliot, of Kellynch Hall, in Somersetshire"])
    rdx, rdb = _lazyload_db(tmp_path, {"emma": emma, "persuasion": pers})
    assert read_rds(rdx).names() == ["variables", "references", "compressed"]
    assert read_lazyload(rdx, rdb)["emma"].value[0] == "EMMA"
    docs = corpora.parse_austen(rdx, rdb)
    assert [d.text for d in docs] == [
        "Emma Woodhouse, handsome, clever, and rich.",
        "Sir Walter Elliot, of Kellynch Hall, in Somersetshire",
    ]
    assert [d.key for d in docs] == ["emma:0", "persuasion:0"]


WIKI = {
    f"T{i}": {
        "title": f"T{i}",
        "extract": f"Article  {i}\ntext.",
        "description": f"desc {i}" if i % 5 else "",
        "topic": ["Biology and health sciences", "Geography", "Uncategorized"][i % 3],
    }
    for i in range(60)
}

CWE_XML = """<?xml version="1.0"?>
<Weakness_Catalog xmlns="http://cwe.mitre.org/cwe-7" xmlns:xhtml="http://www.w3.org/1999/xhtml">
<Weaknesses>
 <Weakness ID="79" Name="Cross-site Scripting" Status="Stable">
  <Description>The product does not neutralize input.</Description>
  <Extended_Description><xhtml:p>Scripts run</xhtml:p><xhtml:p>in browsers.</xhtml:p>
  </Extended_Description>
 </Weakness>
 <Weakness ID="1" Name="Old" Status="Deprecated"><Description>Gone.</Description></Weakness>
</Weaknesses></Weakness_Catalog>"""

WORDNET = (
    "  1 This software and database is being provided to you\n"
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis; "
    '"the dog barked"  \n'
    "00001740 00 a 01 able(a) 0 000 | having the necessary means  \n"
    "02000036 05 n 0a w0 0 w1 0 w2 0 w3 0 w4 0 w5 0 w6 0 w7 0 w8 0 w9 0 000 | ten words  \n"
)


@pytest.fixture
def fixture_sources(tmp_path, monkeypatch):
    """Point every source at small fixture files, through the real parsers."""
    (tmp_path / "summaries_en-us.json").write_text(json.dumps(WIKI))
    (tmp_path / "cwec_v4.14.xml").write_text(CWE_XML)
    for pos in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text(WORDNET if pos == "noun" else "")
    monkeypatch.setattr(corpora, "source_file", lambda name, fname: tmp_path / fname)
    corpora._docs.cache_clear()
    yield tmp_path
    corpora._docs.cache_clear()


def test_split_is_stable_and_balanced():
    assert split_of("wiki", "Cell (biology)") == split_of("wiki", "Cell (biology)")
    splits = [split_of("wiki", f"k{i}") for i in range(2000)]
    assert 900 < splits.count("heldout") < 1100
    # pinned: changing the rule would silently leak evaluation text into fitting
    assert [split_of("wiki", k) for k in ("Cell (biology)", "Virus", "Paris", "DNA")] == [
        "train",
        "heldout",
        "heldout",
        "heldout",
    ]


def test_wiki_corpora_from_fixture(fixture_sources):
    docs = parse_wiki(fixture_sources / "summaries_en-us.json")
    assert len(docs) == 60 and docs[0].text == "Article 0 text."
    train, held = load_corpus("wiki:biology"), load_corpus("wiki:biology", "heldout")
    assert len(train) + len(held) == 20 and not set(train) & set(held)
    assert all(split_of("wiki", d.key) == "train" for d in load_docs("wiki:biology"))
    not_bio = load_docs("wiki:not-biology", "all")
    assert {d.label for d in not_bio} == {"Geography"}  # the mixed bucket is left out
    assert len(load_corpus("wiki", "all")) == 60


def test_cwe_and_wordnet_from_fixture(fixture_sources):
    docs = parse_cwe(fixture_sources / "cwec_v4.14.xml")
    assert len(docs) == 1 and docs[0].key == "CWE-79"
    assert docs[0].text == (
        "Cross-site Scripting: The product does not neutralize input. Scripts run in browsers."
    )
    wn = parse_wordnet_file(fixture_sources / "data.noun")
    assert [d.label for d in wn] == ["noun.animal", "adj.all", "noun.animal"]
    assert wn[0].text == 'dog, domestic dog, Canis familiaris: a member of the genus Canis; "the dog barked"'
    assert wn[1].text.startswith("able: ")  # adjective marker stripped
    assert wn[2].text.startswith("w0, w1") and "w9" in wn[2].text  # hex word count
    assert len(load_corpus("wordnet:noun.animal", "all")) == 2
    assert len(load_corpus("cwe", "all")) == 1


def test_unknown_names_and_splits():
    with pytest.raises(SaeguardError, match="unknown corpus"):
        load_corpus("wiki:nope")
    with pytest.raises(SaeguardError, match="unknown corpus"):
        load_corpus("wiki:not-uncategorized")
    with pytest.raises(SaeguardError, match="unknown split"):
        load_corpus("cwe", "test")
    names = available_corpora()
    assert "wiki:biology" in names and "wordnet:noun.plant" in names and "austen" in names
    assert len(corpora.WIKI_TOPICS) == 12


@pytest.mark.integration
def test_real_corpora():
    corpora._docs.cache_clear()
    bio_train, bio_held = load_corpus("wiki:biology"), load_corpus("wiki:biology", "heldout")
    assert len(bio_train) + len(bio_held) == 1358
    assert 0.4 < len(bio_held) / 1358 < 0.6 and not set(bio_train) & set(bio_held)
    assert sum(len(load_corpus(f"wiki:{s}", "all")) for s in corpora.WIKI_SLUGS) == 10033
    assert not {d.label for d in load_docs("wiki:not-biology", "all")} & {
        "Biology and health sciences",
        "Uncategorized",
    }
    assert 900 < len(load_corpus("cwe", "all")) < 963
    assert len(load_corpus("wordnet", "all")) == 117659
    assert len(load_corpus("wordnet:noun.animal", "all")) == 7509
    austen = load_corpus("austen", "all")
    assert {d.label for d in load_docs("austen", "all")} == set(corpora.AUSTEN_BOOKS)
    assert any(p.startswith("It is a truth universally acknowledged") for p in austen)
