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
this module too (:class:`RowHistory`); ``core/hooks.py`` holds the public
:class:`~saeguard.core.hooks.GateHook` and routes each forward to the gates on a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import get_args

import torch

from saeguard.config import GateRule as GateRuleKind
from saeguard.config import GateStatisticKind
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


def mean_rho(summed: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """summed / count where count > 0, else 0 (float64)."""
    return torch.where(count > 0, summed / count.clamp(min=1), torch.zeros_like(summed))


@dataclass(frozen=True)
class GateRule:
    """How per-token evidence becomes rho (method.md §3): the value the gate compares with tau.

    All rules read evidence e_t over counted tokens only, in order, and are defined on
    every prefix of an input, so generation judges the running prefix:

    - ``mean`` (the paper): rho = sum e / n.
    - ``window``: the largest mean over ``window`` consecutive counted tokens (the mean of
      all of them while fewer): a local burst of evidence is not diluted by benign context.
    - ``multiscale``: the largest full-window mean at every size of :attr:`windows` (``window``
      halved down to ``min_window``), each divided by its ``scales`` entry (that size's retain
      level, set by calibration), and the largest taken. A size counts once the input has that
      many counted tokens (the smallest also before: the mean of all of them), so a question
      shorter than the big window is judged by a small one whether or not benign text surrounds
      it, and a long diffuse passage by a big one (a variable-window scan statistic).
    - ``min_evidence``: the ``k``-th largest e_t: at least k tokens must carry evidence.
    - ``cusum``: max_t S_t with S_t = max(0, S_{t-1} + e_t - drift) (Page's CUSUM).

    Source: activation-probe monitors (rolling-window max, minimum evidence, CUSUM),
    method.md §7; scan statistics over several window sizes (Glaz, Naus & Wallenstein,
    *Scan Statistics*, 2001); the mean is the paper's §3.3.
    """

    kind: GateRuleKind = "mean"
    window: int = 16
    k: int = 3
    drift: float = 0.5
    min_window: int = 4
    scales: tuple[float, ...] = ()  # multiscale: one positive divisor per entry of `windows`

    def __post_init__(self) -> None:
        require(
            self.kind in get_args(GateRuleKind),
            f"unknown gate rule {self.kind!r}: use {get_args(GateRuleKind)}",
        )
        if self.kind == "multiscale":
            require(
                1 <= self.min_window <= self.window,
                f"multiscale rule: min_window ({self.min_window}) must be between 1 and window "
                f"({self.window})",
            )
            require(
                not self.scales
                or (len(self.scales) == len(self.windows) and all(0 < v < math.inf for v in self.scales)),
                f"multiscale rule: scales must be {len(self.windows)} positive numbers, one per window "
                f"{self.windows}, got {self.scales}: refit the guardrail",
            )

    @property
    def windows(self) -> tuple[int, ...]:
        """Window sizes of the multiscale rule, ascending: ``window`` halved while >= ``min_window``."""
        if self.kind != "multiscale":
            return (self.window,)
        sizes, size = [], self.window
        while size >= self.min_window:
            sizes.append(size)
            size //= 2
        return tuple(sorted(sizes))

    def prefix_rho(self, cum_e: torch.Tensor, cum_n: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """rho of each row's prefix ending at each of ``positions``: (B, P) float64.

        Args:
            cum_e, cum_n: (B, T) float64 cumulative evidence and counted tokens.
            positions: (P,) long, ascending indices into T.
        """
        if positions.numel() == 0:
            return cum_e.new_zeros(cum_e.shape[0], 0)
        if self.kind == "mean":
            return mean_rho(cum_e[:, positions], cum_n[:, positions])
        if self.kind == "min_evidence":
            return self._kth_largest(cum_e, cum_n, positions)
        # ascending positions: all T of them end at T - 1, known without a device sync (issue 17)
        upto = cum_e.shape[1] if positions.numel() == cum_e.shape[1] else int(positions.max()) + 1
        cum_e, cum_n = cum_e[:, :upto], cum_n[:, :upto]
        if self.kind == "window":
            return self._window_prefix(cum_e, cum_n, self.window)[:, positions]
        if self.kind == "multiscale":
            require(
                bool(self.scales),
                "the multiscale gate rule needs its per-window scales from calibration: fit the guardrail",
            )
            per_size = self._multiscale_prefix(cum_e, cum_n)
            divisor = torch.tensor(self.scales, dtype=per_size.dtype, device=per_size.device)
            scaled = per_size / divisor.view(-1, 1, 1)
            return scaled.nan_to_num(nan=0.0).amax(0)[:, positions]  # evidence >= 0: an unread size adds 0
        else:  # cusum: S_t = X_t - min(0, min_{s<=t} X_s), X = cumulative (e - drift) over counted tokens
            walk = cum_e - self.drift * cum_n
            score = walk - walk.cummin(-1).values.clamp(max=0.0)
        return score.cummax(-1).values[:, positions]

    def rho(self, evidence: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        """rho per row, (B,) float64, of (B, T) evidence over (B, T) counted tokens."""
        counted = counted.bool()
        cum_e = (evidence.double() * counted).cumsum(-1)
        cum_n = counted.double().cumsum(-1)
        if cum_e.shape[1] == 0:
            return cum_e.new_zeros(cum_e.shape[0])
        last = torch.tensor([cum_e.shape[1] - 1], device=cum_e.device)
        return self.prefix_rho(cum_e, cum_n, last).squeeze(1)

    def window_rho(self, evidence: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        """The multiscale rule before scaling, at each of :attr:`windows`: (B, S) float64.

        NaN where an input has fewer counted tokens than the size (every size but the
        smallest): what calibration reads to set ``scales``.
        """
        counted = counted.bool()
        cum_e = (evidence.double() * counted).cumsum(-1)
        cum_n = counted.double().cumsum(-1)
        if cum_e.shape[1] == 0:
            return cum_e.new_zeros(cum_e.shape[0], len(self.windows))
        return self._multiscale_prefix(cum_e, cum_n)[:, :, -1].T

    def _multiscale_prefix(self, cum_e: torch.Tensor, cum_n: torch.Tensor) -> torch.Tensor:
        """(S, B, T) unscaled: the smallest size as the window rule, larger ones NaN until full."""
        sizes = []
        for index, size in enumerate(self.windows):
            value = self._window_prefix(cum_e, cum_n, size)
            if index:
                value = torch.where(cum_n >= size, value, torch.full_like(value, torch.nan))
            sizes.append(value)
        return torch.stack(sizes)

    def _window_prefix(self, cum_e: torch.Tensor, cum_n: torch.Tensor, window: int) -> torch.Tensor:
        """The window rule of size ``window`` on every prefix (B, T): the largest full window's
        mean once there are ``window`` counted tokens, the mean of all of them before."""
        full = cum_n >= window
        means = self._window_means(cum_e, cum_n, window)
        best = torch.where(full, means, torch.full_like(means, -torch.inf)).cummax(-1).values
        return torch.where(full, best, mean_rho(cum_e, cum_n))

    def _window_means(self, cum_e: torch.Tensor, cum_n: torch.Tensor, window: int) -> torch.Tensor:
        """Mean evidence over the last ``window`` counted tokens up to each position (B, T)."""
        target = (cum_n - window).clamp(min=0.0)
        # first position where the count reaches `target`: the window starts right after it
        start = torch.searchsorted(cum_n.contiguous(), target.contiguous(), right=False)
        before_e = torch.where(
            target > 0, cum_e.gather(1, start.clamp(max=cum_e.shape[1] - 1)), torch.zeros_like(cum_e)
        )
        return mean_rho(cum_e - before_e, cum_n - target)

    def _kth_largest(self, cum_e: torch.Tensor, cum_n: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        evidence = torch.diff(cum_e, dim=1, prepend=cum_e.new_zeros(cum_e.shape[0], 1))
        counted = torch.diff(cum_n, dim=1, prepend=cum_n.new_zeros(cum_n.shape[0], 1)) > 0
        masked = torch.where(counted, evidence, torch.full_like(evidence, -torch.inf))
        columns = []
        for position in positions.tolist():
            prefix = masked[:, : position + 1]
            k = min(self.k, prefix.shape[1])
            kth = prefix.topk(k, dim=-1).values[:, -1]
            enough = cum_n[:, position] >= self.k
            columns.append(torch.where(enough, kth, torch.zeros_like(kth)))
        return torch.stack(columns, dim=1)


def gate_statistic(evidence: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """The paper's rho per row, (B,) float64: mean (B, T) evidence over (B, T) counted tokens."""
    return GateRule().rho(evidence, counted)


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
    rho_at = rule.prefix_rho(history.cum_e, history.cum_n, needed)  # (B, |needed|)
    lookup = torch.searchsorted(
        needed, torch.cat([last_prompt.unsqueeze(1), positions.expand(end.shape[0], -1)], 1)
    )
    values = rho_at.gather(1, lookup)
    prompt_rho = torch.where(end > 0, values[:, 0], torch.zeros_like(values[:, 0]))
    new_rho = values[:, 1:]
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
    return flags, rho, prompt_flag
