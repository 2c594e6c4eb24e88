"""Data efficiency: fractions and seeds are recorded; the 100% point is the full-data fit exactly."""

from __future__ import annotations

import math

import pytest

from saeguard import Guardrail
from saeguard.experiments.common import load_documents
from saeguard.experiments.data_efficiency import (
    DataEfficiencyConfig,
    DataRecord,
    headlines,
    run_data_efficiency,
    subset,
    summary,
)
from saeguard.experiments.harness import Scores, SetScore
from saeguard.testing import FORGET_WORDS, corpus

from .conftest import UTILITY_WORDS


def test_subset_draws_a_seeded_ordered_share_and_everything_at_one():
    docs = [f"doc {i}" for i in range(40)]
    assert subset(docs, 1.0, 3) == docs
    part = subset(docs, 0.1, 0)
    assert len(part) == 4 and part == sorted(part, key=docs.index)
    assert part == subset(docs, 0.1, 0) and part != subset(docs, 0.1, 1)
    assert len(subset(docs, 0.001, 0)) == 1  # never empty


def test_fractions_and_seeds_are_recorded_and_full_data_equals_the_plain_fit(
    world, tiny_fit, tiny_eval, tmp_path
):
    # retain text that mentions two biology words now and then, so tau is not trivially 0
    mixed = world.write("mixed.txt", corpus(UTILITY_WORDS * 6 + FORGET_WORDS[:2], 16, 30, seed=4))
    config = DataEfficiencyConfig(
        forget=[world.bio],
        retain=[mixed],
        forget_mcq=[world.bio_mcq],
        utility_mcq=[world.utility_mcq],
        fractions=[0.25, 1.0],
        seeds=[0, 1],
        rmu_fractions=[1.0],
        rmu={"layer": 1, "steps": 2, "batch_size": 2, "seq_len": 16, "steering_coeff": 10.0},
        fit=tiny_fit,
        eval=tiny_eval,
    )
    result = world.run(run_data_efficiency, config)
    docs = load_documents([world.bio], "train", role="forget", seed=tiny_fit.seed)
    keys = [r.key for r in result.records]
    assert keys == [
        "dsg:fraction=0.25,seed=0",
        "dsg:fraction=0.25,seed=1",
        "dsg:fraction=1,seed=0",
        "rmu:fraction=1,seed=0",
    ]
    assert all(r.error is None for r in result.records), [r.error for r in result.records]
    assert [(r.fraction, r.seed, r.documents) for r in result.records[:3]] == [
        (0.25, 0, math.ceil(0.25 * len(docs))),
        (0.25, 1, math.ceil(0.25 * len(docs))),
        (1.0, 0, len(docs)),
    ]
    retain = load_documents([mixed], "train", role="retain", seed=tiny_fit.seed)
    full = Guardrail.fit(
        world.model,
        world.tokenizer,
        world.sae,
        forget=docs,
        retain=retain,
        config=tiny_fit,
        show_progress=False,
    )
    recorded = result.records[2].scores.guards[0]
    assert recorded.latent_ids == [int(i) for i in full.latents.ids]
    assert recorded.tau == full.tau > 0 and recorded.clamp_value == full.clamp_value
    assert result.records[3].scores.guards == []  # RMU: weights, no guard
    assert any(h.label == "dsg: forget accuracy, all documents" for h in result.headlines)


def _record(method: str, fraction: float, seed: int, forget: float, utility: float) -> DataRecord:
    sets = {
        "bio": SetScore(forget, round(10 * forget), 10),
        "geo": SetScore(utility, round(10 * utility), 10),
    }
    key = f"{method}:fraction={fraction:g},seed={seed}"
    return DataRecord(key=key, context="c", method=method, fraction=fraction, seed=seed, scores=Scores(sets))


def test_headline_compares_the_seed_mean_at_five_percent_with_the_full_data_fit():
    config = DataEfficiencyConfig(forget_mcq=["bio"], utility_mcq=["geo"], fractions=[0.05, 0.25, 1.0])
    records = [
        _record("dsg", 1.0, 0, 0.3, 0.9),
        _record("dsg", 0.05, 0, 0.2, 0.8),
        _record("dsg", 0.05, 1, 0.6, 1.0),
        _record("dsg", 0.25, 0, 0.3, 0.9),
        _record("dsg", 0.25, 1, 0.3, 0.9),
        _record("rmu", 0.05, 0, 0.9, 0.2),  # RMU never enters DSG's headline
        DataRecord(
            key="dsg:fraction=0.25,seed=2", context="c", method="dsg", fraction=0.25, seed=2, error="x"
        ),
    ]
    assert summary(records, "dsg", ["bio"]) == {
        0.05: (pytest.approx(0.4), pytest.approx(0.2), 2),  # mean, sd over seeds, seeds
        0.25: (pytest.approx(0.3), pytest.approx(0.0), 2),  # the failed seed is left out
        1.0: (0.3, 0.0, 1),
    }
    found = {h.label: (h.value, h.met) for h in headlines(records, config)}
    assert found == {
        "dsg: forget accuracy, all documents": (0.3, None),
        "dsg: forget accuracy at 0.05 minus full data": (pytest.approx(0.1), False),  # target: <= 0.05
        "dsg: utility at 0.05 minus full data": (pytest.approx(0.0), None),
        "dsg: forget accuracy at 0.25 minus full data": (pytest.approx(0.0), None),  # no target there
        "dsg: utility at 0.25 minus full data": (pytest.approx(0.0), None),
    }
    assert headlines(records[1:], config) == []  # no full-data fit: nothing to compare with


def test_quick_keeps_the_target_fraction_and_the_full_data_with_two_seeds():
    points = [p.key for p in DataEfficiencyConfig.quick().points()]
    assert points == [
        "dsg:fraction=0.05,seed=0",
        "dsg:fraction=0.05,seed=1",
        "dsg:fraction=0.25,seed=0",
        "dsg:fraction=0.25,seed=1",
        "dsg:fraction=1,seed=0",
        "rmu:fraction=1,seed=0",
    ]
