"""Per-token gate evidence on one prompt: what the playground shades and ``saeguard explain`` prints.

The gate (method.md §3) flags an input when rho, the mean over counted tokens of a
per-token evidence e_t, exceeds tau. :func:`trace_prompt` runs the guard on the
prompt's forward exactly as :meth:`~saeguard.core.guardrail.Guardrail.generate`
encodes and judges it, and reads e_t back from the gate's own per-row history
(the cumulative evidence ``cum_e``: e_t is its difference between positions), so
the trace's rho is the gate's rho, not a recomputation.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from saeguard.core.gate import token_scope
from saeguard.core.guardrail import Guardrail
from saeguard.core.state import thread_store
from saeguard.errors import require
from saeguard.hf.chat import Message
from saeguard.hf.layers import check_token_ids, max_positions, model_device
from saeguard.hf.prompts import encode_prompts


@dataclass
class PromptTrace:
    """One guard's view of one prompt, token by token (all lists have one entry per token).

    Attributes:
        tokens: each token decoded on its own (text, for display).
        token_ids: the prompt's ids (chat template included when used).
        evidence: e_t per token (float; 0.0 where the token does not count).
        counted: whether the gate reads the token (the user's own, non-special tokens).
        fired: whether a selected latent fires on a counted token.
        rho: the prompt's gate statistic, mean evidence over counted tokens (the gate's own value).
        tau: the guard's threshold; flagged means rho > tau (or the guard clamps always).
        statistic: ``fraction`` (e_t = fired) or ``activation`` (normalised activations).
    """

    tokens: list[str]
    token_ids: list[int]
    evidence: list[float]
    counted: list[bool]
    fired: list[bool]
    rho: float
    tau: float
    flagged: bool
    statistic: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return asdict(self)


def check_prompt_length(model: nn.Module, input_ids: torch.Tensor) -> None:
    """Fail clearly when the encoded prompt (1, T) does not fit the model's positions or embeddings.

    Raises:
        SaeguardError: T above the model's positions (the fix: a shorter prompt), or an id the
            model does not embed.
    """
    limit, tokens = max_positions(model), int(input_ids.shape[-1])
    require(
        limit is None or tokens <= limit,
        f"the prompt is {tokens} tokens long (chat template included), over the model's {limit} "
        f"positions: shorten the prompt to under {limit} tokens",
    )
    check_token_ids(model, input_ids, "the encoded prompt")


@torch.no_grad()
def trace_prompt(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    prompt: str | Sequence[Message],
    *,
    chat: bool = True,
    before: Sequence[Guardrail] = (),
) -> PromptTrace:
    """Run ``guard`` on the prompt's forward and return its per-token evidence and decision.

    Args:
        prompt: a user message, or a whole conversation (``{"role", "content"}`` dicts; every
            user turn counts), encoded as :meth:`Guardrail.generate` encodes it.
        chat: wrap the prompt in the tokenizer's chat template (when the guard was fitted so).
        before: guards applied with ``guard`` on the same forward (a server request with
            several guards): one on the same layer does not change ``guard``'s evidence (each
            reads the layer's own output), one on an earlier layer does through its clamp.

    Raises:
        SaeguardError: a model the guard was not fitted on (:meth:`Guardrail.check_model`, not
            strict), a prompt longer than the model's positions or holding ids it does not embed,
            or what :func:`~saeguard.hf.prompts.encode_prompts` refuses.
    """
    for applied in [*before, guard]:
        applied.check_model(model, strict=False)
    encoded = encode_prompts(tokenizer, [prompt], chat=chat and guard.config.chat_template)
    check_prompt_length(model, encoded.input_ids)
    device = model_device(model)
    hooks = [g.hook() for g in before]
    hook = guard.hook()
    with ExitStack() as stack:
        for gate in [*hooks, hook]:
            stack.enter_context(gate.session(model))
            gate.reset()
        stack.enter_context(token_scope(encoded.content_mask.to(device)))
        hook.recording = True
        try:
            model(input_ids=encoded.input_ids.to(device), attention_mask=encoded.attention_mask.to(device))
            record = hook.records[0]
            history = thread_store().histories[hook]
        finally:
            for gate in [*hooks, hook]:
                gate.reset()
    cum_e = history.cum_e[0].cpu()
    cum_n = history.cum_n[0].cpu()
    evidence = torch.diff(cum_e, prepend=cum_e.new_zeros(1))
    counted = torch.diff(cum_n, prepend=cum_n.new_zeros(1)) > 0
    ids = [int(i) for i in encoded.input_ids[0]]
    return PromptTrace(
        tokens=[tokenizer.decode([i]) for i in ids],
        token_ids=ids,
        evidence=[float(e) for e in evidence],
        counted=[bool(c) for c in counted],
        fired=[bool(f) for f in record.fired[0]],
        rho=float(record.rho[0]),
        tau=guard.tau,
        flagged=bool(record.flagged[0]),
        statistic=guard.config.gate_statistic,
    )
