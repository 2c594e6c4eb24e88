"""Ablation: one axis at a time around the centre; the static clamp is DSG with the gate forced on."""

from __future__ import annotations

from dataclasses import replace

import pytest

from saeguard.experiments.ablation import AblationConfig, AblationRecord, along, headlines, run_ablation
from saeguard.experiments.common import Statistics, load_documents
from saeguard.experiments.harness import Harness, Scores, SetScore


def test_axes_vary_one_at_a_time_around_the_centre_without_duplicates(tiny_fit):
    config = AblationConfig(
        clamp=["2x", "20x"],
        gate_percentile=[50.0, 95.0],
        ratio_percentile=[90.0],
        n_features=[1, 2],
        fit=tiny_fit,
    )
    keys = [p.key for p in config.points()]
    assert len(keys) == len(set(keys))
    assert keys == [
        "dsg:p_ratio=90,n=1,c=2x,p_dyn=95",
        "dsg:p_ratio=90,n=1,c=20x,p_dyn=95",  # the centre, once
        "dsg:p_ratio=90,n=1,c=20x,p_dyn=50",
        "dsg:p_ratio=90,n=2,c=20x,p_dyn=95",
        "static:p_ratio=90,n=1,c=2x",
        "static:p_ratio=90,n=1,c=20x",
        "static:p_ratio=90,n=2,c=20x",
    ]


def test_static_clamp_equals_the_dynamic_guard_with_its_gate_forced_on(world, tiny_fit, tiny_eval, tmp_path):
    config = AblationConfig(
        forget=[world.bio],
        retain=[world.retain],
        forget_mcq=[world.bio_mcq],
        utility_mcq=[world.history_mcq, world.utility_mcq],
        clamp=["20x"],
        gate_percentile=[95.0],
        ratio_percentile=[90.0],
        n_features=[1, 2],
        fit=tiny_fit,
        eval=tiny_eval,
    )
    cache = tmp_path / "cache"  # where world.run keeps the statistics
    result = world.run(run_ablation, config)
    done = {r.key: r for r in result.records}
    assert all(r.error is None for r in result.records), [r.error for r in result.records]
    static, dynamic = (
        done["static:p_ratio=90,n=2,c=20x"].scores,
        done["dsg:p_ratio=90,n=2,c=20x,p_dyn=95"].scores,
    )
    assert static.guards[0].latent_ids == dynamic.guards[0].latent_ids and static.guards[0].gate == "always"
    assert all(s.flagged == 1.0 for s in static.sets.values())
    assert dynamic.flagged([world.history_mcq, world.utility_mcq]) < 1.0

    # the same latents and clamp, a dynamic gate whose tau no input can stay under: the same predictions
    docs = {
        role: load_documents([path], "train", role=role, seed=tiny_fit.seed)
        for role, path in (("forget", world.bio), ("retain", world.retain))
    }
    stats = Statistics.compute(
        world.model,
        world.tokenizer,
        world.sae,
        docs["forget"],
        docs["retain"],
        tiny_fit,
        cache_dir=cache,
        show_progress=False,
    )
    guard = stats.guard(replace(tiny_fit, n_features=2))
    assert guard.config.gate == "dynamic"
    harness = Harness.build(
        world.model,
        world.tokenizer,
        [world.bio_mcq, world.history_mcq, world.utility_mcq],
        tiny_eval,
        show_progress=False,
    )
    forced_on = harness.score([replace(guard, tau=-1.0)])
    for name, scores in static.sets.items():
        assert forced_on.sets[name].predictions == scores.predictions, name
    assert (tmp_path / "out" / "ablation.png").is_file()


def test_headlines_read_the_centre_and_the_forget_range_along_each_axis(tiny_fit):
    config = AblationConfig(
        forget_mcq=["bio"],
        utility_mcq=["geo"],
        clamp=["2x", "20x"],
        gate_percentile=[50.0, 95.0],
        ratio_percentile=[90.0],
        n_features=[1, 2],
        fit=tiny_fit,  # centre: p_ratio 90, N 1, 20x, p_dyn 95
    )
    forget = {
        "dsg:p_ratio=90,n=1,c=2x,p_dyn=95": 0.8,
        "dsg:p_ratio=90,n=1,c=20x,p_dyn=95": 0.3,
        "dsg:p_ratio=90,n=1,c=20x,p_dyn=50": 0.2,
        "dsg:p_ratio=90,n=2,c=20x,p_dyn=95": None,  # failed: drops out of its axis
        "static:p_ratio=90,n=1,c=2x": 0.7,
        "static:p_ratio=90,n=1,c=20x": 0.5,
        "static:p_ratio=90,n=2,c=20x": 0.6,
    }
    records = []
    for point in config.points():
        a, utility = forget[point.key], 1.0 if point.gate == "dynamic" else 0.8
        if a is None:
            records.append(AblationRecord.of(point, "c", error="fewer candidates than n_features"))
            continue
        sets = {"bio": SetScore(a, round(10 * a), 10), "geo": SetScore(utility, round(10 * utility), 10)}
        records.append(AblationRecord.of(point, "c", scores=Scores(sets)))
    assert [r.clamp for r in along(records, "clamp", "dynamic", config.fit)] == ["2x", "20x"]
    assert [r.n_features for r in along(records, "n_features", "always", config.fit)] == [1, 2]
    assert along(records, "gate_percentile", "always", config.fit) == []  # the static clamp has no gate
    found = {h.label: h.value for h in headlines(records, config)}
    assert found == {
        "dsg centre: forget accuracy": 0.3,
        "dsg centre: utility accuracy": 1.0,
        "dsg: forget accuracy range over clamp c": pytest.approx(0.5),
        "dsg: forget accuracy range over p_dyn": pytest.approx(0.1),
        "static centre: forget accuracy": 0.5,
        "static centre: utility accuracy": 0.8,
        "static: forget accuracy range over clamp c": pytest.approx(0.2),
        "static: forget accuracy range over N": pytest.approx(0.1),
    }  # one value on p_ratio (and on N for dsg): no range
