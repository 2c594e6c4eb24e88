"""Routing each forward of a model to the gates on it: one :class:`Dispatcher` per model.

A dispatcher installs, only while a gate uses the model, a forward pre-hook on
the model (to read what the call is: a :class:`~saeguard.core.state.ForwardCall`),
a forward hook on each hooked decoder block, and thin wrappers around the
model's ``generate`` (a fresh state per call) and ``prepare_inputs_for_generation``
(the full token ids of every step). Each block hook hands its output to the
gates on that layer (:meth:`GateHook.intervene <saeguard.core.hooks.GateHook.intervene>`:
each gate reads the block's own output, and their clamps add up), after making each gate's
:class:`~saeguard.core.state.RowHistory` follow the KV cache (:func:`~saeguard.core.state.follow`).
Gates are global (every forward, any thread) or local (forwards of the calling thread or task
only); state lives per ``generate`` call, else per thread, so concurrent calls never share it.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from saeguard.core.state import CALL, ForwardCall, HistoryStore, follow, pending_ids, thread_store
from saeguard.errors import require
from saeguard.hf.layers import block_output_tensor, decoder_blocks, replace_block_output

if TYPE_CHECKING:
    from saeguard.core.hooks import GateHook


class Dispatcher:
    """The hooks on one model, routing each forward to the gates that apply to it."""

    def __init__(self, model: nn.Module) -> None:
        self.model_ref = weakref.ref(model)
        self.lock = threading.Lock()
        self.global_gates: list[GateHook] = []
        self.local_gates: ContextVar[tuple[GateHook, ...]] = ContextVar("saeguard_local_gates", default=())
        self.layer_users: dict[int, int] = {}
        self.handles: dict[Any, torch.utils.hooks.RemovableHandle] = {}
        self.wrapped: dict[str, Any] = {}
        self.call: ContextVar[ForwardCall | None] = ContextVar("saeguard_forward_call", default=None)

    # -- membership -----------------------------------------------------------
    def _check_new(self, gate: GateHook) -> None:
        """Refuse a gate whose guard already applies here: it would gate and clamp twice."""
        present = [*self.global_gates, *self.local_gates.get()]
        require(
            gate.owner is None or all(other.owner is not gate.owner for other in present),
            "this guard is already attached to that model (guard.attached / attach): detach it first, "
            "or call model.generate directly inside the attached block",
        )

    def add_global(self, gate: GateHook) -> None:
        with self.lock:
            self._check_new(gate)
            self._use_layer(gate.layer)
            self.global_gates.append(gate)

    def remove_global(self, gate: GateHook) -> None:
        with self.lock:
            if gate in self.global_gates:
                self.global_gates.remove(gate)
                self._release_layer(gate.layer)

    def add_local(self, gate: GateHook) -> Token:
        with self.lock:
            self._check_new(gate)
            self._use_layer(gate.layer)
        return self.local_gates.set((*self.local_gates.get(), gate))

    def remove_local(self, gate: GateHook, token: Token) -> None:
        self.local_gates.reset(token)
        with self.lock:
            self._release_layer(gate.layer)

    def active(self) -> list[GateHook]:
        """Gates that apply to a forward made now, in this thread or task."""
        return [*self.global_gates, *self.local_gates.get()]

    # -- installation -----------------------------------------------------------
    def _use_layer(self, layer: int) -> None:
        model = self.model_ref()
        assert model is not None
        blocks = decoder_blocks(model)
        require(0 <= layer < len(blocks), f"hook layer {layer} is outside the model's {len(blocks)} layers")
        if not self.handles:
            self.handles["call"] = model.register_forward_pre_hook(self._read_call, with_kwargs=True)
            self._wrap(model, "generate", self._generate_wrapper)
            self._wrap(model, "prepare_inputs_for_generation", self._prepare_wrapper)
        if self.layer_users.get(layer, 0) == 0:
            self.handles[layer] = blocks[layer].register_forward_hook(self._block_hook(layer))
        self.layer_users[layer] = self.layer_users.get(layer, 0) + 1

    def _release_layer(self, layer: int) -> None:
        self.layer_users[layer] -= 1
        if self.layer_users[layer] == 0:
            self.handles.pop(layer).remove()
            del self.layer_users[layer]
        if not self.layer_users:
            for handle in self.handles.values():
                handle.remove()
            self.handles.clear()
            model = self.model_ref()
            for name, original in self.wrapped.items():
                if model is not None:
                    if original is None:
                        delattr(model, name)
                    else:
                        setattr(model, name, original)
            self.wrapped.clear()

    def _wrap(self, model: nn.Module, name: str, make: Callable[[Callable], Callable]) -> None:
        bound = getattr(model, name, None)
        if bound is None:
            return
        self.wrapped[name] = model.__dict__.get(name)  # an instance attribute to restore, else None
        object.__setattr__(model, name, make(bound))

    # -- the hooks --------------------------------------------------------------
    def _generate_wrapper(self, original: Callable) -> Callable:
        # wraps: transformers reads the signatures (e.g. whether inputs_embeds is accepted)
        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            if not self.active():
                return original(*args, **kwargs)
            store = HistoryStore(is_generate_call=True)
            token = CALL.set(store)
            try:
                output = original(*args, **kwargs)
                require(
                    store.lost is None or not bool(store.lost),
                    "generate reordered rows the guard could not match to their token prefixes: "
                    "please report this with the generate arguments",
                )
                return output
            finally:
                CALL.reset(token)
                thread_store().adopt(store)

        return generate

    def _prepare_wrapper(self, original: Callable) -> Callable:
        @functools.wraps(original)
        def prepare(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            inputs = original(input_ids, *args, **kwargs)
            if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
                mask = kwargs.get("attention_mask")
                mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
                pending_ids()[id(self)] = (input_ids, mask)
            return inputs

        return prepare

    def _read_call(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        pending = pending_ids().pop(id(self), None)
        if not self.active():
            self.call.set(None)
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if not isinstance(reference, torch.Tensor):
            self.call.set(None)
            return
        batch, length = int(reference.shape[0]), int(reference.shape[1])
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        past = _past_length(kwargs, mask, length)
        full_ids = None
        if pending is not None and pending[0].shape[0] == batch and pending[0].shape[1] == past + length:
            full_ids = pending[0]
            if mask is None and pending[1] is not None and pending[1].shape[1] == past + length:
                mask = pending[1]
        ids = input_ids if isinstance(input_ids, torch.Tensor) else None
        self.call.set(ForwardCall(batch, length, past, ids, mask, full_ids))

    def _block_hook(self, layer: int) -> Callable:
        def hook(_module: nn.Module, _args: object, output: object) -> object:
            call = self.call.get()
            gates = [g for g in self.active() if g.layer == layer]
            if call is None or not gates:
                return output
            hidden = block_output_tensor(output)
            require(
                tuple(hidden.shape[:2]) == (call.batch, call.length),
                f"block {layer} saw {tuple(hidden.shape[:2])} tokens but the call had "
                f"{(call.batch, call.length)}: the guard supports decoder-only models, one forward per call",
            )
            store = CALL.get() or thread_store()
            if call.past == 0 and store.is_generate_call and store.prompt_length is None:
                store.prompt_length = call.length
            # Every gate on this layer reads the block's own output (its decision and its latents'
            # activations do not depend on the other guards) and the clamps add up: stacked
            # guards compose like one guard over the union of their latents (issue 15, sequential).
            raw, edited = hidden, hidden
            for gate in gates:
                with gate.instrument() if gate.instrument is not None else nullcontext():
                    history = follow(store.histories.get(gate), call, gate, store, hidden.device)
                    clamped = gate.intervene(raw, call, history)
                    edited = clamped if edited is raw else edited + (clamped - raw)
                store.histories[gate] = history
            return replace_block_output(output, edited)

        return hook


_DISPATCHERS: weakref.WeakKeyDictionary[nn.Module, Dispatcher] = weakref.WeakKeyDictionary()
_DISPATCHERS_LOCK = threading.Lock()


def dispatcher_for(model: nn.Module) -> Dispatcher:
    """The model's dispatcher (created on first use; hooks are installed only while gates use it)."""
    with _DISPATCHERS_LOCK:
        dispatcher = _DISPATCHERS.get(model)
        if dispatcher is None:
            dispatcher = _DISPATCHERS[model] = Dispatcher(model)
        return dispatcher


def _past_length(kwargs: dict, mask: torch.Tensor | None, length: int) -> int:
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    for key in ("cache", "past_key_values"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    if mask is not None:
        return max(int(mask.shape[1]) - length, 0)
    return 0
