"""The MUSE harness on a tiny model that has memorised its text: VerbMem, KnowMem, PrivLeak and fluency
together, with and without a reference AUC."""

from __future__ import annotations

import pytest
import torch

from saeguard.eval.muse import MuseConfig, muse_metrics
from saeguard.eval.muse_data import MuseSizes, muse_data
from saeguard.testing import text_tokenizer, tiny_llama

#: A cycle in which every token has one successor (so a tiny model can memorise it), with names.
CYCLE = ["alpha", "Bravo", "charlie", "Delta", "echo", "foxtrot", "Golf", "hotel", "India", "juliet", "Kilo"]
CYCLE += ["lima", "."]


def _memorising_model(tokenizer):
    """A tiny Llama trained until it continues CYCLE exactly."""
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=len(tokenizer.get_vocab())).train()
    ids = torch.tensor([tokenizer(" ".join(CYCLE * 4), add_special_tokens=True)["input_ids"]])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=ids, labels=ids).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_verbmem_is_one_for_a_model_that_memorised_the_text_and_low_for_one_that_did_not():
    forget = [" ".join((CYCLE[i:] + CYCLE[:i]) * 2) for i in range(len(CYCLE))]
    holdout = [" ".join(reversed(doc.split())) for doc in forget]
    retain = [f"On day {i} Alpha met Bravo near Charlie again ." for i in range(40)]
    tokenizer = text_tokenizer(forget + retain)
    sizes = MuseSizes(
        prefix_tokens=6,
        continuation_tokens=8,
        verbmem_samples=4,
        knowmem_shots=1,
        knowmem_questions=3,
        privleak_samples=6,
    )
    data = muse_data(tokenizer, forget=forget, retain=retain, holdout=holdout, sizes=sizes)
    config = MuseConfig(sizes=sizes, batch_size=4, privleak_tokens=32)
    memorised = muse_metrics(_memorising_model(tokenizer), tokenizer, data, config=config)
    assert memorised.verbmem == pytest.approx(1.0)
    assert memorised.fluency.perplexity < 1.5  # its continuations are what it predicts
    assert memorised.privleak_auc > 0.9 and memorised.privleak is None  # members score higher
    untrained = muse_metrics(
        tiny_llama(vocab_size=len(tokenizer.get_vocab())), tokenizer, data, config=config
    )
    assert untrained.verbmem < 0.5
    assert untrained.knowmem_retain.questions == len(untrained.knowmem_retain.answers) == 3
    assert untrained.knowmem_forget.choice_questions == 0  # one name in the cycle: no four-name choice
