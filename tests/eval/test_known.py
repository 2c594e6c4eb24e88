"""The 24-permutation known-set filter, with a fake scorer and on a tiny model."""

from __future__ import annotations

import pytest

from saeguard.errors import SaeguardError
from saeguard.eval.items import McqItem
from saeguard.eval.known import KnownConfig, KnownSet, known_items
from saeguard.eval.mcq import McqConfig

ITEMS = [
    McqItem("capital of france", ("paris", "rome", "oslo", "bern"), 0, "geo", "knows"),
    McqItem("which is longest", ("a", "bb", "ccc", "d"), 2, "misc", "position"),
    McqItem("pick the odd one", ("x", "y", "z", "w"), 1, "misc", "guess"),
    McqItem("", ("apple", "b", "c", "d"), 0, "misc", "prior"),
]


def fake_scorer(items):
    """Knows France; always answers position 2 for 'longest'; favours 'apple' without a question."""
    out = []
    for item in items:
        if "france" in item.question:
            out.append(item.choices.index("paris"))
        elif "longest" in item.question:
            out.append(2)
        elif "apple" in item.choices:
            out.append(item.choices.index("apple"))
        else:
            out.append(0)
    return out


def test_known_only_if_correct_under_all_24_orders():
    known = known_items(None, None, ITEMS[:3], score_fn=fake_scorer)
    assert known.ids == ["knows"]
    assert known.correct_orders == {"knows": 24, "position": 1, "guess": 0}
    full = known_items(
        None, None, ITEMS[:3], score_fn=fake_scorer, config=KnownConfig(stop_at_first_miss=False)
    )
    assert full.ids == ["knows"]
    assert full.correct_orders == {"knows": 24, "position": 6, "guess": 6}


def test_stopping_at_the_first_miss_gives_the_same_known_set_for_fewer_scorings():
    seen = []

    def counting(items):
        seen.append(len(items))
        return fake_scorer(items)

    full = known_items(None, None, ITEMS, score_fn=fake_scorer, config=KnownConfig(stop_at_first_miss=False))
    early = known_items(None, None, ITEMS, score_fn=counting)
    assert early.ids == full.ids == ["knows", "prior"]
    assert early.correct_orders["knows"] == 24
    assert early.correct_orders["guess"] < full.correct_orders["guess"]
    assert sum(seen) < 24 * len(ITEMS)
    assert seen[-1] == 2  # only the known items reach the last order


def test_variant_drops_items_answerable_without_the_question():
    items = [ITEMS[0], McqItem("a real question", ("apple", "b", "c", "d"), 0, "misc", "prior")]
    plain = known_items(None, None, items, score_fn=fake_scorer)
    assert plain.ids == ["knows", "prior"]
    strict = known_items(
        None, None, items, score_fn=fake_scorer, config=KnownConfig(drop_without_question=True)
    )
    assert strict.ids == ["knows"]


def test_empty_known_set_says_so():
    known = known_items(None, None, ITEMS[1:3], score_fn=fake_scorer, dataset="wmdp-bio")
    assert known.count == 0
    with pytest.raises(SaeguardError, match="no known items in wmdp-bio.*0/0"):
        known.select(ITEMS)


def test_cached_per_model_dataset_and_scorer(tmp_path, llama, tok):
    from saeguard.testing import make_items

    items = make_items(3)
    config = KnownConfig(mcq=McqConfig(scorer="cloze", batch_size=24))
    first = known_items(llama, tok, items, config=config, cache_dir=tmp_path, show_progress=False)
    files = list(tmp_path.glob("known-cloze-*.json"))
    assert len(files) == 1
    assert KnownSet.load(files[0]).correct_orders == first.correct_orders
    again = known_items(llama, tok, items, config=config, cache_dir=tmp_path, show_progress=False)
    assert again.seconds == first.seconds  # read from the cache, not recomputed
    known_items(
        llama,
        tok,
        items,
        config=KnownConfig(mcq=McqConfig(scorer="letter")),
        cache_dir=tmp_path,
        show_progress=False,
    )
    assert len(list(tmp_path.glob("known-*.json"))) == 2


def test_cyclic_orders_put_each_option_once_in_each_position():
    seen: list[McqItem] = []

    def recording(items):
        seen.extend(items)
        return fake_scorer(items)

    known_items(None, None, ITEMS[:1], score_fn=recording, config=KnownConfig(permutations="cyclic"))
    assert len(seen) == 4
    for position in range(4):
        assert sorted(v.choices[position] for v in seen) == sorted(ITEMS[0].choices)
    assert all(v.choices[v.answer] == "paris" for v in seen)


def test_cyclic_filter_is_looser_than_all_24_orders():
    """A scorer that fails only on a non-rotation order (first two options swapped)."""
    item = McqItem("swap trap", ("p", "q", "r", "s"), 0, "misc", "trap")

    def fooled(items):
        return [0 if v.choices[:2] == ("q", "p") else v.answer for v in items]  # "q" there: wrong

    cyclic = known_items(None, None, [item], score_fn=fooled, config=KnownConfig(permutations="cyclic"))
    every = KnownConfig(permutations="all", stop_at_first_miss=False)
    full = known_items(None, None, [item], score_fn=fooled, config=every)
    assert cyclic.ids == ["trap"] and cyclic.correct_orders == {"trap": 4}
    assert full.ids == [] and full.correct_orders == {"trap": 22}
    position = known_items(
        None, None, ITEMS[1:2], score_fn=fake_scorer, config=KnownConfig(permutations="cyclic")
    )
    assert position.correct_orders == {"position": 1}  # answer in position 2 in exactly one rotation
    with pytest.raises(SaeguardError, match="permutations"):
        known_items(None, None, [item], score_fn=fooled, config=KnownConfig(permutations="some"))


def test_orderings_are_part_of_the_cache_key(tmp_path, llama, tok):
    from saeguard.testing import make_items

    items = make_items(2)
    mcq = McqConfig(scorer="cloze", batch_size=8)
    cyclic = known_items(
        llama,
        tok,
        items,
        config=KnownConfig(mcq=mcq, permutations="cyclic"),
        cache_dir=tmp_path,
        show_progress=False,
    )
    assert len(list(tmp_path.glob("known-*.json"))) == 1
    assert KnownSet.load(next(tmp_path.glob("known-*.json"))).config.permutations == "cyclic"
    full = known_items(
        llama, tok, items, config=KnownConfig(mcq=mcq), cache_dir=tmp_path, show_progress=False
    )
    assert len(list(tmp_path.glob("known-*.json"))) == 2
    assert max(cyclic.correct_orders.values()) <= 4 and max(full.correct_orders.values()) <= 24


def test_select_accepts_schema_rows_as_built_sets_return_them():
    rows = [
        {"question": i.question, "choices": list(i.choices), "answer": i.answer, "id": i.id}
        for i in ITEMS[:3]
    ]
    known = known_items(None, None, rows, score_fn=fake_scorer, dataset="built")
    assert [item.id for item in known.select(rows)] == ["knows"]
