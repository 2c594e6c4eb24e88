"""The dynamic gate and the clamp: a batched, padding-aware forward hook.

Per input x with counted tokens C (real, non-special, in scope), rho is the mean
over C of a per-token evidence e_t. The paper's statistic ("fraction") is
    e_t = 1[some selected latent fires at t],  so  rho(x) = #{t in C : fired} / |C|;
"activation" uses e_t = sum_j f_j(h_t) / mu_j (mu_j: latent j's mean non-zero
activation on forget text), which separates topics better on small SAEs
(docs/default-sae.md). The input is flagged iff rho(x) > tau. On a flagged input
the clamped tokens (scope "fired", the paper: every counted token where a
selected latent fires; scope "input": every counted token) get
    h' = h + sum_{j in S} (-c - f_j(h)) d_j
which equals Dec(f') + (h - Dec(f)) with f'_j = -c: the SAE error term is kept.

Generation: the decision is taken on the prompt; each generated token updates
the running counts, and a row flagged once stays flagged for the rest of that
generation. State is per batch row and resets whenever a forward starts with
an empty KV cache, so nothing leaks between rows or calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import get_args

import torch
from torch import nn

from saeguard.config import ClampScope, GateStatisticKind
from saeguard.core.sae import SelectedLatents
from saeguard.hf.layers import block_output_tensor, decoder_blocks, replace_block_output


@dataclass
class TokenScope:
    """Which prompt tokens count for the gate, and where the prompt ends.

    ``counted`` (B, T) marks the prompt tokens the gate reads (e.g. the user's
    message inside a chat template). ``decision_end`` (B,) lets a single
    forward without cache replay a generation: positions at or after it are
    treated as generated tokens (running counts, sticky flag). ``freeze`` keeps
    the prompt's decision for every later token (scoring answer options: each
    option is judged by the same decision, the gate never peeks at them).
    """

    counted: torch.Tensor | None = None
    decision_end: torch.Tensor | None = None
    freeze: bool = False


_SCOPE: ContextVar[TokenScope | None] = ContextVar("saeguard_token_scope", default=None)


@contextmanager
def token_scope(
    counted: torch.Tensor | None = None,
    decision_end: torch.Tensor | Iterable[int] | None = None,
    *,
    freeze: bool = False,
) -> Iterator[None]:
    """Tell every attached guard which tokens of the next prompt count."""
    if isinstance(decision_end, torch.Tensor):
        end = decision_end.long().reshape(-1)
    else:
        end = None if decision_end is None else torch.tensor(list(decision_end), dtype=torch.long)
    token = _SCOPE.set(TokenScope(counted=counted, decision_end=end, freeze=freeze))
    try:
        yield
    finally:
        _SCOPE.reset(token)


@dataclass
class GateRecord:
    """What the gate saw and did in one forward call (kept when recording is on)."""

    rho: torch.Tensor  # (B,) running rho after this call
    flagged: torch.Tensor  # (B,) bool after this call
    clamped: torch.Tensor  # (B, T) bool: tokens whose latents were clamped
    fired: torch.Tensor  # (B, T) bool: counted tokens where a selected latent fired


@dataclass
class _RowState:
    fired: torch.Tensor
    total: torch.Tensor
    flagged: torch.Tensor


@dataclass
class _CallContext:
    new_tokens: int
    past_length: int
    attention_mask: torch.Tensor | None
    input_ids: torch.Tensor | None


@dataclass
class GateStatistic:
    """Per-token evidence the gate averages into rho."""

    kind: GateStatisticKind = "fraction"
    weights: torch.Tensor | None = None  # (N,) 1 / mean non-zero forget activation, for "activation"

    def __post_init__(self) -> None:
        if self.kind not in get_args(GateStatisticKind):
            raise ValueError(f"unknown gate statistic {self.kind!r}: use fraction or activation")
        if self.kind == "activation" and self.weights is None:
            raise ValueError("the activation gate statistic needs per-latent weights")

    def to(self, device: torch.device | str) -> GateStatistic:
        weights = None if self.weights is None else self.weights.to(device)
        return GateStatistic(self.kind, weights)

    def evidence(self, acts: torch.Tensor, fired: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) float64 evidence from (B, T, N) selected-latent activations.

        ``fired`` ((acts > 0).any(-1), when the caller has it) spares the fraction recomputing it.
        """
        if self.kind == "fraction":
            return (fired if fired is not None else (acts > 0).any(-1)).double()
        return (acts.clamp(min=0) * self.weights.to(acts.device, acts.dtype)).sum(-1).double()


def activation_weights(mean_nonzero: torch.Tensor) -> torch.Tensor:
    """1 / mean non-zero activation; latents that never fired on forget text get weight 0."""
    mean = mean_nonzero.double()
    return torch.where(mean > 0, 1.0 / mean.clamp(min=1e-12), torch.zeros_like(mean)).float()


def _rho(fired: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total > 0, fired / total.clamp(min=1), torch.zeros_like(fired))


def gate_statistic(evidence: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """rho per row: mean evidence over counted tokens (the fraction that fired, by default)."""
    summed = (evidence.double() * counted).sum(-1)
    return _rho(summed, counted.sum(-1).double())


class GateHook:
    """Forward hooks that read the selected latents and clamp flagged inputs."""

    def __init__(
        self,
        latents: SelectedLatents,
        *,
        layer: int,
        tau: float,
        clamp_value: float,
        special_ids: Iterable[int] = (),
        statistic: GateStatistic | None = None,
        clamp_scope: ClampScope = "fired",
    ) -> None:
        if clamp_scope not in get_args(ClampScope):
            raise ValueError(f"unknown clamp scope {clamp_scope!r}: use fired or input")
        self.latents = latents
        self.statistic = statistic or GateStatistic()
        self.clamp_scope = clamp_scope
        self.layer = layer
        self.tau = float(tau)
        self.clamp_value = float(clamp_value)
        self.special_ids = sorted(set(special_ids))
        self.forced: bool | None = None
        self.recording = False
        self.records: list[GateRecord] = []
        self._state: _RowState | None = None
        self._call: _CallContext | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._device_latents: dict[torch.device, SelectedLatents] = {}
        self._device_statistics: dict[torch.device, GateStatistic] = {}
        self._special_tensors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    # -- attachment ---------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        if self._handles:
            raise RuntimeError("this guard is already attached; detach it first")
        self._handles.append(model.register_forward_pre_hook(self._read_call, with_kwargs=True))
        block = decoder_blocks(model)[self.layer]
        self._handles.append(block.register_forward_hook(self._intervene))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._state = None

    def reset(self) -> None:
        self._state = None
        self.records.clear()

    # -- hooks --------------------------------------------------------------
    def _read_call(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        reference = input_ids if input_ids is not None else embeds
        if reference is None:
            self._call = None
            return
        new_tokens = int(reference.shape[1])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            past = int(mask.shape[1]) - new_tokens
        else:
            mask = None
            past = _past_length(kwargs)
        self._call = _CallContext(new_tokens, max(past, 0), mask, input_ids)

    def _special_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._special_tensors:
            self._special_tensors[key] = torch.tensor(self.special_ids, device=device, dtype=dtype)
        return self._special_tensors[key]

    def _latents_on(self, device: torch.device) -> SelectedLatents:
        if device not in self._device_latents:
            self._device_latents[device] = self.latents.to(device)
        return self._device_latents[device]

    def _statistic_on(self, device: torch.device) -> GateStatistic:
        if device not in self._device_statistics:
            self._device_statistics[device] = self.statistic.to(device)
        return self._device_statistics[device]

    def _intervene(self, _module: nn.Module, _args: object, output: object) -> object:
        hidden = block_output_tensor(output)
        batch, length = hidden.shape[:2]
        counted = self._counted_tokens(batch, length, hidden.device)
        latents = self._latents_on(hidden.device)
        acts = latents.activations(hidden)  # (B, T, N) float32
        fired = (acts > 0).any(-1) & counted
        evidence = self._statistic_on(hidden.device).evidence(acts, fired) * counted
        token_flag, rho = self._decide(evidence, counted)
        clamp_tokens = token_flag & (fired if self.clamp_scope == "fired" else counted)
        if self.recording:
            self.records.append(
                GateRecord(
                    rho=rho.cpu(),
                    flagged=self._state.flagged.cpu(),
                    clamped=clamp_tokens.cpu(),
                    fired=fired.cpu(),
                )
            )
        if not bool(clamp_tokens.any()):
            return output
        delta = (-self.clamp_value - acts) @ latents.decoder  # (B, T, d) float32
        patched = torch.where(clamp_tokens.unsqueeze(-1), (hidden.float() + delta).to(hidden.dtype), hidden)
        return replace_block_output(output, patched)

    # -- decisions ----------------------------------------------------------
    def _counted_tokens(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        call = self._call
        counted = torch.ones(batch, length, dtype=torch.bool, device=device)
        if call is not None and call.new_tokens == length:
            if call.attention_mask is not None:
                counted &= call.attention_mask[:, -length:].to(device).bool()
            if call.input_ids is not None and self.special_ids:
                special = self._special_on(device, call.input_ids.dtype)
                counted &= ~torch.isin(call.input_ids.to(device), special)
        scope = _SCOPE.get()
        if scope is not None and scope.counted is not None and self._past_length() == 0:
            counted &= _match_rows(scope.counted, batch, length).to(device).bool()
        return counted

    def _past_length(self) -> int:
        return self._call.past_length if self._call is not None else 0

    def _decide(self, evidence: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token flags (prompt decision + sticky running decision) and running rho per row."""
        batch, length = evidence.shape
        device = evidence.device
        state = self._state
        rows = state.fired.shape[0] if state is not None else 0
        if self._past_length() > 0 and rows and rows != batch and batch % rows == 0:
            # A shared prompt's cache expanded to several continuations (e.g. answer options):
            # each continuation row inherits its prompt row's counts and decision.
            repeat = batch // rows
            self._state = _RowState(
                *(t.repeat_interleave(repeat, 0) for t in (state.fired, state.total, state.flagged))
            )
        elif self._past_length() == 0 or state is None or rows != batch:
            zeros = torch.zeros(batch, dtype=torch.float64, device=device)
            self._state = _RowState(zeros, zeros.clone(), torch.zeros(batch, dtype=torch.bool, device=device))
        state = self._state
        positions = torch.arange(length, device=device)
        if self._past_length() == 0:
            scope = _SCOPE.get()
            end = torch.full((batch,), length, dtype=torch.long, device=device)
            if scope is not None and scope.decision_end is not None:
                end = _match_rows(scope.decision_end.unsqueeze(-1), batch, 1).squeeze(-1).to(device)
        else:
            end = torch.zeros(batch, dtype=torch.long, device=device)
        in_prompt = positions.unsqueeze(0) < end.unsqueeze(1)

        # Prompt block: one decision over all its counted tokens.
        prompt_fired = state.fired + (evidence * in_prompt).sum(-1)
        prompt_total = state.total + (counted & in_prompt).sum(-1).double()
        prompt_flag = state.flagged | (_rho(prompt_fired, prompt_total) > self.tau)

        # Generated tokens: running counts, flag sticky once raised.
        step_fired = (evidence * ~in_prompt).cumsum(-1) + prompt_fired.unsqueeze(1)
        step_total = (counted & ~in_prompt).double().cumsum(-1) + prompt_total.unsqueeze(1)
        step_flag = (_rho(step_fired, step_total) > self.tau) & ~in_prompt
        scope = _SCOPE.get()
        if scope is not None and scope.freeze:
            step_flag = torch.zeros_like(step_flag)
        step_flag = step_flag.cummax(-1).values | prompt_flag.unsqueeze(1)
        token_flag = torch.where(in_prompt, prompt_flag.unsqueeze(1), step_flag)

        if self.forced is not None:
            token_flag = torch.full_like(token_flag, self.forced)
        state.fired = step_fired[:, -1] if length else prompt_fired
        state.total = step_total[:, -1] if length else prompt_total
        state.flagged = token_flag[:, -1] if length else prompt_flag
        return token_flag, _rho(state.fired, state.total)


def _match_rows(tensor: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Expand a per-prompt tensor to the batch generate() runs (num_return_sequences)."""
    rows = tensor.shape[0]
    if rows != batch and rows > 0 and batch % rows == 0:
        tensor = tensor.repeat_interleave(batch // rows, dim=0)
    if tensor.shape[0] != batch or tensor.shape[-1] != length:
        raise ValueError(
            f"token scope of shape {tuple(tensor.shape)} does not match the batch "
            f"({batch}, {length}): build it from the same prompts"
        )
    return tensor


def _past_length(kwargs: dict) -> int:
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    for key in ("past_key_values", "cache"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0
