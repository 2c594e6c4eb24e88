"""The sentence gate rule on its own: edge cases of GateRule (issue 13; break-it review of 6d1141d).

Regression inputs: a (B, T - 1) end mask once raised a torch RuntimeError, and end id -1 (what
RowHistory stores for unknown ids) was accepted and would end a sentence at every unknown token.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from saeguard.core.gate_rule import GateRule
from saeguard.errors import SaeguardError

RULE = GateRule("sentence", window=8, min_window=2, scales=(0.5, 0.8, 1.1, 0.7), min_sentence=3)


def _cum(evidence: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (evidence.double() * counted).cumsum(-1), counted.double().cumsum(-1)


@pytest.mark.parametrize("input_end", [True, False])
def test_no_counted_token_reads_zero(input_end):
    evidence = torch.ones(2, 6, dtype=torch.float64)
    counted = torch.zeros(2, 6, dtype=torch.bool)
    ends = torch.ones(2, 6, dtype=torch.bool)
    assert RULE.rho(evidence, counted, ends, input_end=input_end).tolist() == [0.0, 0.0]
    cum_e, cum_n = _cum(evidence, counted)
    assert RULE.prefix_rho(cum_e, cum_n, torch.arange(6), ends, input_end=input_end).abs().sum() == 0
    per_column = RULE.window_rho(evidence, counted, ends, input_end=input_end)
    assert per_column.nan_to_num(0.0).abs().sum() == 0


def test_a_single_token_is_read_by_the_smallest_window_and_as_a_sentence():
    evidence = torch.tensor([[0.6]], dtype=torch.float64)
    counted = torch.ones(1, 1, dtype=torch.bool)
    open_ = torch.zeros(1, 1, dtype=torch.bool)
    closed = torch.ones(1, 1, dtype=torch.bool)
    window, sentence = 0.6 / 0.5, 0.6 / 0.7
    assert RULE.rho(evidence, counted, open_).item() == pytest.approx(max(window, sentence))
    assert RULE.rho(evidence, counted, open_, input_end=False).item() == pytest.approx(window)
    assert RULE.rho(evidence, counted, closed, input_end=False).item() == pytest.approx(max(window, sentence))
    rule = replace(RULE, scales=(10.0, 10.0, 10.0, 0.1))  # the sentence column decides
    assert rule.rho(evidence, counted, open_, input_end=False).item() == pytest.approx(0.06)
    assert rule.rho(evidence, counted, closed, input_end=False).item() == pytest.approx(6.0)
    assert rule.rho(evidence, counted, None, input_end=True).item() == pytest.approx(6.0)


def test_end_marks_on_uncounted_tokens_change_nothing():
    generator = torch.Generator().manual_seed(1)
    evidence = torch.rand(3, 30, generator=generator, dtype=torch.float64)
    counted = torch.rand(3, 30, generator=generator) > 0.3
    ends = torch.rand(3, 30, generator=generator) > 0.8
    for input_end in (True, False):
        base = RULE.rho(evidence, counted, ends, input_end=input_end)
        assert torch.equal(RULE.rho(evidence, counted, ends | ~counted, input_end=input_end), base)


def test_bool_and_integer_end_masks_read_the_same():
    generator = torch.Generator().manual_seed(2)
    evidence = torch.rand(2, 20, generator=generator, dtype=torch.float64)
    counted = torch.ones(2, 20, dtype=torch.bool)
    ends = torch.rand(2, 20, generator=generator) > 0.7
    for input_end in (True, False):
        base = RULE.rho(evidence, counted, ends, input_end=input_end)
        assert torch.equal(RULE.rho(evidence, counted, ends.long(), input_end=input_end), base)
        assert torch.equal(RULE.rho(evidence, counted, ends.to(torch.uint8), input_end=input_end), base)


def test_an_end_mask_longer_than_the_input_reads_its_first_columns():
    generator = torch.Generator().manual_seed(3)
    evidence = torch.rand(2, 12, generator=generator, dtype=torch.float64)
    counted = torch.ones(2, 12, dtype=torch.bool)
    ends = torch.rand(2, 20, generator=generator) > 0.6
    for input_end in (True, False):
        assert torch.equal(
            RULE.rho(evidence, counted, ends, input_end=input_end),
            RULE.rho(evidence, counted, ends[:, :12], input_end=input_end),
        )


def test_an_end_mask_shorter_than_the_input_is_a_one_line_error():
    """FAILS if a (B, T - 1) end mask gives a torch RuntimeError (a traceback from inside the rule)
    instead of a SaeguardError naming the shapes: the project's rule for bad input."""
    evidence = torch.ones(1, 6, dtype=torch.float64)
    counted = torch.ones(1, 6, dtype=torch.bool)
    with pytest.raises(SaeguardError):
        RULE.rho(evidence, counted, torch.zeros(1, 5, dtype=torch.bool))


def test_all_zero_evidence_reads_zero_whatever_the_sentences():
    evidence = torch.zeros(2, 15, dtype=torch.float64)
    counted = torch.ones(2, 15, dtype=torch.bool)
    ends = torch.zeros(2, 15, dtype=torch.bool)
    ends[:, ::3] = True
    for input_end in (True, False):
        assert RULE.rho(evidence, counted, ends, input_end=input_end).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("input_end", [True, False])
def test_min_sentence_longer_than_the_input_reads_the_mean_of_all(input_end):
    rule = GateRule("sentence", window=4, min_window=4, scales=(100.0, 1.0), min_sentence=50)
    evidence = torch.tensor([[0.0, 1.0, 3.0, 0.0]], dtype=torch.float64)
    counted = torch.ones_like(evidence, dtype=torch.bool)
    ends = torch.tensor([[False, False, True, False]])  # a 3-token sentence, then an open one
    expected = 4.0 / 3 if not input_end else max(4.0 / 3, 4.0 / 4)
    assert rule.rho(evidence, counted, ends, input_end=input_end).item() == pytest.approx(expected)


def test_an_empty_input_reads_zero():
    empty = torch.zeros(2, 0, dtype=torch.float64)
    assert RULE.rho(empty, empty.bool(), empty.bool()).tolist() == [0.0, 0.0]
    assert RULE.window_rho(empty, empty.bool(), empty.bool()).shape == (2, 4)


def test_a_negative_end_id_is_refused():
    """FAILS if GateRule accepts end id -1: RowHistory marks unknown ids (inputs_embeds, vLLM
    rows without ids) with -1, so every unknown token would end a sentence. The artifact loader
    refuses negative ids, but a guard built in code (replace(guard, sentence_end_ids=...)) is not checked."""
    with pytest.raises(SaeguardError):
        GateRule("sentence", window=4, min_window=4, scales=(1.0, 1.0), end_ids=(-1,))


def test_sentence_ends_on_int32_ids_and_on_minus_one():
    rule = replace(RULE, end_ids=(5, 7))
    ids = torch.tensor([[5, -1, 7, 6]], dtype=torch.int32)
    assert rule.sentence_ends(ids).tolist() == [[True, False, True, False]]


def test_byte_level_tokens_holding_an_end_mark_are_sentence_ends():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from saeguard.hf.corpus import sentence_end_ids

    vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, ".": 3, "\u010a": 4, "\u0120.": 5, "?": 6, "\u0120a": 7}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    assert sentence_end_ids(tokenizer) == (3, 4, 5, 6)  # ".", newline, " .", "?"; never the EOS
