"""The known sets shipped for the default model are what the filter computes (issue 17 §1).

``saeguard/resources/known`` holds the default model's known sets for the demo's and the attack
suite's question sets, so a first run skips ~10 minutes of filtering. They are only read when the
cache key (model weights, tokenizer, items, settings) matches; these tests check that the files are
found for the demo's exact settings and that recomputing part of one gives the same known items.
"""

from __future__ import annotations

import pytest

from saeguard.data.mcq import build_mcq
from saeguard.demo import DemoConfig
from saeguard.demo_scores import shipped_question_sets
from saeguard.eval.items import as_items
from saeguard.eval.known import SHIPPED_KNOWN, KnownConfig, KnownSet, known_cache_path, known_items
from saeguard.eval.mcq import McqConfig

pytestmark = pytest.mark.integration

DEMO = DemoConfig()
CONFIG = KnownConfig(mcq=McqConfig(scorer=DEMO.scorer), permutations=DEMO.permutations)
SETS = shipped_question_sets(DEMO)


@pytest.mark.parametrize(("name", "limit"), SETS)
def test_every_demo_and_attack_set_ships_for_the_default_model(default_model, tmp_path, name, limit):
    model, tokenizer = default_model
    items = as_items(build_mcq(name, "heldout", limit=limit), source=name)
    shipped = SHIPPED_KNOWN / known_cache_path(model, tokenizer, items, CONFIG).name
    assert shipped.is_file(), f"{name}: run scripts/ship_known_sets.py"
    # an empty user cache still finds it, without scoring anything
    found = known_items(model, tokenizer, items, config=CONFIG, dataset=name, cache_dir=tmp_path)
    assert found.ids == KnownSet.load(shipped).ids and found.total == len(items)


def test_recomputing_shipped_items_gives_the_same_known_ones(default_model):
    model, tokenizer = default_model
    items = as_items(build_mcq("wiki:arts", "heldout", limit=DEMO.items_per_other_set), source="wiki:arts")
    shipped = KnownSet.load(SHIPPED_KNOWN / known_cache_path(model, tokenizer, items, CONFIG).name)
    part = items[:12]
    fresh = known_items(model, tokenizer, part, config=CONFIG, use_cache=False, show_progress=False)
    assert fresh.ids == [item.id for item in part if item.id in set(shipped.ids)]
