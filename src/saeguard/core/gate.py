"""The dynamic gate and the clamp (method.md §3-§4): one guard's decision on one forward.

Per input x with counted tokens C (real, non-special, in scope), rho is the mean
over C of a per-token evidence e_t. The paper's statistic ("fraction") is
    e_t = 1[some selected latent fires at t],  so  rho(x) = #{t in C : fired} / |C|;
"activation" uses e_t = sum_j f_j(h_t) / mu_j (mu_j: latent j's mean non-zero
activation on forget text). The input is flagged iff rho(x) > tau. On a flagged
input the clamped tokens (scope "fired", the paper: counted tokens where a
selected latent fires; scope "input": every counted token) get
    h' = h + sum_{j in S} (-c - f_j(h)) d_j
which equals Dec(f') + (h - Dec(f)) with f'_j = -c: the SAE error term is kept.

Generation (what a full recomputation without cache gives, position by
position): the prompt (positions before ``end``) is judged once; each later
token t updates the running rho over every counted token up to t, and a row
flagged once stays flagged. The per-row history that makes this exact under
any KV-cache operation (beam reordering, cropping, expansion) lives in
``core/state.py`` (:class:`RowHistory`); the rules that turn evidence into rho are in
``core/gate_rule.py``; ``core/hooks.py`` holds the public
:class:`~saeguard.core.hooks.GateHook` and routes each forward to the gates on a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import get_args

import torch

from saeguard.config import GateStatisticKind
from saeguard.core.gate_rule import GateRule
from saeguard.core.state import RowHistory
from saeguard.errors import require


@dataclass
class TokenScope:
    """Which prompt tokens count for the gate, and where the prompt ends.

    ``counted`` (B, T) bool marks the prompt tokens the gate reads (e.g. the
    user's message inside a chat template); positions past T (tokens generated
    in a forward without cache) count as generated tokens. ``decision_end``
    (B,) overrides where each row's prompt ends (default: T). ``freeze`` keeps
    the prompt's decision for every later token (scoring answer options: each
    option is judged by the same decision; the gate never peeks at them).
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
    """Tell every attached guard which tokens of the next prompt count (this thread/task only)."""
    end: torch.Tensor | None
    if isinstance(decision_end, torch.Tensor):
        end = decision_end.long().reshape(-1)
    else:
        end = None if decision_end is None else torch.tensor(list(decision_end), dtype=torch.long)
    token = _SCOPE.set(TokenScope(counted=counted, decision_end=end, freeze=freeze))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_scope() -> TokenScope | None:
    """The innermost :func:`token_scope` of this thread or task."""
    return _SCOPE.get()


@dataclass
class GateRecord:
    """What the gate saw and did in one forward call (kept when recording is on)."""

    rho: torch.Tensor  # (B,) float64 running rho after this call
    flagged: torch.Tensor  # (B,) bool: the row's decision at its last position
    clamped: torch.Tensor  # (B, L) bool: tokens of this call whose latents were clamped
    fired: torch.Tensor  # (B, L) bool: counted tokens of this call where a selected latent fired
    prompt_flagged: torch.Tensor | None = None  # (B,) bool: the prompt's own decision


@dataclass
class GateStatistic:
    """Per-token evidence the gate averages into rho (method.md §3)."""

    kind: GateStatisticKind = "fraction"
    weights: torch.Tensor | None = None  # (N,) 1 / mean non-zero forget activation, for "activation"

    def __post_init__(self) -> None:
        require(
            self.kind in get_args(GateStatisticKind),
            f"unknown gate statistic {self.kind!r}: use fraction or activation",
        )
        require(
            self.kind != "activation" or self.weights is not None,
            "the activation gate statistic needs per-latent weights",
        )

    def to(self, device: torch.device | str) -> GateStatistic:
        weights = None if self.weights is None else self.weights.to(device)
        return GateStatistic(self.kind, weights)

    def evidence(self, acts: torch.Tensor, fired: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) float64 evidence from (B, T, N) selected-latent activations.

        ``fired`` ((acts > 0).any(-1), when the caller has it) spares the fraction recomputing it.
        """
        if self.kind == "fraction":
            return (fired if fired is not None else (acts > 0).any(-1)).double()
        assert self.weights is not None
        return (acts.clamp(min=0) * self.weights.to(acts.device, acts.dtype)).sum(-1).double()


def activation_weights(mean_nonzero: torch.Tensor) -> torch.Tensor:
    """1 / mean non-zero activation, (N,) float32; latents that never fired on forget text get 0."""
    mean = mean_nonzero.double()
    return torch.where(mean > 0, 1.0 / mean.clamp(min=1e-12), torch.zeros_like(mean)).float()


def gate_statistic(evidence: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """The paper's rho per row, (B,) float64: mean (B, T) evidence over (B, T) counted tokens."""
    return GateRule().rho(evidence, counted)


def reported_rho(history: RowHistory, rule: GateRule | None = None) -> torch.Tensor:
    """The rho a gate reports for each row's history so far, (B,) float64: the prompt's reading
    while the history ends with the prompt, the running one (closed sentences only) after it,
    as :func:`decide_new_positions` reports it; 0 for an empty history."""
    rule = rule or GateRule()
    if history.length == 0:
        return torch.zeros(history.end.shape[0], dtype=torch.float64)
    last = torch.tensor([history.length - 1], device=history.cum_e.device)
    with_open, closed = rule.prefix_rho_pair(
        history.cum_e, history.cum_n, last, rule.sentence_ends(history.ids)
    )
    at_prompt_end = history.end.to(closed.device) == history.length
    return torch.where(at_prompt_end, with_open[:, 0], closed[:, 0])


def decide_new_positions(
    history: RowHistory, start: int, tau: float, *, freeze: bool, rule: GateRule | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token flags for positions ``start:`` of ``history`` (already holding their evidence).

    Prompt positions (before each row's ``end``) carry the prompt decision;
    later positions the sticky running decision (method.md §3, "generation").
    Updates ``history.prompt_flag`` when the prompt completes in this call.

    Returns:
        (flags (B, L) bool, rho (B,) float64 running rho at the last position,
        prompt_flag (B,) bool).
    """
    rule = rule or GateRule()
    length = history.cum_e.shape[1]
    device = history.cum_e.device
    positions = torch.arange(start, length, device=device)
    end = history.end
    prompt_ready = end <= length
    last_prompt = (end - 1).clamp(min=0, max=length - 1)
    if rule.kind == "min_evidence":  # a top-k per position: only the positions needed
        needed = torch.unique(torch.cat([last_prompt, positions]))  # ascending
    else:  # issue 17: every position, a size known on the host (torch.unique waits for the GPU)
        needed = torch.arange(length, device=device)
    ends = rule.sentence_ends(history.ids)
    # (B, |needed|) each: the prompt's reading (open sentence closed) and the running one
    rho_at, running_at = rule.prefix_rho_pair(history.cum_e, history.cum_n, needed, ends)
    lookup = torch.searchsorted(
        needed, torch.cat([last_prompt.unsqueeze(1), positions.expand(end.shape[0], -1)], 1)
    )
    values = rho_at.gather(1, lookup)
    prompt_rho = torch.where(end > 0, values[:, 0], torch.zeros_like(values[:, 0]))
    new_rho = values[:, 1:]
    if rule.kind == "sentence":  # past the prompt, a sentence counts once it is closed
        new_rho = running_at.gather(1, lookup[:, 1:])
    computed = (prompt_rho > tau) & prompt_ready
    prompt_flag = torch.where(history.prompt_known, history.prompt_flag, computed)
    history.prompt_flag = prompt_flag
    history.prompt_known = history.prompt_known | prompt_ready

    running = new_rho > tau
    in_prompt = positions.unsqueeze(0) < end.unsqueeze(1)
    if freeze:
        running = torch.zeros_like(running)
    step = running & ~in_prompt
    before = history.flag[:, start - 1] if start > 0 else torch.zeros_like(prompt_flag)
    sticky = step.cummax(-1).values | before.unsqueeze(1) | prompt_flag.unsqueeze(1)
    flags = torch.where(in_prompt, prompt_flag.unsqueeze(1), sticky)
    # A prompt still incomplete in this call (chunked prefill): judge its tokens by the running rule.
    flags = torch.where(in_prompt & ~prompt_ready.unsqueeze(1), running, flags)
    rho = new_rho[:, -1] if new_rho.shape[1] else prompt_rho
    rho = torch.where(end == length, prompt_rho, rho)  # a call ending with the prompt reports its rho
    return flags, rho, prompt_flag
