"""The shared harness and run setup: pooled scores, empty known sets, records as JSON, input checked first."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from saeguard.errors import SaeguardError
from saeguard.experiments.ablation import AblationConfig, run_ablation
from saeguard.experiments.descriptions import SelectedLatent
from saeguard.experiments.harness import EvalSettings, GuardInfo, Harness, Scores, SetScore
from saeguard.experiments.relearn_attack import Drift, RelearnPoint, RelearnRecord
from saeguard.experiments.zero_shot import ZeroShotPoint, ZeroShotRecord
from saeguard.io import to_jsonable


def test_scores_pool_accuracy_and_flags_over_items_not_sets():
    scores = Scores({"a": SetScore(0.5, 2, 4, 1.0), "b": SetScore(1.0, 1, 1, 0.0), "c": SetScore(None, 0, 0)})
    assert scores.accuracy(["a", "b"]) == 3 / 5 and scores.items(["a", "b", "c"]) == 5
    assert scores.flagged(["a", "b"]) == 4 / 5
    assert scores.accuracy(["c"]) is None and scores.flagged(["c"]) is None


def test_a_set_the_base_never_knows_is_kept_empty_and_scored_as_none(world, monkeypatch):
    from saeguard.experiments import harness as harness_module

    monkeypatch.setattr(
        harness_module, "known_items", lambda *a, **k: SimpleNamespace(ids=[])
    )  # knows nothing
    settings = EvalSettings(known_filter=True, mcq_limit=None)
    harness = Harness.build(world.model, world.tokenizer, [world.bio_mcq], settings, show_progress=False)
    assert harness.known == {world.bio_mcq: {"total": 6, "known": 0}} and harness.sets[world.bio_mcq] == []
    assert harness.score().sets[world.bio_mcq] == SetScore(None, 0, 0, None)


def test_records_read_back_from_json_as_written_nested_types_included():
    scores = Scores(
        {"bio": SetScore(0.5, 1, 2, 0.5, [0, 3])},
        [GuardInfo("dsg", [37], 0.1, -5.0, "dynamic", {"bio": 0.5})],
    )
    written = [
        RelearnRecord.of(
            RelearnPoint("rmu", 1e-5, 3),
            "ctx",
            scores=scores,
            forget_nll=2.5,
            drift=Drift(0.9, 1.1, 0.8, 0.7),
        ),
        ZeroShotRecord.of(
            ZeroShotPoint("zero-shot", "p95"),
            "ctx",
            scores=scores,
            selected=[SelectedLatent(37, 1.0, 0.01, ["a"])],
        ),
        ZeroShotRecord.of(ZeroShotPoint("fisher", "0.6"), "ctx", error="no latent matches"),
    ]
    for record in written:
        assert type(record).from_dict(json.loads(json.dumps(to_jsonable(record)))) == record
    assert written[1].key == "zero-shot:tau=p95" and written[1].kind == "saeguard-zero-shot-record"


def test_bad_input_fails_in_setup_before_any_question_is_scored(world, tmp_path, monkeypatch):
    def no_scoring(*_args, **_kwargs):
        raise AssertionError("the harness was built before the input was checked")

    monkeypatch.setattr(Harness, "build", no_scoring)
    empty = world.write("empty.txt", [])
    config = AblationConfig(forget=[empty], retain=[world.retain])
    with pytest.raises(SaeguardError, match="the forget corpora .* have no train documents"):
        world.run(run_ablation, config)
    with pytest.raises(SaeguardError, match="the ablation experiment needs an SAE: pass --sae DIR"):
        run_ablation(world.model, world.tokenizer, None, AblationConfig(), tmp_path / "x")
    with pytest.raises(SaeguardError, match="the n_features axis is empty: give it at least one value"):
        world.run(run_ablation, AblationConfig(n_features=[]))
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()
