"""The vLLM router's per-request summary reports the rho its decision read (issue 13).

Regression input: after decoding, the summary read the sentence rule with the open sentence
closed (rho above tau on a request not flagged) while the decision read closed sentences only.
"""

from __future__ import annotations

import pytest
import torch

from saeguard.core.hooks import GateHook
from saeguard.core.state import ForwardCall, RowHistory
from saeguard.testing import sentence_guard

pytestmark = pytest.mark.filterwarnings("ignore::saeguard.errors.CalibrationWarning")


@pytest.fixture(scope="module")
def planted():
    return sentence_guard()


def test_the_vllm_summary_rho_is_the_running_rho_the_decision_used(planted):
    """FAILS if ``GuardRouter._summary`` reports rho with the open sentence closed (prefix_rho's
    default input_end=True) after decoding, while the decision (and the HF GateRecord.rho) read
    closed sentences only: the summary can show rho > tau on a request that is not flagged."""
    from saeguard.vllm import GuardRouter, RequestStep

    tok, model, _, guard = planted
    hook = guard.hook()
    ids = tok("the king of the river and dna", return_tensors="pt").input_ids[0]
    prompt = 5  # "the king of the river | and dna" decoded: "dna" is an open one-token sentence
    with torch.no_grad():
        out = model(input_ids=ids.unsqueeze(0), output_hidden_states=True)
    hidden = out.hidden_states[guard.layer + 1][0]
    router = GuardRouter({"g": hook}, default="g")
    for computed, count in [(0, prompt)] + [(prompt + i, 1) for i in range(len(ids) - prompt)]:
        step = RequestStep("r", 0, count, computed, ids[:prompt].tolist())
        router.apply(
            guard.layer, hidden[computed : computed + count], ids[computed : computed + count], [step]
        )
    summary = router.decisions()["r"]
    oracle = GateHook(
        guard.latents,
        layer=guard.layer,
        tau=guard.tau,
        clamp_value=guard.clamp_value,
        special_ids=guard.special_ids,
        statistic=guard.statistic,
        rule=guard.rule,
    )
    history = RowHistory.empty(torch.tensor([prompt]))
    oracle.recording = True
    oracle.intervene(hidden.unsqueeze(0), ForwardCall(1, len(ids), 0, ids.unsqueeze(0), None), history)
    running = oracle.records[-1].rho.item()
    oracle.reset()
    assert summary["flagged"] == bool(history.flag[0, -1])
    assert summary["rho"] == pytest.approx(running, abs=1e-9)
