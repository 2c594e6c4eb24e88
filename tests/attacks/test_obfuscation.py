"""Obfuscation: each kind's rewrite, determinism per seed, and what is rewritten."""

from __future__ import annotations

import random

import pytest

from saeguard.attacks import FreePrompt, Obfuscation
from saeguard.attacks.obfuscation import KINDS, obfuscate, obfuscation_grid
from saeguard.errors import SaeguardError
from saeguard.testing import make_items

TEXT = "What does the mitochondria of a cell produce?"


def test_leetspeak_spacing_and_casing_at_full_rate():
    rng = random.Random(0)
    assert obfuscate(TEXT, "leetspeak", 1.0, rng) == "Wh47 d035 7h3 m170ch0ndr14 0f 4 c3ll pr0duc3?"
    assert obfuscate("the cell", "spacing", 1.0, rng) == "t h e c e l l"
    cased = obfuscate(TEXT, "casing", 1.0, rng)
    assert cased.lower() == TEXT.lower() and cased != TEXT


def test_noise_makes_one_edit_inside_each_touched_word():
    noisy = obfuscate("mitochondria membrane", "noise", 1.0, random.Random(3))
    for before, after in zip(["mitochondria", "membrane"], noisy.split(), strict=True):
        assert after != before and after[0] == before[0] and after[-1] == before[-1]
        assert abs(len(after) - len(before)) <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_deterministic_per_seed_and_item(kind):
    item = make_items(1)[0]
    first = Obfuscation(kind, seed=1).item(item)
    assert Obfuscation(kind, seed=1).item(item) == first
    assert first.question != item.question
    if kind in ("casing", "noise"):  # spacing and leetspeak at rate 1 have no randomness left
        assert any(Obfuscation(kind, seed=s).item(item).question != first.question for s in range(2, 8))


def test_target_question_keeps_the_options_and_all_rewrites_them():
    item = make_items(1)[0]
    only = Obfuscation("leetspeak").item(item)
    assert only.choices == item.choices and only.answer == item.answer
    every = Obfuscation("leetspeak", "all").item(item)
    assert every.question == only.question
    assert every.choices == tuple(obfuscate(c, "leetspeak", 1.0, random.Random(0)) for c in item.choices)


def test_default_rates_are_in_the_key():
    assert Obfuscation("noise").key == "obfuscation:kind=noise,target=question,rate=0.5,seed=0"
    assert [a.key.split(",")[0] for a in obfuscation_grid(["casing"], ["question", "all"])] == [
        "obfuscation:kind=casing"
    ] * 2


def test_free_prompt_is_rewritten_whole():
    conversation = Obfuscation("leetspeak").prompt(FreePrompt("p", "cell"))
    assert conversation == [{"role": "user", "content": "c3ll"}]


def test_bad_settings_are_refused():
    with pytest.raises(SaeguardError, match="unknown obfuscation"):
        obfuscate(TEXT, "rot13", 1.0, random.Random(0))  # type: ignore[arg-type]
    with pytest.raises(SaeguardError, match="rate"):
        obfuscate(TEXT, "noise", 2.0, random.Random(0))
    with pytest.raises(SaeguardError, match="target"):
        Obfuscation("noise", "options")  # type: ignore[arg-type]
