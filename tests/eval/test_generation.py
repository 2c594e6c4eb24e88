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
