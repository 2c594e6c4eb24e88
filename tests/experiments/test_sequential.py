"""Sequential unlearning: each request adds a guardrail; earlier guards' decisions never change."""

from __future__ import annotations

import json

import pytest

from saeguard.experiments.harness import Scores, SetScore
from saeguard.experiments.sequential import (
    SequentialConfig,
    SequentialRecord,
    Topic,
    headlines,
    run_sequential,
)
from saeguard.testing import PLANTED_LATENT

from .conftest import HISTORY_LATENT


def _config(world, tiny_fit, tiny_eval) -> SequentialConfig:
    return SequentialConfig(
        topics=[
            Topic("bio", [world.bio], world.bio_mcq),
            Topic("history", [world.history], world.history_mcq),
        ],
        retain=[world.retain],
        utility_mcq=[world.utility_mcq],
        methods=["dsg", "union", "ga"],
        gradient={"ga": {"learning_rate": 1e-3, "steps": 2, "batch_size": 2, "seq_len": 16}},
        fit=tiny_fit,
        eval=tiny_eval,
    )


def test_second_guard_adds_its_topic_without_changing_the_first(world, tiny_fit, tiny_eval, tmp_path):
    config = _config(world, tiny_fit, tiny_eval)
    out = tmp_path / "out"
    result = world.run(run_sequential, config)
    done = {r.key: r for r in result.records}
    assert all(r.error is None for r in result.records), [r.error for r in result.records]
    bio, history, utility = world.bio_mcq, world.history_mcq, world.utility_mcq
    base, one, two = done["base"].scores, done["dsg:step=1"].scores, done["dsg:step=2"].scores

    # request 1: the bio guard reads the bio latent and flags bio questions only
    assert [g.latent_ids for g in one.guards] == [[PLANTED_LATENT]]
    assert one.guards[0].flagged == {bio: 1.0, history: 0.0, utility: 0.0}
    # request 2: a second guard on the history latent; the first guard decides exactly as before
    assert [g.latent_ids for g in two.guards] == [[PLANTED_LATENT], [HISTORY_LATENT]]
    assert two.guards[0].flagged == one.guards[0].flagged
    assert two.guards[1].flagged == {bio: 0.0, history: 1.0, utility: 0.0}
    assert two.sets[bio].predictions == one.sets[bio].predictions  # stacking leaves request 1's effect
    assert one.sets[history].predictions == base.sets[history].predictions
    assert two.sets[history].predictions != base.sets[history].predictions  # now history is clamped
    assert (
        two.sets[utility].predictions == base.sets[utility].predictions and two.sets[utility].flagged == 0.0
    )
    # the union variant: one guard fitted on both topics' text, N latents per topic so far
    union = [done[f"union:step={k}"].scores.guards for k in (1, 2)]
    assert [len(u) for u in union] == [1, 1] and union[0][0].latent_ids == [PLANTED_LATENT]
    assert len(union[1][0].latent_ids) == 2 and PLANTED_LATENT in union[1][0].latent_ids
    # gradient methods: one record per request, from the chained models
    assert done["ga:step=2"].requested == ["bio", "history"] and done["ga:step=2"].scores.guards == []

    for name in ("index.html", "sequential.md", "sequential.json", "sequential.png", "records.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "sequential.json").read_text())
    assert saved["kind"] == "saeguard-experiment" and "threat" in (out / "sequential.md").read_text().lower()
    again = world.run(run_sequential, config)
    assert (again.computed, again.skipped) == (0, 6)


def _scores(**accuracy: float) -> Scores:
    """Per-set accuracies on 10 items each."""
    return Scores({name: SetScore(a, round(10 * a), 10) for name, a in accuracy.items()})


def test_headlines_judge_the_worst_requested_topic_and_utility_against_the_unguarded_base():
    topics = [Topic(name, [f"{name}.txt"], name) for name in ("bio", "cyber", "history")]
    config = SequentialConfig(topics=topics, utility_mcq=["geo"], methods=["dsg", "rmu", "union"])
    done = {
        key: SequentialRecord(key=key, context="c", method=key.split(":")[0], step=step, scores=scores)
        for key, step, scores in [
            ("base", 0, _scores(bio=1.0, cyber=1.0, history=1.0, geo=0.5)),
            ("dsg:step=2", 2, _scores(bio=0.2, cyber=0.2, history=1.0, geo=0.5)),  # not the last request
            ("dsg:step=3", 3, _scores(bio=0.2, cyber=0.3, history=0.1, geo=0.5)),
            ("rmu:step=3", 3, _scores(bio=0.1, cyber=0.5, history=0.2, geo=0.4)),
        ]
    }  # union never finished: no headline for it
    found = {h.label: (h.value, h.met) for h in headlines(done, config)}
    assert found == {
        "dsg: worst forget accuracy after 3 requests": (0.3, True),  # <= chance + 10 points
        "dsg: utility / unguarded after 3 requests": (1.0, True),
        "rmu: worst forget accuracy after 3 requests": (0.5, False),
        "rmu: utility / unguarded after 3 requests": (pytest.approx(0.8), False),  # < 98% of the base
    }
