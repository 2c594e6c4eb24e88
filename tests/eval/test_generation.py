"""The gate's decisions while generating, in words: prompt decision and the token where it flipped."""

from __future__ import annotations

import torch

from saeguard.core.gate import GateRecord
from saeguard.core.guardrail import RowDecision, row_decisions
from saeguard.eval.generation import decision_line, flipped_token
from saeguard.testing import make_tokenizer


def _record(flagged: list[bool], rho: list[float], prompt: bool = False) -> GateRecord:
    flags = torch.tensor(flagged)
    return GateRecord(
        rho=torch.tensor(rho, dtype=torch.float64),
        flagged=flags,
        clamped=torch.zeros(len(flagged), 1, dtype=torch.bool),
        fired=torch.zeros(len(flagged), 1, dtype=torch.bool),
        prompt_flagged=flags if prompt else None,
    )


def test_a_passed_prompt_that_flips_names_the_generated_token_where_it_did():
    records = [
        _record([False, True], [0.01, 0.6], prompt=True),  # the prompt: row 0 passes, row 1 is flagged
        _record([False, True], [0.02, 0.6]),  # generated token 1
        _record([False, True], [0.03, 0.6]),  # generated token 2
        _record([True, True], [0.3, 0.6]),  # generated token 3 flips row 0
    ]
    passed, flagged = row_decisions(records)
    assert passed.flipped_at == 2 and flagged.flipped_at is None
    tokenizer = make_tokenizer()
    text = "the cell virus gene"
    assert flipped_token(tokenizer, text, passed) == "virus"
    line = decision_line(passed, tau=0.1, token="virus")
    assert line.startswith("passed on the prompt (rho 0.010 <= tau 0.100), then FLIPPED at generated token 3")
    assert "'virus'" in line and "final rho 0.300" in line
    assert decision_line(flagged, tau=0.1).startswith("FLAGGED on the prompt (rho 0.600 > tau 0.100)")


def test_a_row_that_never_flips_says_so_and_has_no_token():
    decision = RowDecision(prompt_flagged=False, prompt_rho=0.02, flipped_at=None, final_rho=0.04)
    assert flipped_token(make_tokenizer(), "the king", decision) is None
    assert decision_line(decision, tau=0.1) == (
        "passed (prompt rho 0.020 <= tau 0.100); never flipped while generating (final rho 0.040)"
    )


def test_no_token_is_named_when_the_text_does_not_re_encode_to_itself():
    decision = RowDecision(prompt_flagged=False, prompt_rho=0.0, flipped_at=1, final_rho=0.5)
    assert flipped_token(make_tokenizer(), "the zebra gene", decision) is None  # "zebra" is <unk>


def _flip_setup(tau: float):
    from saeguard.testing import make_guard, tiny_llama

    model, tokenizer = tiny_llama(), make_tokenizer()
    return model, tokenizer, make_guard(model, tokenizer, layer=1, tau=tau)


def test_generation_flips_count_what_the_running_gate_did_to_each_prompt():
    from saeguard.eval.generation import generation_flips

    prompts = ["the king of the city", "the cell and the gene", "a river", "the king", "the gene of a cell"]
    for tau in (0.0, 0.2, 0.5, 2.0):
        model, tokenizer, guard = _flip_setup(tau)
        rate = generation_flips(model, tokenizer, guard, prompts, max_new_tokens=6, batch_size=2)
        expected = [
            decision
            for start in (0, 2, 4)
            for decision in row_decisions(
                guard.generate(model, tokenizer, prompts[start : start + 2], max_new_tokens=6)[1],
                len(prompts[start : start + 2]),
            )
        ]
        assert rate.rows == 5 and rate.max_new_tokens == 6
        assert rate.prompt_flagged == sum(d.prompt_flagged for d in expected)
        assert rate.flipped_at == [d.flipped_at for d in expected if d.flipped_at is not None]
        assert rate.flip_rate == rate.flipped / 5 and rate.prompt_rate == rate.prompt_flagged / 5
    assert generation_flips(model, tokenizer, guard, prompts, max_new_tokens=2).prompt_flagged == 0  # tau 2


def test_generation_flips_without_prompts_is_a_one_line_error():
    import pytest

    from saeguard.errors import SaeguardError
    from saeguard.eval.generation import generation_flips

    model, tokenizer, guard = _flip_setup(0.5)
    with pytest.raises(SaeguardError, match="needs prompts"):
        generation_flips(model, tokenizer, guard, [])
