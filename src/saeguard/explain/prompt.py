"""``saeguard explain --prompt``: the gate's per-token trace plus which latents fired where.

:func:`~saeguard.explain.trace.trace_prompt` (the playground's trace) gives each token's
gate evidence, the prompt's rho, tau and the decision, read from the gate itself.
:func:`trace_latents` adds, on the same token ids, each selected latent's activation per
token and the tokens the clamp rewrote (core/hooks.py: on a flagged prompt, the counted
tokens where a selected latent fires under clamp scope ``fired``, every counted token under
scope ``input``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from saeguard.core.guardrail import Guardrail
from saeguard.errors import require
from saeguard.explain.trace import PromptTrace, trace_prompt
from saeguard.hf.chat import Message
from saeguard.hf.layers import model_device, residual_at
from saeguard.hf.prompts import encode_prompts


@dataclass
class LatentTrace:
    """A :class:`PromptTrace` with the selected latents' activations and the clamp's reach.

    Attributes:
        trace: the gate's own per-token trace (evidence, counted, fired, rho, tau, flagged).
        latent_ids: the selected latents, in selection order (N).
        activations: per token, per latent, f_j(h_t) in SAE units: (T, N) as nested lists.
        clamped: per token, whether the clamp set the selected latents to -clamp_value there.
        clamp_value: c (flagged latents are set to -c).
        clamp_scope: ``fired`` or ``input``.
    """

    trace: PromptTrace
    latent_ids: list[int]
    activations: list[list[float]]
    clamped: list[bool]
    clamp_value: float
    clamp_scope: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: the trace's fields at the top level, then the latent fields."""
        out = self.trace.to_dict()
        out.update({k: v for k, v in asdict(self).items() if k != "trace"})
        return out

    def fired_latents(self, position: int) -> list[int]:
        """Ids of the selected latents active (f_j > 0) at token ``position``."""
        return [
            latent
            for latent, value in zip(self.latent_ids, self.activations[position], strict=True)
            if value > 0
        ]


@torch.no_grad()
def trace_latents(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    prompt: str | Sequence[Message],
    *,
    chat: bool = True,
) -> LatentTrace:
    """The gate's trace of ``prompt`` (:func:`trace_prompt`) with per-latent activations and the clamp.

    Raises:
        SaeguardError: see :func:`~saeguard.explain.trace.trace_prompt` (another model, a prompt
            beyond the model's positions).
    """
    trace = trace_prompt(model, tokenizer, guard, prompt, chat=chat)
    encoded = encode_prompts(tokenizer, [prompt], chat=chat and guard.config.chat_template)
    require(
        [int(i) for i in encoded.input_ids[0]] == trace.token_ids,
        "the trace and the latent read encoded the prompt differently: report this as a bug",
    )
    device = model_device(model)
    hidden = residual_at(model, guard.layer, encoded.input_ids.to(device), encoded.attention_mask.to(device))
    acts = guard.latents.to(device).activations(hidden)[0].float().cpu()  # (T, N)
    counted = torch.tensor(trace.counted, dtype=torch.bool)
    acts = acts * counted.unsqueeze(-1)  # the gate reads counted tokens only
    scope = str(guard.config.clamp_scope)
    reach = torch.tensor(trace.fired, dtype=torch.bool) if scope == "fired" else counted
    clamped = reach & trace.flagged
    return LatentTrace(
        trace=trace,
        latent_ids=[int(i) for i in guard.latents.ids],
        activations=acts.tolist(),
        clamped=[bool(c) for c in clamped],
        clamp_value=float(guard.clamp_value),
        clamp_scope=scope,
    )
