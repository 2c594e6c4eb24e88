"""The shared harness: pooled scores, and a question set without known items is reported, not fatal."""

from __future__ import annotations

from types import SimpleNamespace

from saeguard.experiments.common import EvalSettings, Harness, Scores, SetScore


def test_scores_pool_accuracy_and_flags_over_items_not_sets():
    scores = Scores({"a": SetScore(0.5, 2, 4, 1.0), "b": SetScore(1.0, 1, 1, 0.0), "c": SetScore(None, 0, 0)})
    assert scores.accuracy(["a", "b"]) == 3 / 5 and scores.items(["a", "b", "c"]) == 5
    assert scores.flagged(["a", "b"]) == 4 / 5
    assert scores.accuracy(["c"]) is None and scores.flagged(["c"]) is None


def test_a_set_the_base_never_knows_is_kept_empty_and_scored_as_none(world, monkeypatch):
    from saeguard.experiments import common

    monkeypatch.setattr(common, "known_items", lambda *a, **k: SimpleNamespace(ids=[]))  # knows nothing
    settings = EvalSettings(known_filter=True, mcq_limit=None)
    harness = Harness.build(world.model, world.tokenizer, [world.bio_mcq], settings, show_progress=False)
    assert harness.known == {world.bio_mcq: {"total": 6, "known": 0}} and harness.sets[world.bio_mcq] == []
    assert harness.score().sets[world.bio_mcq] == SetScore(None, 0, 0, None)
