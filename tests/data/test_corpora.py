"""Corpus parsing, the train/heldout split and the R lazy-load reader (fixtures + real data)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zlib
from pathlib import Path

import numpy as np
import pytest
from rdata.conversion import convert_python_to_r_data
from rdata.unparser import unparse_data

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
from saeguard.data.rdata import decompress_record, read_lazyload, unserialize
from saeguard.errors import SaeguardError

# What R 4.2.1 writes for serialize(c("a", NA, "é"), NULL, version = 3) (XDR): header,
# STRSXP of length 3, an ASCII-flagged CHARSXP, NA_STRING (length -1), a UTF-8-flagged CHARSXP.
R_STRINGS = (
    b"X\n"
    + bytes.fromhex("00000003 00040201 00030500 00000005")
    + b"UTF-8"
    + bytes.fromhex("00000010 00000003 00040009 00000001")
    + b"a"
    + bytes.fromhex("00000009 ffffffff 00008009 00000002")
    + "é".encode()
)


def _serialize(obj: object) -> bytes:
    """R's XDR serialization of a Python value, written by rdata (no R needed)."""
    return unparse_data(convert_python_to_r_data(obj))


def _record(raw: bytes, method: int, kind: bytes = b"Z") -> bytes:
    """One lazy-load record as R frames it: 4-byte length, then zlib (method 1) or a typed stream."""
    if method == 1:
        return len(raw).to_bytes(4, "big") + zlib.compress(raw)
    body = {b"Z": lzma.compress, b"2": bz2.compress, b"1": zlib.compress, b"0": bytes}[kind](raw)
    return len(raw).to_bytes(4, "big") + kind + body


def _lazyload_db(
    tmp_path: Path, objects: dict[str, object], method: int = 1, kind: bytes = b"Z"
) -> tuple[Path, Path]:
    """Build an R lazy-load database (.rdx index + .rdb records) like R packages ship."""
    blob, variables = b"", {}
    for name, obj in objects.items():
        record = _record(_serialize(obj), method, kind)
        variables[name] = np.array([len(blob), len(record)], dtype=np.int32)
        blob += record
    compressed = np.array([True]) if method == 1 else np.array([method], dtype=np.int32)
    index = {"variables": variables, "references": {}, "compressed": compressed}
    rdx, rdb = tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb"
    rdx.write_bytes(gzip.compress(_serialize(index)))
    rdb.write_bytes(blob)
    return rdx, rdb


def test_unserialize_decodes_r_written_strings_with_na_and_utf8():
    out = unserialize(R_STRINGS)
    assert out.tolist() == ["a", None, "é"]
    assert unserialize(gzip.compress(R_STRINGS)).tolist() == ["a", None, "é"]


@pytest.mark.parametrize(("method", "kind"), [(1, b""), (2, b"2"), (3, b"Z"), (3, b"1"), (3, b"0")])
def test_lazyload_reads_every_record_compression(tmp_path, method, kind):
    objects = {"a": np.array(["x", "é"]), "b": np.array([3, 1, 2], dtype=np.int32)}
    rdx, rdb = _lazyload_db(tmp_path, objects, method, kind)
    out = read_lazyload(rdx, rdb)
    assert list(out) == ["a", "b"]
    assert out["a"].tolist() == ["x", "é"]
    assert out["b"].tolist() == [3, 1, 2]


def test_decompress_record_rejects_wrong_length_and_unknown_type():
    raw = _serialize(np.array(["x"]))
    record = _record(raw, 1)
    assert decompress_record(record, 1) == raw
    with pytest.raises(ValueError, match="header says"):
        decompress_record((len(raw) + 1).to_bytes(4, "big") + record[4:], 1)
    with pytest.raises(ValueError, match="unknown lazy-load record type"):
        decompress_record(len(raw).to_bytes(4, "big") + b"Q" + raw, 3)


def test_corrupt_lazyload_database_is_one_line_error(tmp_path):
    rdx, rdb = _lazyload_db(tmp_path, {"emma": np.array(["EMMA", "", "Emma Woodhouse"])})
    rdb.write_bytes(rdb.read_bytes()[:-5])
    with pytest.raises(SaeguardError, match="saeguard data fetch"):
        read_lazyload(rdx, rdb)
    rdx.write_bytes(b"not an R file")
    with pytest.raises(SaeguardError, match="cannot read the R lazy-load database"):
        corpora.parse_austen(rdx, rdb)


def test_lazyload_and_austen_paragraphs(tmp_path):
    emma = np.array(
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
    pers = np.array(["Sir Walter Elliot, of Kellynch Hall, in Somersetshire"])
    rdx, rdb = _lazyload_db(tmp_path, {"emma": emma, "persuasion": pers})
    assert read_lazyload(rdx, rdb)["emma"].tolist()[:3] == ["EMMA", "", "CHAPTER I"]
    docs = corpora.parse_austen(rdx, rdb)
    assert [d.text for d in docs] == [
        "Emma Woodhouse, handsome, clever, and rich.",
        "Sir Walter Elliot, of Kellynch Hall, in Somersetshire",
    ]
    assert [d.key for d in docs] == ["emma:0", "persuasion:0"]


@pytest.mark.integration
def test_real_austen_lazyload_has_every_line_of_the_six_novels():
    from saeguard.data.sources import source_file

    books = read_lazyload(source_file("austen", "Rdata.rdx"), source_file("austen", "Rdata.rdb"))
    assert {name: len(lines) for name, lines in books.items()} == {
        "emma": 16235,
        "mansfieldpark": 15349,
        "northangerabbey": 7856,
        "persuasion": 8328,
        "prideprejudice": 13030,
        "sensesensibility": 12624,
    }
    assert books["prideprejudice"].tolist()[:2] == ["PRIDE AND PREJUDICE", ""]
    assert all(isinstance(line, str) for line in books["emma"].tolist())


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
    with pytest.raises(SaeguardError, match="unknown corpus .*saeguard data list"):
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
