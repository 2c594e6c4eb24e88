"""Per-request gate state inside vLLM's flattened batches: plain Python and torch, no vLLM import.

vLLM runs many requests in one forward: their new tokens are concatenated into one
(N, d) tensor, request i owning rows ``query_start_loc[i]:query_start_loc[i + 1]``; a
request's step is a (chunk of its) prefill or one decode token, and the KV cache holds
its first ``num_computed_tokens`` tokens. :class:`GuardRouter` keeps, per request, the
same :class:`~saeguard.core.state.RowHistory` the HF path keeps per row, and runs the
guard's own :meth:`~saeguard.core.hooks.GateHook.intervene` on the request's rows: the
prompt is judged once (also across chunked-prefill steps), the decision is kept for every
decoded token, and each request picks its guard (or none). So a request gets exactly the
decisions and clamps ``Guardrail.generate`` gives the same tokens (tests/vllm).

The adapter in :mod:`saeguard.vllm.plugin` builds :class:`RequestStep` lists from vLLM's
model runner and forward context and calls :meth:`GuardRouter.apply` from a forward hook.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from saeguard.core.gate import reported_rho
from saeguard.core.hooks import GateHook
from saeguard.core.state import ForwardCall, RowHistory
from saeguard.errors import require
from saeguard.hf.chat import user_token_mask

log = logging.getLogger(__name__)

#: ``SamplingParams.extra_args`` keys: the guard's name (or "none"), and a tag for the decision log.
GUARD_KEY = "saeguard"
TAG_KEY = "saeguard_tag"
_OFF = ("none", "off", "")


@dataclass(frozen=True)
class RequestStep:
    """One request's rows in a flattened vLLM batch.

    Attributes:
        request_id: vLLM's request id.
        start, stop: its rows ``[start, stop)`` of the flattened (N, d) hidden states.
        computed: tokens of the request already in its KV cache (``num_computed_tokens``).
        prompt_ids: the whole prompt's token ids (host ints).
        extra_args: the request's ``SamplingParams.extra_args`` (guard choice, tag).
    """

    request_id: str
    start: int
    stop: int
    computed: int
    prompt_ids: Sequence[int]
    extra_args: Mapping[str, Any] | None = None

    @property
    def length(self) -> int:
        """L: the request's tokens in this step (a prefill chunk, or 1 when decoding)."""
        return self.stop - self.start


@dataclass
class RequestState:
    """What the router keeps for one request between forwards."""

    guard: str
    history: RowHistory  # (1, T) on the hidden states' device
    prompt_counted: torch.Tensor | None  # (prompt_len,) bool: the prompt tokens the gate reads
    tag: str | None = None
    fail_closed: bool = False  # tokens in the cache were never seen: every step is clamped


class GuardRouter:
    """Guards by name, one gate state per request, applied to flattened vLLM batches.

    Args:
        guards: name -> :class:`GateHook` (``Guardrail.hook()``, with no tokenizer: the
            router counts user tokens itself, across chunked prefills).
        default: the guard of requests that do not name one (None: unguarded unless asked).
        tokenizer: with a chat template, only the user's turns of a prompt count
            (:func:`~saeguard.hf.chat.user_token_mask`, as the HF server path does).
        keep: how many finished requests' decisions :meth:`decisions` keeps.

    Raises:
        SaeguardError: no guards, an unknown default, or a guard with a tokenizer of its own.
    """

    def __init__(
        self,
        guards: Mapping[str, GateHook],
        *,
        default: str | None = None,
        tokenizer: Any = None,
        keep: int = 10_000,
    ) -> None:
        require(bool(guards), "the vLLM guard router needs at least one guard: name=artifact folder")
        require(
            default is None or default in guards,
            f"default guard {default!r} is not one of {sorted(guards)}: name a loaded guard",
        )
        require(
            all(gate.tokenizer is None for gate in guards.values()),
            "pass guards built without a tokenizer (Guardrail.hook()); give the router the tokenizer",
        )
        self.guards = dict(guards)
        self.default = default
        self.tokenizer = tokenizer
        self.keep = keep
        self.states: dict[str, RequestState] = {}
        self.finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._warned: set[str] = set()

    @property
    def layers(self) -> set[int]:
        """The decoder blocks some guard reads (where the adapter puts forward hooks)."""
        return {gate.layer for gate in self.guards.values()}

    def guard_for(self, extra_args: Mapping[str, Any] | None) -> str | None:
        """The guard a request names in ``extra_args`` (``{"saeguard": name | "none"}``), else the default.

        An unknown name falls back to the default guard, with one warning per name.
        """
        if not extra_args or GUARD_KEY not in extra_args:
            return self.default
        name = extra_args[GUARD_KEY]
        if name is None or str(name).lower() in _OFF:
            return None
        if str(name) not in self.guards:
            self._warn(f"unknown:{name}", f"request asked for unknown guard {name!r}; using {self.default!r}")
            return self.default
        return str(name)

    # -- one forward ------------------------------------------------------------------
    def apply(
        self, layer: int, hidden: torch.Tensor, token_ids: torch.Tensor | None, steps: Iterable[RequestStep]
    ) -> torch.Tensor | None:
        """Gate and clamp the requests whose guard reads block ``layer``.

        Args:
            hidden: (N, d) the residual stream after block ``layer``, rows of all requests.
            token_ids: (N,) the step's input ids (None with embeddings input: no special-id exclusion).
            steps: where each request's rows are (:class:`RequestStep`).

        Returns:
            The (N, d) stream with clamped rows (a new tensor), or None when no request here
            is guarded (the caller keeps its tensor: nothing is copied).
        """
        out: torch.Tensor | None = None
        for step in steps:
            name = self._guard_of(step) if step.length > 0 else None
            if name is None or self.guards[name].layer != layer:
                continue  # unguarded, or its guard reads another block (its state is left alone)
            state = self._state(step, name, hidden.device)
            gate = self.guards[name]
            rows = hidden[step.start : step.stop].unsqueeze(0)
            ids = token_ids[step.start : step.stop].unsqueeze(0) if token_ids is not None else None
            call = ForwardCall(1, step.length, step.computed, ids, self._mask(state, step))
            with _forced(gate, True if state.fail_closed else gate.forced):
                clamped = gate.intervene(rows, call, state.history)
            if out is None:
                out = hidden.clone()
            out[step.start : step.stop] = clamped[0]
        return out

    def retire(self, active: Iterable[str]) -> None:
        """Drop the state of requests not in ``active`` (finished or aborted), keeping their decisions."""
        alive = set(active)
        for request_id in [r for r in self.states if r not in alive]:
            state = self.states.pop(request_id)
            self.finished[state.tag or request_id] = self._summary(request_id, state)
            while len(self.finished) > self.keep:
                self.finished.popitem(last=False)

    def decisions(self) -> dict[str, dict[str, Any]]:
        """Decisions of finished requests (by tag, else request id), then of running ones."""
        running = {state.tag or rid: self._summary(rid, state) for rid, state in self.states.items()}
        return dict(self.finished) | running

    # -- state --------------------------------------------------------------------------
    def _guard_of(self, step: RequestStep) -> str | None:
        """The guard of a running request (kept from its first step), else the one it asks for."""
        state = self.states.get(step.request_id)
        return state.guard if state is not None and step.computed > 0 else self.guard_for(step.extra_args)

    def _state(self, step: RequestStep, name: str, device: torch.device) -> RequestState:
        """The request's state made to match its KV cache (``computed`` tokens), created on first sight."""
        state = self.states.get(step.request_id)
        if state is None or step.computed == 0:  # new, or recomputed from scratch after preemption
            tag = (step.extra_args or {}).get(TAG_KEY)
            end = _on(torch.tensor([len(step.prompt_ids)], dtype=torch.long), device)
            state = RequestState(name, RowHistory.empty(end), self._prompt_counted(step, device), tag)
            self.states[step.request_id] = state
        history = state.history
        if step.computed < history.length:  # rolled back (recompute, speculative rejection)
            state.history = history.truncate(step.computed)
        elif step.computed > history.length:  # cached tokens the gate never saw (a prefix-cache hit)
            self._warn(
                "unseen",
                "a guarded request reused KV-cache tokens the guard never saw: it is clamped "
                "(fail closed); disable prefix caching for guarded requests",
            )
            state.fail_closed = True
            pad = step.computed - history.length
            state.history = _padded(history, pad)
        return state

    def _prompt_counted(self, step: RequestStep, device: torch.device) -> torch.Tensor | None:
        if self.tokenizer is None or not step.prompt_ids:
            return None
        mask = user_token_mask(self.tokenizer, list(step.prompt_ids))
        return _on(torch.tensor(mask, dtype=torch.bool), device)

    @staticmethod
    def _mask(state: RequestState, step: RequestStep) -> torch.Tensor | None:
        """(1, computed + L) counted mask for ``intervene`` (it reads the last L): prompt spans, then 1s."""
        prompt = state.prompt_counted
        if prompt is None or step.computed >= prompt.shape[0]:
            return None  # decoded tokens: every non-special token counts
        upto = step.computed + step.length
        mask = prompt[:upto]
        if upto > prompt.shape[0]:  # a recompute covering prompt and generated tokens
            mask = torch.cat([mask, mask.new_ones(upto - prompt.shape[0])])
        return mask.unsqueeze(0)

    def _summary(self, request_id: str, state: RequestState) -> dict[str, Any]:
        history, gate = state.history, self.guards[state.guard]
        rho = float(reported_rho(history, gate.rule)[0])  # what the decision read (sentence rule)
        return {
            "request_id": request_id,
            "guard": state.guard,
            "prompt_flagged": bool(history.prompt_flag[0]),
            "flagged": bool(history.flag[0, -1]) if history.length else False,
            "rho": rho,
            "tokens": history.length,
            "fail_closed": state.fail_closed,
        }

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("saeguard: %s", message)


def _padded(history: RowHistory, count: int) -> RowHistory:
    """``history`` extended by ``count`` unseen positions (no evidence, flagged): the cache is longer."""
    device = history.cum_e.device
    last_e = (
        history.cum_e[:, -1:] if history.length else torch.zeros(1, 1, dtype=torch.float64, device=device)
    )
    last_n = history.cum_n[:, -1:] if history.length else torch.zeros_like(last_e)
    return RowHistory(
        ids=torch.cat([history.ids, torch.full((1, count), -1, dtype=torch.long, device=device)], 1),
        cum_e=torch.cat([history.cum_e, last_e.expand(1, count)], 1),
        cum_n=torch.cat([history.cum_n, last_n.expand(1, count)], 1),
        flag=torch.cat([history.flag, torch.ones(1, count, dtype=torch.bool, device=device)], 1),
        end=history.end,
        prompt_flag=history.prompt_flag,
        prompt_known=history.prompt_known,
    )


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor copied to ``device`` without waiting for the device (no host sync mid-forward)."""
    return tensor.to(device, non_blocking=True)


@contextmanager
def _forced(gate: GateHook, forced: bool | None) -> Iterator[None]:
    """Set ``gate.forced`` for one call (vLLM runs a worker's forwards in one thread)."""
    before = gate.forced
    gate.forced = forced
    try:
        yield
    finally:
        gate.forced = before
