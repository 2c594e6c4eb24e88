"""Sequential unlearning: each request adds a guardrail; earlier guards' decisions never change."""

from __future__ import annotations

import json

from saeguard.experiments.sequential import SequentialConfig, Topic, run_sequential
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
    result = run_sequential(
        world.model,
        world.tokenizer,
        world.sae,
        config,
        out,
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
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
    again = run_sequential(
        world.model,
        world.tokenizer,
        world.sae,
        config,
        out,
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )
    assert (again.computed, again.skipped) == (0, 6)
