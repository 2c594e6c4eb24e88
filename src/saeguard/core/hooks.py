"""Putting gates on a model: the public :class:`GateHook`, one guard's gate and clamp.

A :class:`GateHook` is one guard's gate and clamp (the arithmetic is in
``core/gate.py``): on each forward it applies to, it counts the call's tokens,
decides per row (rho > tau) and clamps the selected latents of flagged rows.
Gates are either global (``GateHook.attach``: every forward, any thread) or
local (``GateHook.session``: forwards of the calling thread or task only).
Installing the hooks and routing each forward to the gates that apply to it is
``core/dispatch.py`` (one :class:`~saeguard.core.dispatch.Dispatcher` per model).

The state a gate needs across forwards is a :class:`~saeguard.core.state.RowHistory`:
per row and per cache position, the cumulative evidence, counted tokens,
decisions and token ids, made to follow the KV cache before each forward (cut
to the cache length, rows matched by their token prefix, or kept in order or
expanded), so the gate's decisions are a function of the tokens in the cache,
never of the order calls were made in. State lives per ``generate`` call, else
per thread: concurrent calls never share it, and never on the gate itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, get_args

import torch
from torch import nn

from saeguard.config import ClampScope
from saeguard.core.dispatch import Dispatcher, dispatcher_for
from saeguard.core.gate import GateRecord, GateRule, GateStatistic, current_scope, decide_new_positions
from saeguard.core.sae import SelectedLatents
from saeguard.core.state import ForwardCall, RowHistory, thread_store
from saeguard.errors import SaeguardError, require
from saeguard.hf.chat import user_token_mask
from saeguard.hf.layers import check_language_model

__all__ = ["Dispatcher", "GateHook", "dispatcher_for"]  # the dispatcher is core/dispatch.py, re-exported


class GateHook:
    """One guard's gate and clamp on a model (method.md §3-§4).

    ``attach(model)`` applies it to every forward of the model, from any thread;
    ``session(model)`` only to forwards of the calling thread or task (what
    ``Guardrail.generate`` and the server use, so concurrent calls never share a
    guard or its state). Per-call state (the per-row history that follows the
    KV cache) is kept per thread and per ``generate`` call, never on this object.

    Attributes:
        forced: None (the gate decides), True (clamp every input: the static and
            ungated baselines) or False (never clamp).
        recording: keep a :class:`GateRecord` per forward in :attr:`records`.
        tokenizer: with a chat template, prompts given as raw chat ids count
            only the user's turns (``hf.chat.user_token_mask``).
        observers: callables ``(hook, record)`` run after every forward.
        instrument: a callable returning a context manager entered around each
            forward's gate work (the public instrumentation point: the bench
            times the guard through it, e.g. with ``torch.profiler.record_function``).
    """

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
        tokenizer: Any = None,
        rule: GateRule | None = None,
        owner: object | None = None,
    ) -> None:
        require(
            clamp_scope in get_args(ClampScope), f"unknown clamp scope {clamp_scope!r}: use fired or input"
        )
        for name, value in (("tau", tau), ("clamp_value", clamp_value)):
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                f"the gate's {name} must be a finite number, got {value!r}",
            )
        require(clamp_value > 0, f"the gate's clamp_value must be positive, got {clamp_value}")
        require(
            isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0,
            f"the gate's layer must be a block index (an integer >= 0), got {layer!r}",
        )
        self.latents = latents
        self.statistic = statistic or GateStatistic()
        self.rule = rule or GateRule()
        self.clamp_scope = clamp_scope
        self.layer = layer
        self.tau = float(tau)
        self.clamp_value = float(clamp_value)
        self.special_ids = sorted(set(special_ids))
        self.tokenizer = tokenizer
        self.owner = owner  # the Guardrail this gate applies; one gate per owner on a model
        self.forced: bool | None = None
        self.recording = False
        self.observers: list[Any] = []
        self.instrument: Callable[[], AbstractContextManager[Any]] | None = None
        self._models: list[nn.Module] = []
        self._device_latents: dict[torch.device, SelectedLatents] = {}
        self._device_statistics: dict[torch.device, GateStatistic] = {}
        self._special_tensors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    # -- attachment ---------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Apply to every forward of ``model`` until :meth:`detach`.

        Raises:
            SaeguardError: ``model`` is not a loaded language model, or this gate (or another
                gate of the same guard) is already on it.
        """
        check_language_model(model)
        require(model not in self._models, "this guard is already attached to that model; detach it first")
        dispatcher_for(model).add_global(self)
        self._models.append(model)

    def detach(self) -> None:
        """Remove from every model it was attached to (idempotent)."""
        for model in self._models:
            dispatcher_for(model).remove_global(self)
        self._models.clear()
        thread_store().histories.pop(self, None)  # records stay readable after detaching

    @contextmanager
    def session(self, model: nn.Module) -> Iterator[GateHook]:
        """Apply to forwards of ``model`` made by this thread or task, inside the block only.

        Raises:
            SaeguardError: ``model`` is not a torch module, or this guard already applies to it.
        """
        require(isinstance(model, nn.Module), f"a guard applies to a torch model, got {type(model).__name__}")
        dispatcher = dispatcher_for(model)
        token = dispatcher.add_local(self)
        try:
            yield self
        finally:
            dispatcher.remove_local(self, token)

    @property
    def records(self) -> list[GateRecord]:
        """This thread's records (a list you may clear)."""
        return thread_store().records_for(self)

    def reset(self) -> None:
        """Forget this thread's history and records for this guard."""
        thread_store().forget(self)

    # -- one forward --------------------------------------------------------
    def counted_tokens(self, call: ForwardCall, device: torch.device) -> torch.Tensor:
        """(B, L) bool: which tokens of this call the gate counts (mask, specials, scope, user spans)."""
        batch, length = call.batch, call.length
        counted = torch.ones(batch, length, dtype=torch.bool, device=device)
        if call.mask is not None:
            counted &= call.mask[:, -length:].to(device).bool()
        if call.input_ids is not None and self.special_ids:
            special = self._special_on(device, call.input_ids.dtype)
            counted &= ~torch.isin(call.input_ids.to(device), special)
        scope = current_scope()
        if call.past == 0 and scope is not None and scope.counted is not None:
            counted[:, : scope.counted.shape[-1]] &= (
                _prompt_rows(scope.counted, batch, length).to(device).bool()
            )
        elif call.past == 0 and self.tokenizer is not None and call.input_ids is not None:
            counted &= _user_tokens(self.tokenizer, call, device)
        return counted

    def decision_end(
        self, call: ForwardCall, prompt_length: int | None, device: torch.device
    ) -> torch.Tensor:
        """(B,) long: where each row's prompt ends, for a forward starting a sequence."""
        scope = current_scope()
        if scope is not None and scope.decision_end is not None:
            return _prompt_rows(scope.decision_end.unsqueeze(-1), call.batch, None).squeeze(-1).to(device)
        end = call.length
        if scope is not None and scope.counted is not None:
            end = int(scope.counted.shape[-1])
        elif prompt_length is not None:
            end = prompt_length
        return torch.full((call.batch,), min(end, call.length), dtype=torch.long, device=device)

    def intervene(self, hidden: torch.Tensor, call: ForwardCall, history: RowHistory) -> torch.Tensor:
        """Gate and clamp one block output (B, L, d_in); ``history`` already follows the cache.

        Returns the (possibly) clamped hidden states, same shape and dtype.
        """
        device = hidden.device
        counted = self.counted_tokens(call, device)
        latents = self._latents_on(device)
        acts = latents.activations(hidden)  # (B, L, N) float32
        fired = (acts > 0).any(-1) & counted
        evidence = self._statistic_on(device).evidence(acts, fired) * counted
        start = history.append(evidence, counted, call.input_ids)
        scope = current_scope()
        flags, rho, prompt_flag = decide_new_positions(
            history, start, self.tau, freeze=scope is not None and scope.freeze, rule=self.rule
        )
        if self.forced is not None:
            flags = torch.full_like(flags, self.forced)
        history.flag = torch.cat([history.flag, flags], dim=1)
        clamp_tokens = flags & (fired if self.clamp_scope == "fired" else counted)
        if self.recording or self.observers:
            record = GateRecord(
                rho=rho.cpu(),
                flagged=flags[:, -1].cpu() if flags.shape[1] else prompt_flag.cpu(),
                clamped=clamp_tokens.cpu(),
                fired=fired.cpu(),
                prompt_flagged=prompt_flag.cpu(),
            )
            if self.recording:
                self.records.append(record)
            for observer in self.observers:
                observer(self, record)
        delta = (-self.clamp_value - acts) @ latents.decoder  # (B, L, d_in) float32
        return torch.where(clamp_tokens.unsqueeze(-1), (hidden.float() + delta).to(hidden.dtype), hidden)

    # -- per-device copies ----------------------------------------------------
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


def _prompt_rows(tensor: torch.Tensor, batch: int, length: int | None) -> torch.Tensor:
    """Expand a per-prompt tensor to the rows generate() runs (num_return_sequences, beams)."""
    rows = tensor.shape[0]
    if rows != batch and rows > 0 and batch % rows == 0:
        tensor = tensor.repeat_interleave(batch // rows, dim=0)
    if tensor.shape[0] != batch or (length is not None and tensor.shape[-1] > length):
        raise SaeguardError(
            f"token scope of shape {tuple(tensor.shape)} does not fit the batch ({batch}, {length}): "
            "build it from the same prompts"
        )
    return tensor


def _user_tokens(tokenizer: Any, call: ForwardCall, device: torch.device) -> torch.Tensor:
    """(B, L) bool: the user's turns in raw chat ids (padding excluded by the caller's mask)."""
    assert call.input_ids is not None
    rows = []
    for row in call.input_ids.tolist():
        rows.append(user_token_mask(tokenizer, row))
    return torch.tensor(rows, dtype=torch.bool, device=device)
