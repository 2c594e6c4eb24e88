"""Zero-shot selection: a latent whose strongest contexts hold the query words is selected, no forget data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from saeguard.errors import SaeguardError
from saeguard.experiments.descriptions import (
    DescribeSettings,
    Descriptions,
    LatentDescription,
    LatentExample,
    describe_latents,
    import_descriptions,
    keyword_pattern,
    select_by_description,
)
from saeguard.experiments.zero_shot import BIOLOGY_KEYWORDS, ZeroShotConfig, run_zero_shot
from saeguard.hf.corpus import iter_documents
from saeguard.testing import FORGET_WORDS, PLANTED_LATENT, corpus

from .conftest import UTILITY_WORDS

DESCRIBE = DescribeSettings(seq_len=32, max_chunks=24, batch_size=8, top_k=5)


def _general(world) -> str:
    """General text: kept-topic words, with biology words in two short documents only."""
    docs = corpus(UTILITY_WORDS, 20, 24, seed=5)
    docs[4:4] = ["the cell and the virus"]
    docs[12:12] = ["a gene of the protein"]
    return world.write("general.txt", docs)


def test_descriptions_keep_each_latents_strongest_contexts_and_are_cached(world, tmp_path):
    general = list(iter_documents(_general(world)))
    first = describe_latents(
        world.model, world.tokenizer, world.sae, 1, general, DESCRIBE, cache=tmp_path, show_progress=False
    )
    planted = first.latents[PLANTED_LATENT]
    assert planted.examples and all(e.token.strip() in FORGET_WORDS for e in planted.examples)
    assert [e.activation for e in planted.examples] == sorted(
        (e.activation for e in planted.examples), reverse=True
    )
    assert 0 < planted.frequency < 0.05
    again = describe_latents(
        world.model, world.tokenizer, world.sae, 1, general, DESCRIBE, cache=tmp_path, show_progress=False
    )
    assert again == first and len(list(tmp_path.glob("descriptions-*.json"))) == 1


def test_latent_whose_contexts_are_the_query_words_is_selected_and_compared_with_fisher(
    world, tiny_fit, tiny_eval, tmp_path
):
    config = ZeroShotConfig(
        keywords=["cell", "virus", "gene", "protein"],
        general=[_general(world)],
        hand_taus=[0.5],
        describe=DESCRIBE,
        retain=[world.retain],
        forget=[world.bio],
        forget_mcq=[world.bio_mcq],
        utility_mcq=[world.utility_mcq],
        fit=tiny_fit,
        eval=tiny_eval,
    )
    result = world.run(run_zero_shot, config)
    done = {r.key: r for r in result.records}
    assert list(done) == ["zero-shot:tau=p95", "zero-shot:tau=0.5", "fisher:tau=p95"]
    assert all(r.error is None for r in result.records), [r.error for r in result.records]
    chosen = done["zero-shot:tau=p95"]
    assert chosen.scores.guards[0].latent_ids == [PLANTED_LATENT]
    assert chosen.selected[0].score == 1.0 and any(w in chosen.selected[0].contexts[0] for w in FORGET_WORDS)
    assert chosen.scores.guards[0].flagged[world.bio_mcq] == 1.0  # without one forget document
    assert done["zero-shot:tau=0.5"].scores.guards[0].tau == 0.5
    assert done["fisher:tau=p95"].scores.guards[0].latent_ids == [PLANTED_LATENT]
    shared = {h.label: h.value for h in result.headlines}
    assert shared["Jaccard overlap with the Fisher selection"] == 1.0
    assert "Zero-shot latents" in (tmp_path / "out" / "zero-shot.md").read_text()


def test_zero_shot_guard_calibrates_the_multiscale_rule_like_a_fit(world, tiny_fit, tiny_eval):
    # regression: under the multiscale gate (the demo preset's since 2026-12-01) every zero-shot point
    # failed with "needs its per-window scales from calibration"
    fit = replace(tiny_fit, gate_rule="multiscale", window_tokens=8, min_window_tokens=4)
    config = ZeroShotConfig(
        keywords=["cell", "virus", "gene", "protein"],
        general=[_general(world)],
        hand_taus=[],
        describe=DESCRIBE,
        retain=[world.retain],
        forget_mcq=[world.bio_mcq],
        utility_mcq=[world.utility_mcq],
        fisher=False,
        fit=fit,
        eval=tiny_eval,
    )
    result = world.run(run_zero_shot, config)
    (record,) = result.records
    assert record.error is None, record.error
    guard = record.scores.guards[0]
    assert guard.latent_ids == [PLANTED_LATENT]
    assert guard.flagged[world.bio_mcq] == 1.0 and guard.flagged[world.utility_mcq] == 0.0


def test_imported_descriptions_are_read_from_neuronpedia_style_rows(tmp_path):
    path = tmp_path / "explanations.json"
    path.write_text(
        json.dumps(
            [
                {"index": "37", "description": "biology terms"},
                {"feature": 3, "explanation": "x"},
                {"index": 4},
            ]
        )
    )
    assert import_descriptions(path) == {37: "biology terms", 3: "x"}
    (tmp_path / "empty.jsonl").write_text('{"name": 1}\n')
    with pytest.raises(SaeguardError, match="no rows with an index"):
        import_descriptions(tmp_path / "empty.jsonl")


def _latent(j: int, frequency: float, contexts: list[str], text: str = "") -> LatentDescription:
    examples = [LatentExample(c.split()[-1], c, 1.0) for c in contexts]
    return LatentDescription(j, frequency, 1.0, examples, text)


def test_selection_ranks_by_match_then_rarity_and_skips_dense_latents():
    latents = [
        _latent(0, 0.010, ["the cell wall", "a river bank"]),  # half its contexts match
        _latent(1, 0.200, ["a cell", "the cell"]),  # matches fully but fires on 20% of tokens
        _latent(2, 0.001, ["one cell"]),
        _latent(3, 0.002, ["so much"], text="protein folding"),  # an imported description matches
        _latent(4, 0.001, ["excellent work", "the river"]),  # "cell" only inside a word
    ]
    descriptions = Descriptions("key", DescribeSettings(), 100, latents)
    assert select_by_description(descriptions, ["cell", "protein"], 3, max_frequency=0.05) == [2, 3, 0]
    assert select_by_description(descriptions, ["cell"], 10, max_frequency=0.5) == [2, 1, 0]
    with pytest.raises(SaeguardError, match="no latent's examples match"):
        select_by_description(descriptions, ["virus"], 3)


def test_keywords_no_latent_matches_leave_an_error_record_and_a_report(world, tiny_fit, tiny_eval):
    config = ZeroShotConfig(
        keywords=["zebra"],
        general=[_general(world)],
        hand_taus=[],
        describe=DESCRIBE,
        retain=[world.retain],
        fisher=False,
        forget_mcq=[world.bio_mcq],
        utility_mcq=[world.utility_mcq],
        fit=tiny_fit,
        eval=tiny_eval,
    )
    result = world.run(run_zero_shot, config)
    [record] = result.records
    assert record.key == "zero-shot:tau=p95" and record.scores is None
    assert "no latent's examples match ['zebra']" in record.error
    assert [h.label for h in result.headlines] == ["unguarded forget accuracy"]
    assert (world.folder / "out" / "zero-shot.md").is_file()


def test_biology_keywords_match_genetics_words_but_not_general_or_generic():
    # the default --quick run selected latents firing on "general" while "gene" was a keyword
    pattern = keyword_pattern(BIOLOGY_KEYWORDS)
    for word in ("genes", "genetic", "genome", "Genomics", "cells", "proteins"):
        assert pattern.search(f"the {word} of"), word
    for word in ("general", "generic", "generous", "Secretary General"):
        assert pattern.search(f"in a {word} way") is None, word
