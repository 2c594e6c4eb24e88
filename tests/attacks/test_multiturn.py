"""Multi-turn splitting: where the cuts fall, the chat it builds, and which tokens the gate counts."""

from __future__ import annotations

import pytest

from saeguard.attacks import FreePrompt, MultiTurn
from saeguard.attacks.multiturn import ACKNOWLEDGEMENTS, turn_breaks
from saeguard.errors import SaeguardError
from saeguard.eval.items import Framing, question_text, shared_prompt
from saeguard.testing import eval_tokenizer, make_items


def test_turn_breaks_cut_after_whitespace_near_equal_shares():
    message = "aaaa bbbb cccc dddd"
    assert turn_breaks(message, 2) == (10,)  # "aaaa bbbb " | "cccc dddd"
    assert turn_breaks(message, 4) == (5, 10, 15)
    assert turn_breaks("one two", 4) == (4,)  # too few words: fewer turns
    with pytest.raises(SaeguardError, match="2-4 turns"):
        turn_breaks(message, 5)


@pytest.mark.parametrize("turns", [2, 3, 4])
def test_split_question_becomes_alternating_turns_that_rejoin_to_the_message(turns):
    item = make_items(1)[0]
    attacked = MultiTurn(turns).item(item)
    framing = attacked.framing
    assert framing is not None and len(framing.breaks) == turns - 1
    messages = framing.messages(question_text(item))
    assert [m["role"] for m in messages] == ["user", "assistant"] * (turns - 1) + ["user"]
    assert "".join(m["content"] for m in messages if m["role"] == "user") == question_text(item)
    assert all(m["content"] in ACKNOWLEDGEMENTS for m in messages if m["role"] == "assistant")


def test_every_user_turn_counts_for_the_gate_and_no_reply_does(tok):
    item = make_items(1)[0]
    plain = shared_prompt(tok, item, "cloze")
    split = shared_prompt(tok, MultiTurn(3).item(item), "cloze")
    counted = [t for t, m in zip(split.ids, split.user_mask, strict=True) if m]
    # exactly the user's tokens of the one-turn prompt: no reply and no template token is counted
    assert counted == [t for t, m in zip(plain.ids, plain.user_mask, strict=True) if m]
    assert split.text.count("<|im_start|>user") == 3 and split.text.count("<|im_start|>assistant") == 3
    assert split.text.endswith("<|im_start|>assistant Answer:")  # two replies + the generation prompt


def test_replies_are_fixed_by_seed_and_item():
    item = make_items(1)[0]
    first = MultiTurn(4, seed=0).item(item).framing
    assert first == MultiTurn(4, seed=0).item(item).framing
    assert any(MultiTurn(4, seed=s).item(item).framing != first for s in range(1, 6))


def test_a_free_prompt_is_split_the_same_way():
    conversation = MultiTurn(2).prompt(FreePrompt("p", "what is the cell membrane made of"))
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    assert conversation[0]["content"] + conversation[2]["content"] == "what is the cell membrane made of"


def test_a_split_question_needs_a_chat_template():
    item = MultiTurn(2).item(make_items(1)[0])
    with pytest.raises(SaeguardError, match="needs a chat template"):
        shared_prompt(eval_tokenizer(chat=False), item, "cloze")


def test_framing_rejects_breaks_without_replies_or_out_of_order():
    with pytest.raises(SaeguardError, match="one assistant reply per turn break"):
        Framing(breaks=(3,))
    with pytest.raises(SaeguardError, match="increasing"):
        Framing(breaks=(5, 3), replies=("a", "b"))
    with pytest.raises(SaeguardError, match="past the end"):
        Framing(breaks=(50,), replies=("a",)).messages("short")
