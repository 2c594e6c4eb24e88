"""Per-call gate state that follows the KV cache (method.md §3, "generation").

A :class:`RowHistory` holds, per row and cache position, the cumulative
evidence and counted tokens, the decisions and the token ids. Before each
forward :func:`follow` makes it match the cache: cut to the cache length (a
``crop`` or an assisted-decoding rollback), rows matched to the new rows by
their token prefix (beam search reordering, ``num_return_sequences``) or, for
manual forwards without full ids, kept in order or expanded
(``batch_repeat_interleave``). So decisions are a function of the tokens in the
cache, never of the order calls were made in. Histories live per ``generate``
call (:data:`CALL`), else per thread (:func:`thread_store`).
"""

from __future__ import annotations

import threading
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from saeguard.errors import SaeguardError, require


@dataclass
class ForwardCall:
    """What one forward of the model is: rows, new tokens, cache length and (in generate) all ids."""

    batch: int
    length: int  # L: new tokens in this forward
    past: int  # P: tokens already in the KV cache
    input_ids: torch.Tensor | None  # (B, L)
    mask: torch.Tensor | None  # (B, P + L) 2-D attention mask, if known
    full_ids: torch.Tensor | None = None  # (B, P + L) every token of each row (generate only)


@dataclass
class RowHistory:
    """Per row and cache position: cumulative evidence and counts, decisions, token ids.

    All tensors are (B, T) on the hidden states' device except ``end``,
    ``prompt_flag`` and ``prompt_known`` (B,). ``end`` is where the row's prompt ends.
    """

    ids: torch.Tensor  # long, -1 where unknown (inputs_embeds)
    cum_e: torch.Tensor  # float64 cumulative evidence
    cum_n: torch.Tensor  # float64 cumulative counted tokens
    flag: torch.Tensor  # bool decision per position
    end: torch.Tensor  # long
    prompt_flag: torch.Tensor  # bool
    prompt_known: torch.Tensor  # bool

    @classmethod
    def empty(cls, end: torch.Tensor) -> RowHistory:
        batch, device = int(end.shape[0]), end.device
        zeros = torch.zeros(batch, 0, dtype=torch.float64, device=device)
        no = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(
            ids=torch.zeros(batch, 0, dtype=torch.long, device=device),
            cum_e=zeros,
            cum_n=zeros.clone(),
            flag=torch.zeros(batch, 0, dtype=torch.bool, device=device),
            end=end,
            prompt_flag=no,
            prompt_known=no.clone(),
        )

    @property
    def length(self) -> int:
        return int(self.cum_e.shape[1])

    def truncate(self, length: int) -> RowHistory:
        """The history of the first ``length`` positions (a cropped or rolled-back cache)."""
        if length == self.length:
            return self
        return RowHistory(
            self.ids[:, :length],
            self.cum_e[:, :length],
            self.cum_n[:, :length],
            self.flag[:, :length],
            self.end,
            self.prompt_flag & (self.end <= length),
            self.prompt_known & (self.end <= length),
        )

    def select(self, index: torch.Tensor) -> RowHistory:
        """Rows ``index`` (B_new,) of this history, e.g. a beam reordering."""
        return RowHistory(
            *(t.index_select(0, index) for t in (self.ids, self.cum_e, self.cum_n, self.flag)),
            *(t.index_select(0, index) for t in (self.end, self.prompt_flag, self.prompt_known)),
        )

    def append(self, evidence: torch.Tensor, counted: torch.Tensor, ids: torch.Tensor | None) -> int:
        """Add (B, L) evidence and counted flags of new positions; returns where they start."""
        start = self.length
        last_e = self.cum_e[:, -1:] if start else torch.zeros_like(evidence[:, :1])
        last_n = self.cum_n[:, -1:] if start else torch.zeros_like(evidence[:, :1])
        new_ids = (
            ids.to(evidence.device) if ids is not None else torch.full_like(counted, -1, dtype=torch.long)
        )
        self.ids = torch.cat([self.ids, new_ids.long()], dim=1)
        self.cum_e = torch.cat([self.cum_e, last_e + evidence.double().cumsum(-1)], dim=1)
        self.cum_n = torch.cat([self.cum_n, last_n + counted.double().cumsum(-1)], dim=1)
        return start


@dataclass
class HistoryStore:
    """Histories and records of the gates, for one ``generate`` call or one thread."""

    histories: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    records: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    is_generate_call: bool = False
    prompt_length: int | None = None  # the first forward's length, within a generate call
    lost: torch.Tensor | None = None  # a row whose prefix matched no history (checked at the end)

    def records_for(self, gate: Any) -> list[Any]:
        return self.records.setdefault(gate, [])

    def forget(self, gate: Any) -> None:
        self.histories.pop(gate, None)
        self.records.pop(gate, None)

    def adopt(self, other: HistoryStore) -> None:
        """Keep ``other``'s histories (a finished generate call) for later forwards of this thread."""
        for gate, history in other.histories.items():
            self.histories[gate] = history


_THREAD = threading.local()
CALL: ContextVar[HistoryStore | None] = ContextVar("saeguard_generate_call", default=None)


def thread_store() -> HistoryStore:
    """This thread's store (records always live here)."""
    store = getattr(_THREAD, "store", None)
    if store is None:
        store = _THREAD.store = HistoryStore()
    return store


def pending_ids() -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    pending = getattr(_THREAD, "pending", None)
    if pending is None:
        pending = _THREAD.pending = {}
    return pending


def follow(
    history: RowHistory | None, call: ForwardCall, gate: Any, store: HistoryStore, device: torch.device
) -> RowHistory:
    """The history of ``gate`` made to match the KV cache of ``call`` (see the module docstring)."""
    if call.past == 0:
        prompt = store.prompt_length if store.is_generate_call else None
        return RowHistory.empty(gate.decision_end(call, prompt, device))
    require(
        history is not None and history.length >= call.past,
        f"the guard has no record of the {call.past} cached tokens of this call: attach it before "
        "the prompt's first forward (a KV cache built unguarded cannot be judged)",
    )
    assert history is not None
    history = history.truncate(call.past)
    rows = history.ids.shape[0]
    if call.full_ids is not None:
        prefix = call.full_ids[:, : call.past].to(history.ids.device)
        match = (prefix.unsqueeze(1) == history.ids.unsqueeze(0)).all(-1)  # (B_new, B_old)
        index = match.to(torch.int8).argmax(-1)
        missing = ~match.any(-1).all()
        store.lost = missing if store.lost is None else store.lost | missing
        return history.select(index)
    if call.batch == rows:
        return history
    if rows and call.batch % rows == 0:
        index = torch.arange(rows, device=history.ids.device).repeat_interleave(call.batch // rows)
        return history.select(index)
    raise SaeguardError(
        f"a forward of {call.batch} rows continues a cache of {rows} rows in an order the guard cannot "
        "follow: use model.generate, or keep the rows of a cached call in order"
    )
