"""MUSE-style metrics: ROUGE-L, Min-K%++ and AUC against hand-computed cases, cloze questions, fluency,
and the whole harness on a tiny model that has memorised its text."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from saeguard.errors import SaeguardError
from saeguard.eval.muse import (
    MuseConfig,
    auc,
    distinct_n,
    generation_fluency,
    min_k_plus_plus,
    muse_metrics,
    privleak,
    rouge_l_f1,
)
from saeguard.eval.muse_data import BLANK, MuseSizes, cloze_questions, first_answer, knowmem_set, muse_data
from saeguard.testing import text_tokenizer, tiny_llama


def test_rouge_l_f1_is_the_longest_common_subsequence_f_measure():
    # LCS "the cat on mat" = 4 words; precision 4/6, recall 4/4 -> F1 = 0.8
    assert rouge_l_f1("the cat sat on the mat", "the cat on mat") == pytest.approx(0.8)
    assert rouge_l_f1("The CAT!", "the cat") == 1.0  # rouge-score lower-cases and drops punctuation
    assert rouge_l_f1("dog", "the cat") == 0.0


def test_auc_counts_pairs_and_half_ties():
    assert auc([3, 2, 1], [0, 1]) == pytest.approx((2 + 2 + 1.5) / 6)
    assert auc([1, 1], [1, 1]) == 0.5
    assert auc([5, 6], [1, 2]) == 1.0 and auc([1, 2], [5, 6]) == 0.0
    with pytest.raises(SaeguardError):
        auc([], [1.0])


def test_privleak_is_relative_to_the_reference_auc():
    assert privleak(0.6, 0.5) == pytest.approx(0.2)
    assert privleak(0.25, 0.5) == pytest.approx(-0.5)
    assert privleak(0.7, None) is None


def test_distinct_n_is_unique_over_all_word_ngrams():
    assert distinct_n(["of to of to", "of to"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["of to of to", "of to"], 2) == pytest.approx(2 / 4)  # (of,to) (to,of) of 3 + 1
    assert distinct_n(["a b c"], 2) == 1.0


class BigramModel(nn.Module):
    """Logits depend only on the previous token: row ``table[previous]`` (a fixed distribution)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.anchor = nn.Parameter(torch.zeros(1))  # a parameter, so the model has a device

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def _z(probs: list[float], token: int) -> float:
    """Min-K%++ token score by hand: (log p(x) - E[log p]) / std[log p] under p."""
    mean = sum(p * math.log(p) for p in probs)
    second = sum(p * math.log(p) ** 2 for p in probs)
    return (math.log(probs[token]) - mean) / math.sqrt(second - mean**2)


def test_min_k_plus_plus_matches_a_hand_computed_score():
    tokenizer = text_tokenizer(["a b c"])
    vocab = tokenizer.get_vocab()
    size = len(vocab)
    a, b, c = vocab["a"], vocab["b"], vocab["c"]
    probs = [0.5 if i == a else 0.3 if i == b else 0.2 / (size - 2) for i in range(size)]
    model = BigramModel(torch.log(torch.tensor(probs)).expand(size, size).clone())
    # "a b c a a" -> scored targets b, c, a, a (the first token has no prediction)
    expected = sorted([_z(probs, b), _z(probs, c), _z(probs, a), _z(probs, a)])
    assert min_k_plus_plus(model, tokenizer, ["a b c a a"], k=0.5)[0] == pytest.approx(sum(expected[:2]) / 2)
    assert min_k_plus_plus(model, tokenizer, ["a b c a a"], k=1.0)[0] == pytest.approx(sum(expected) / 4)
    assert min_k_plus_plus(model, tokenizer, ["a b c a a"], k=0.01)[0] == pytest.approx(expected[0])
    # batched and padded like one at a time
    both = min_k_plus_plus(model, tokenizer, ["a b c a a", "c b"], k=0.5, batch_size=2)
    assert both == pytest.approx([sum(expected[:2]) / 2, min(_z(probs, b), _z(probs, b))])


def test_cloze_questions_blank_recurring_names_only():
    text = (
        "Elizabeth walked to town with Jane and Mr Darcy. Then Elizabeth smiled at Darcy kindly today. "
        "Lady Catherine said that Jane was pretty and kind. Darcy thought that Elizabeth was very clever."
    )
    questions = cloze_questions([text], min_count=2)
    assert [q.answer for q in questions] == ["Jane", "Elizabeth", "Jane", "Elizabeth"]
    assert questions[0].question == f"Elizabeth walked to town with {BLANK} and Mr Darcy."
    # sentence-initial words ("Then"), the title "Lady" and the once-seen "Catherine" are never blanked
    assert all(q.answer not in {"Then", "Lady", "Catherine"} for q in questions)


def test_knowmem_shots_and_questions_come_from_different_documents():
    docs = [f"On day {i} the friend of Emma met Harriet near Hartfield again." for i in range(40)]
    known = knowmem_set(docs, MuseSizes(knowmem_shots=2, knowmem_questions=5, min_name_count=3), "test")
    assert len(known.shots) == 2 and len(known.questions) == 5
    assert not {q.question for q in known.shots} & {q.question for q in known.questions}
    assert first_answer(" Harriet.\nSentence: x") == "Harriet"


def test_choice_items_offer_the_answer_and_three_other_names_of_the_set():
    from saeguard.eval.muse_data import ClozeQuestion, KnowMemSet, choice_items

    names = ["Anne", "Frederick", "Louisa", "Mary", "Walter"]
    known = KnowMemSet(
        shots=[ClozeQuestion(f"{BLANK} walked.", "Walter")],
        questions=[ClozeQuestion(f"She saw {BLANK} there.", name) for name in names[:4]],
    )
    items = choice_items(known, seed=1)
    assert len(items) == 4 and len({item.id for item in items}) == 4
    for item, question in zip(items, known.questions, strict=True):
        assert item.choices[item.answer] == question.answer and question.question in item.question
        assert len(set(item.choices)) == 4 and set(item.choices) <= set(names)


def test_generation_fluency_is_the_perplexity_of_the_outputs_given_their_prompts():
    tokenizer = text_tokenizer(["a b c d e f"])
    model = tiny_llama(vocab_size=len(tokenizer.get_vocab()))
    prompts, outputs = ["a b c", "d e"], ["d e f", "f"]
    fluency = generation_fluency(model, tokenizer, prompts, outputs, batch_size=2)
    nll, count = 0.0, 0
    for prompt, output in zip(prompts, outputs, strict=True):  # by hand: one sequence at a time
        context = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        target = tokenizer(output, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([context + target])).logits[0, :-1].log_softmax(-1)
        for i, token in enumerate(target):
            nll -= float(logits[len(context) - 1 + i, token])
            count += 1
    assert fluency.tokens == count == 4
    assert fluency.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert (fluency.distinct_1, fluency.distinct_2) == (0.75, 1.0)  # d e f f: 3 of 4 words; (d e) (e f)


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
