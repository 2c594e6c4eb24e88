"""Built MCQ sets: schema, determinism, distractor rules, held-out only."""

from __future__ import annotations

import json

import pytest

from saeguard.data import corpora, mcq
from saeguard.data.corpora import Doc, split_of
from saeguard.data.mcq import build_mcq, cwe_items, make_item, read_jsonl, wiki_items, write_jsonl
from saeguard.errors import SaeguardError


def _check_schema(item: dict) -> None:
    assert set(item) == {"question", "choices", "answer", "subject", "id"}
    assert len(item["choices"]) == 4 and 0 <= item["answer"] < 4
    folded = [c.casefold() for c in item["choices"]]
    assert len(set(folded)) == 4 and all(item["choices"])


def test_make_item_is_seeded_by_id_and_excludes_answer_variants():
    pool = ["Answer", "ANSWER", "answer", "b", "c", "d", "e", "f", "B"]
    a = make_item("x:1", "Q?", "answer", pool, "s")
    assert a == make_item("x:1", "Q?", "answer", list(reversed(pool))[::-1], "s")
    _check_schema(a)
    assert a["choices"][a["answer"]] == "answer"
    assert sum(c.casefold() == "answer" for c in a["choices"]) == 1
    positions = {make_item(f"x:{i}", "Q?", "answer", pool, "s")["answer"] for i in range(40)}
    assert positions == {0, 1, 2, 3}
    assert make_item("x:1", "Q?", "a", ["a", "b", "B", "c"], "s") is None  # only 2 distractors


def test_wiki_items_draw_distractors_from_same_topic():
    docs = [Doc(f"b{i}", "t", "Bio", f"B{i}", f"bio desc {i}") for i in range(6)]
    docs += [Doc(f"g{i}", "t", "Geo", f"G{i}", f"geo desc {i}") for i in range(6)]
    docs.append(Doc("n", "t", "Bio", "NoDesc", ""))
    items = wiki_items(docs, docs)
    assert len(items) == 12
    for item in items:
        _check_schema(item)
        topic = "bio" if item["id"].startswith("wiki:B") else "geo"
        assert all(c.startswith(topic) for c in item["choices"])
        assert item["question"] == f"What is {item['id'][5:]}?"
        assert item["subject"] == topic


def test_cwe_items():
    docs = [Doc(f"CWE-{i}", "t", "cwe", f"Name {i}", f"Description {i}.") for i in range(5)]
    items = cwe_items(docs)
    assert len(items) == 5
    first = next(i for i in items if i["id"] == "cwe:CWE-0")
    assert first["choices"][first["answer"]] == "Name 0"
    assert "Description 0." in first["question"]


def test_jsonl_roundtrip_is_atomic(tmp_path):
    items = [make_item(f"x:{i}", "Q?", "é", ["a", "b", "c", "d"], "s") for i in range(3)]
    path = write_jsonl(items, tmp_path / "sub" / "set.jsonl")
    assert read_jsonl(path) == items
    assert [p.name for p in path.parent.iterdir()] == ["set.jsonl"]
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["choices"]


def test_bad_requests():
    with pytest.raises(SaeguardError, match="unknown MCQ set"):
        build_mcq("austen")
    with pytest.raises(SaeguardError, match="split"):
        build_mcq("cwe", split="all")
    with pytest.raises(SaeguardError, match="does not exist"):
        read_jsonl("/nonexistent/set.jsonl")


@pytest.mark.integration
def test_real_wiki_biology_set_is_heldout_and_well_formed():
    corpora._docs.cache_clear()
    items = build_mcq("wiki:biology")
    assert 550 < len(items) < 750
    heldout = {d.title: d for d in corpora.load_docs("wiki:biology", "heldout")}
    pool = {d.description for d in corpora.load_docs("wiki:biology", "heldout")}
    for item in items:
        _check_schema(item)
        title = item["id"].removeprefix("wiki:")
        assert split_of("wiki", title) == "heldout" and title in heldout
        assert item["choices"][item["answer"]] == heldout[title].description
        assert set(item["choices"]) <= pool  # distractors: held-out biology descriptions
    assert build_mcq("wiki:biology", limit=20) == items[:20]
    assert build_mcq("wiki:geography", limit=5)[0]["subject"] == "geography"


@pytest.mark.integration
def test_real_cwe_set():
    items = build_mcq("cwe")
    assert 350 < len(items) < 550
    assert all(split_of("cwe", i["id"].removeprefix("cwe:")) == "heldout" for i in items)
    for item in items[:50]:
        _check_schema(item)
    assert mcq.available_mcq()[-1] == "cwe"


# -- other-style sets (issue 13 §4): WordNet glosses and HPO definitions ------------------------
def _wordnet_docs() -> list[Doc]:
    glosses = {
        "noun.body": [
            ("eye, oculus", 'the organ of sight; "she has beautiful eyes"'),
            ("kidney", "either of two bean-shaped excretory organs"),
            ("liver", "large and complicated reddish-brown glandular organ"),
            ("spleen", "a large dark-red oval organ on the left side"),
            ("heart, pump", "the hollow muscular organ that keeps blood moving"),
            ("lung", "either of two saclike respiratory organs"),
            ("femur, thighbone", "the longest and thickest bone of the human skeleton"),
        ],
        "noun.animal": [
            ("genus Felis, Felis", "type genus of the Felidae"),  # taxon: capitalised, dropped
            ("cat", "feline mammal usually having thick soft fur"),
            ("leveret", "a young hare especially one in its first year"),
            ("mason bee", "any of numerous solitary bees that build nests"),
            ("wild duck", "an undomesticated duck (especially a mallard)"),  # reveals "duck": dropped
            ("cisco", "important food fish of cold deep lakes"),
        ],
        "noun.artifact": [
            ("stylus", "a sharp pointed device attached to the cartridge of a record player"),
            ("camera", "equipment for taking photographs"),
            ("cleats", "shoes with leather or metal projections on the soles"),
            ("pieta", "a representation of the Virgin Mary mourning"),
            ("hammer", "a hand tool with a heavy rigid head"),
        ],
    }
    docs = []
    for label, rows in glosses.items():
        for index, (lemmas, gloss) in enumerate(rows):
            docs.append(Doc(f"n{label}{index}", f"{lemmas}: {gloss}", label, lemmas.split(", ")[0]))
    return docs


def test_wordnet_term_takes_the_gloss_before_its_examples_and_skips_taxa_and_giveaways():
    docs = {doc.title: doc for doc in _wordnet_docs()}
    assert mcq.wordnet_term(docs["eye"]) == (["eye", "oculus"], "the organ of sight")
    assert mcq.wordnet_term(docs["genus Felis"]) is None
    assert mcq.wordnet_term(docs["wild duck"]) is None  # "duck" is in its own definition
    assert mcq.reveals(["Gingivitis"], "Inflammation of the gingiva")  # 5-letter stems meet
    assert not mcq.reveals(["Abnormal kidney morphology"], "An abnormality of the renal organ")


def test_wordnet_items_ask_for_the_term_against_terms_of_the_same_file():
    items = mcq.wordnet_items(_wordnet_docs(), mcq.BIOLOGY_LEXNAMES)
    body = {lemma for lemma in ("eye", "kidney", "liver", "spleen", "heart", "lung", "femur")}
    animal = {"cat", "leveret", "mason bee", "cisco"}
    assert len(items) == 11  # 7 body + 4 usable animal synsets
    for item in items:
        _check_schema(item)
        answer = item["choices"][item["answer"]]
        pool, subject = (body, "anatomy") if answer in body else (animal, "zoology")
        assert set(item["choices"]) <= pool and item["subject"] == subject
        assert item["question"].startswith('Which term means "') and answer not in item["question"]
    eye = next(i for i in items if i["choices"][i["answer"]] == "eye")
    assert eye["question"] == 'Which term means "the organ of sight"?'
    assert "pump" not in eye["choices"]  # a synonym of the answer is never a distractor
    assert mcq.wordnet_items(list(reversed(_wordnet_docs())), mcq.BIOLOGY_LEXNAMES) == list(reversed(items))
    general = mcq.wordnet_items(_wordnet_docs(), mcq.GENERAL_LEXNAMES)
    assert len(general) == 5 and {i["subject"] for i in general} == {"general knowledge"}


def _hpo_rows() -> list[dict]:
    def row(term_id, name, definition, parent, obsolete=False):
        return {
            "id": term_id,
            "name": name,
            "definition": f'"{definition}" [PMID:1]' if definition else "",
            "is_a": [f"{parent} ! x"] if parent else [],
            "is_obsolete": obsolete,
        }

    rows = [
        row("HP:0000001", "All", "", None),
        row("HP:0000118", "Phenotypic abnormality", "A phenotypic abnormality.", "HP:0000001"),
        row("HP:0000005", "Mode of inheritance", "A mode of inheritance.", "HP:0000001"),
        row("HP:1", "Abnormality of the eye", "Any abnormality of the eye.", "HP:0000118"),
        row("HP:2", "Abnormality of the ear", "Any abnormality of the ear.", "HP:0000118"),
    ]
    eye = ["Myopia", "Hyperopia", "Cataract", "Glaucoma", "Nystagmus"]
    rows += [row(f"HP:1{i}", name, f"Eye sign number {i}.", "HP:1") for i, name in enumerate(eye)]
    rows += [row(f"HP:2{i}", f"Ear sign {i}", f"Hearing finding {i}.", "HP:2") for i in range(4)]
    rows += [
        row("HP:30", "Autosomal dominant inheritance", "Dominant mode.", "HP:0000005"),  # not a phenotype
        row("HP:31", "Retired sign", "Gone.", "HP:1", obsolete=True),
        row("HP:32", "Long sign", "x" * 301, "HP:1"),  # too long to use verbatim
        row("HP:33", "Tooth loss", "Loss of a tooth.", "HP:10"),  # grandchild of the eye branch
        row("HP:34", "Undefined sign", "", "HP:1"),
    ]
    return rows


def test_parse_hpo_keeps_defined_phenotypes_with_their_organ_branch():
    terms = {t.id: t for t in mcq.parse_hpo(_hpo_rows())}
    assert set(terms) == {f"HP:1{i}" for i in range(5)} | {f"HP:2{i}" for i in range(4)} | {"HP:33"}
    assert terms["HP:33"].branch == "HP:1" and terms["HP:20"].branch == "HP:2"
    assert terms["HP:10"].definition == "Eye sign number 0."


def test_hpo_items_ask_for_the_condition_against_same_branch_names():
    items = mcq.hpo_items(mcq.parse_hpo(_hpo_rows()))
    by_id = {item["id"]: item for item in items}
    assert "hpo:HP:33" not in by_id  # "Tooth loss" / "Loss of a tooth.": answers itself
    assert len(items) == 9
    ear = by_id["hpo:HP:20"]
    assert set(ear["choices"]) == {f"Ear sign {i}" for i in range(4)}  # the ear branch's names only
    myopia = by_id["hpo:HP:10"]
    _check_schema(myopia)
    assert myopia["question"] == "Which condition is described: Eye sign number 0?"
    assert myopia["choices"][myopia["answer"]] == "Myopia" and myopia["subject"] == "medicine"
    assert set(myopia["choices"]) <= {"Myopia", "Hyperopia", "Cataract", "Glaucoma", "Nystagmus"}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "source", "low", "high"),
    [("wordnet:biology", "wordnet", 2000, 3000), ("wordnet:general", "wordnet", 6000, 8000),
     ("hpo:phenotype", "hpo", 800, 1200)],
)  # fmt: skip
def test_real_other_style_sets_are_heldout_deterministic_and_well_formed(name, source, low, high):
    items = build_mcq(name)
    assert low < len(items) < high
    for item in items:
        _check_schema(item)
        assert split_of(source, item["id"].split(":", 1)[1]) == "heldout"
    assert build_mcq(name, limit=30) == items[:30]
    assert build_mcq(name, split="train", limit=5)[0]["id"] not in {i["id"] for i in items}
