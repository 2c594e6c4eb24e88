"""The MUSE scores against hand-computed small cases: ROUGE-L, the AUC and PrivLeak, distinct-n,
Min-K%++ under a model whose next-token distribution is known, and the fluency perplexity."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from saeguard.errors import SaeguardError
from saeguard.eval.muse_scores import (
    auc,
    distinct_n,
    generation_fluency,
    min_k_plus_plus,
    privleak,
    rouge_l_f1,
)
from saeguard.testing import text_tokenizer, tiny_llama


def test_rouge_l_f1_is_the_longest_common_subsequence_f_measure():
    # LCS "the cat on mat" = 4 words; precision 4/6, recall 4/4 -> F1 = 0.8
    assert rouge_l_f1("the cat sat on the mat", "the cat on mat") == pytest.approx(0.8)
    assert rouge_l_f1("The CAT!", "the cat") == 1.0  # rouge-score lower-cases and drops punctuation
    assert rouge_l_f1("dog", "the cat") == 0.0
    # order matters: "a b c d" vs "d c b a" share one word in order; P = R = 1/4
    assert rouge_l_f1("a b c d", "d c b a") == pytest.approx(0.25)
    # LCS "a c e" = 3 of 4 predicted and 3 of 6 reference words: F1 = 2 * (3/4 * 1/2) / (3/4 + 1/2) = 0.6
    assert rouge_l_f1("a x c e", "a b c d e f") == pytest.approx(0.6)


def test_auc_counts_pairs_and_half_ties():
    assert auc([3, 2, 1], [0, 1]) == pytest.approx((2 + 2 + 1.5) / 6)
    assert auc([1, 1], [1, 1]) == 0.5
    assert auc([5, 6], [1, 2]) == 1.0 and auc([1, 2], [5, 6]) == 0.0
    with pytest.raises(SaeguardError):
        auc([], [1.0])


def test_auc_equals_counting_every_member_nonmember_pair():
    rng = random.Random(3)
    members = [rng.choice([0.0, 0.5, 1.0, 1.5]) + rng.random() * 0.1 for _ in range(9)]
    nonmembers = [rng.choice([0.0, 0.5, 1.0]) for _ in range(7)] + members[:2]  # ties across sides
    pairs = list(itertools.product(members, nonmembers))
    by_hand = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m, n in pairs) / len(pairs)
    assert auc(members, nonmembers) == pytest.approx(by_hand, abs=1e-12)


def test_privleak_is_relative_to_the_reference_auc():
    assert privleak(0.6, 0.5) == pytest.approx(0.2)
    assert privleak(0.25, 0.5) == pytest.approx(-0.5)
    assert privleak(0.7, None) is None
    with pytest.raises(SaeguardError, match="reference AUC must be positive"):
        privleak(0.5, 0.0)


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


def test_generation_fluency_is_the_perplexity_of_the_outputs_given_their_prompts():
    tokenizer = text_tokenizer(["a b c d e f"])
    model = tiny_llama(vocab_size=len(tokenizer.get_vocab()))
    prompts, outputs = ["a b c", "d e"], ["d e f", "f"]
    fluency = generation_fluency(model, tokenizer, prompts, outputs, batch_size=2)
    per_sample = []
    for prompt, output in zip(prompts, outputs, strict=True):  # by hand: one sequence at a time
        context = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        target = tokenizer(output, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([context + target])).logits[0, :-1].log_softmax(-1)
        nll = -sum(float(logits[len(context) - 1 + i, token]) for i, token in enumerate(target))
        per_sample.append((nll, len(target)))
    nll, count = sum(n for n, _ in per_sample), sum(c for _, c in per_sample)
    assert fluency.tokens == count == 4
    assert fluency.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert fluency.perplexities == pytest.approx([math.exp(n / c) for n, c in per_sample], rel=1e-5)
    assert (fluency.distinct_1, fluency.distinct_2) == (0.75, 1.0)  # d e f f: 3 of 4 words; (d e) (e f)


def test_an_empty_output_has_no_perplexity_and_mismatched_inputs_are_refused():
    tokenizer = text_tokenizer(["a b c"])
    model = tiny_llama(vocab_size=len(tokenizer.get_vocab()))
    fluency = generation_fluency(model, tokenizer, ["a b", "a"], ["c", ""])
    assert fluency.tokens == 1 and math.isnan(fluency.perplexities[1]) and math.isfinite(fluency.perplexity)
    with pytest.raises(SaeguardError, match="one output per prompt"):
        generation_fluency(model, tokenizer, ["a"], ["b", "c"])
