"""row_decisions: one decision per prompt whatever the generation strategy, when asked per prompt.

Before, the README zipped prompts with ``row_decisions(records)``, which has one entry per row the
model ran: with ``num_beams=3`` the second prompt was paired with the first prompt's second beam.
"""

from __future__ import annotations

import pytest

from saeguard.core.guardrail import row_decisions
from saeguard.errors import SaeguardError
from saeguard.testing import make_guard, tiny_llama

PROMPTS = ["what is the cell virus gene protein", "the king of the city", "dna in a cell"]


@pytest.fixture
def setup(tokenizer):
    model = tiny_llama()
    probe = make_guard(model, tokenizer, layer=1, tau=10.0)
    _, records = probe.generate(model, tokenizer, PROMPTS, max_new_tokens=3)
    rho = sorted(float(r) for r in records[0].rho)
    guard = make_guard(model, tokenizer, layer=1, tau=(rho[0] + rho[-1]) / 2)  # some prompts either way
    return model, guard


def test_beam_search_gives_one_decision_per_prompt_equal_to_greedy(setup, tokenizer):
    model, guard = setup
    _, greedy = guard.generate(model, tokenizer, PROMPTS, max_new_tokens=3)
    expected = [(d.prompt_flagged, round(d.prompt_rho, 9)) for d in row_decisions(greedy, len(PROMPTS))]
    assert {flagged for flagged, _ in expected} == {True, False}
    texts, beams = guard.generate(model, tokenizer, PROMPTS, max_new_tokens=3, num_beams=3)
    per_row = row_decisions(beams)
    per_prompt = row_decisions(beams, len(PROMPTS))
    assert len(texts) == len(per_prompt) == 3 and len(per_row) == 9  # 3 beams a prompt
    assert [(d.prompt_flagged, round(d.prompt_rho, 9)) for d in per_prompt] == expected
    for index, decision in enumerate(per_prompt):
        group = per_row[3 * index : 3 * index + 3]
        assert decision.final_rho == max(d.final_rho for d in group)
        flips = [d.flipped_at for d in group if d.flipped_at is not None]
        assert decision.flipped_at == (min(flips) if flips else None)


def test_several_returned_sequences_group_per_prompt(setup, tokenizer):
    model, guard = setup
    texts, records = guard.generate(
        model, tokenizer, PROMPTS, max_new_tokens=2, do_sample=True, num_return_sequences=2
    )
    assert len(texts) == len(row_decisions(records)) == 6 and len(row_decisions(records, 3)) == 3


@pytest.mark.parametrize("prompts", [0, 2, 4, -3, True])
def test_a_prompt_count_that_does_not_divide_the_rows_is_one_line(setup, tokenizer, prompts):
    model, guard = setup
    _, records = guard.generate(model, tokenizer, PROMPTS, max_new_tokens=1)
    with pytest.raises(SaeguardError, match=r"does not divide the 3 rows the model ran: pass len\(prompts\)"):
        row_decisions(records, prompts)


def test_greedy_rows_are_prompts_with_or_without_the_count(setup, tokenizer):
    model, guard = setup
    _, records = guard.generate(model, tokenizer, PROMPTS, max_new_tokens=2)
    assert row_decisions(records) == row_decisions(records, len(PROMPTS)) and row_decisions([]) == []
