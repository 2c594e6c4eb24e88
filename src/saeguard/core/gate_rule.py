"""How per-token evidence becomes rho: the gate rules (method.md §3; issue 13).

``core/gate.py`` holds the decision (rho > tau, the prompt's and the running one) and the
clamp; this module holds the rules it reads rho with, each defined on every prefix of an
input so the running gate in a generation is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import get_args

import torch

from saeguard.config import GateRule as GateRuleKind
from saeguard.errors import require


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
    - ``sentence``: the multiscale rule plus one more scaled column, the largest mean over
      *sentences*: runs of counted tokens closed by a token in ``end_ids`` (one holding ``.``,
      ``?``, ``!`` or a newline, from the tokenizer) or by an uncounted token (a turn boundary,
      padding). A sentence shorter than ``min_sentence`` counted tokens is read with the tokens
      before it up to that many. A question is usually a sentence of its own, so benign
      sentences around it, however many, do not dilute it; the windows still catch text
      without punctuation. A sentence is judged once it is closed; the prompt's decision
      (and :meth:`rho`) also closes the open one at the input's end, a generation does not.
    - ``min_evidence``: the ``k``-th largest e_t: at least k tokens must carry evidence.
    - ``cusum``: max_t S_t with S_t = max(0, S_{t-1} + e_t - drift) (Page's CUSUM).

    Source: activation-probe monitors (rolling-window max, minimum evidence, CUSUM),
    method.md §7; scan statistics over several window sizes (Glaz, Naus & Wallenstein,
    *Scan Statistics*, 2001); the sentence column: issue 13, measured in
    ``scripts/research/segment_rule.py``; the mean is the paper's §3.3.
    """

    kind: GateRuleKind = "mean"
    window: int = 16
    k: int = 3
    drift: float = 0.5
    min_window: int = 4
    scales: tuple[float, ...] = ()  # multiscale/sentence: one positive divisor per column
    min_sentence: int = 1
    end_ids: tuple[int, ...] = field(default=(), repr=False)  # sentence: ids of tokens ending one
    _end_tables: dict[torch.device, torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        require(
            self.kind in get_args(GateRuleKind),
            f"unknown gate rule {self.kind!r}: use {get_args(GateRuleKind)}",
        )
        require(
            self.kind != "sentence" or self.min_sentence >= 1,
            f"sentence rule: min_sentence must be at least 1, got {self.min_sentence}",
        )
        require(
            all(int(i) >= 0 for i in self.end_ids),
            f"sentence rule: end_ids must be token ids (integers >= 0), got {self.end_ids[:8]}...",
        )
        if self.scaled:
            require(
                1 <= self.min_window <= self.window,
                f"multiscale rule: min_window ({self.min_window}) must be between 1 and window "
                f"({self.window})",
            )
            require(
                not self.scales
                or (len(self.scales) == self.columns and all(0 < v < math.inf for v in self.scales)),
                f"{self.kind} rule: scales must be {self.columns} positive numbers, one per "
                f"{self.column_names}, got {self.scales}: refit the guardrail",
            )

    @property
    def scaled(self) -> bool:
        """Whether rho is a max over columns each divided by its calibrated scale."""
        return self.kind in ("multiscale", "sentence")

    @property
    def columns(self) -> int:
        """Scaled columns: one per window size, plus the sentence column of the sentence rule."""
        return len(self.windows) + (self.kind == "sentence")

    @property
    def column_names(self) -> tuple[str, ...]:
        """A label per scaled column, e.g. ``("window 8", "window 16", "sentence")``."""
        names = tuple(f"window {size}" for size in self.windows)
        return names + ("sentence",) if self.kind == "sentence" else names

    def sentence_ends(self, ids: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T) bool: which of (B, T) token ids end a sentence (None when the rule reads none)."""
        if self.kind != "sentence" or ids is None or not self.end_ids:
            return None
        table = self._end_tables.get(ids.device)
        if table is None:
            table = torch.tensor(self.end_ids, dtype=torch.long, device=ids.device)
            self._end_tables[ids.device] = table
        return torch.isin(ids.long(), table)

    @property
    def windows(self) -> tuple[int, ...]:
        """Window sizes of the multiscale rule, ascending: ``window`` halved while >= ``min_window``."""
        if not self.scaled:
            return (self.window,)
        sizes, size = [], self.window
        while size >= self.min_window:
            sizes.append(size)
            size //= 2
        return tuple(sorted(sizes))

    def prefix_rho(
        self,
        cum_e: torch.Tensor,
        cum_n: torch.Tensor,
        positions: torch.Tensor,
        ends: torch.Tensor | None = None,
        *,
        input_end: bool = True,
        attended: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """rho of each row's prefix ending at each of ``positions``: (B, P) float64.

        Args:
            cum_e, cum_n: (B, T) float64 cumulative evidence and counted tokens.
            positions: (P,) long, ascending indices into T.
            ends: (B, T) bool, tokens ending a sentence (:meth:`sentence_ends`); sentence rule only.
            input_end: the sentence rule also closes the open sentence at each position (the
                prompt's decision); False reads closed sentences only (a running generation).
            attended: (B, T) attention mask: padding (0) closes no sentence (:meth:`rho`).

        Raises:
            SaeguardError: ``ends`` or ``attended`` shorter than T, or a scaled rule without scales.
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
        if self.scaled:
            closed, with_open = self._scaled_prefix(cum_e, cum_n, ends, attended)
            return (with_open if input_end else closed)[:, positions]
        else:  # cusum: S_t = X_t - min(0, min_{s<=t} X_s), X = cumulative (e - drift) over counted tokens
            walk = cum_e - self.drift * cum_n
            score = walk - walk.cummin(-1).values.clamp(max=0.0)
        return score.cummax(-1).values[:, positions]

    def rho(
        self,
        evidence: torch.Tensor,
        counted: torch.Tensor,
        ends: torch.Tensor | None = None,
        *,
        input_end: bool = True,
        attended: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """rho per row, (B,) float64, of (B, T) evidence over (B, T) counted tokens.

        ``ends`` and ``input_end``: as :meth:`prefix_rho` (the sentence rule only).
        ``attended``: (B, T) attention mask of a padded batch; padding (0) closes no sentence,
        so a right-padded row reads as it does alone (the running gate never sees padding after
        a row's last token).
        """
        counted = counted.bool()
        cum_e = (evidence.double() * counted).cumsum(-1)
        cum_n = counted.double().cumsum(-1)
        if cum_e.shape[1] == 0:
            return cum_e.new_zeros(cum_e.shape[0])
        last = torch.tensor([cum_e.shape[1] - 1], device=cum_e.device)
        rho = self.prefix_rho(cum_e, cum_n, last, ends, input_end=input_end, attended=attended)
        return rho.squeeze(1)

    def window_rho(
        self,
        evidence: torch.Tensor,
        counted: torch.Tensor,
        ends: torch.Tensor | None = None,
        *,
        input_end: bool = True,
        attended: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The multiscale or sentence rule before scaling, per column: (B, :attr:`columns`) float64.

        One column per window size (NaN where an input has fewer counted tokens than the
        size, every size but the smallest), then the sentence rule's sentence column: what
        calibration reads to set ``scales``. ``ends``, ``input_end``, ``attended``: as :meth:`rho`.
        """
        counted = counted.bool()
        cum_e = (evidence.double() * counted).cumsum(-1)
        cum_n = counted.double().cumsum(-1)
        if cum_e.shape[1] == 0:
            return cum_e.new_zeros(cum_e.shape[0], self.columns)
        return self._columns_prefix(cum_e, cum_n, ends, input_end, attended)[:, :, -1].T

    def prefix_rho_pair(
        self,
        cum_e: torch.Tensor,
        cum_n: torch.Tensor,
        positions: torch.Tensor,
        ends: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prefix_rho` with ``input_end`` True and False, from one pass: two (B, P) float64.

        What the gate needs in one forward (the prompt's decision and the running one); the
        rules other than ``sentence`` read the same value twice.
        """
        if self.kind != "sentence" or positions.numel() == 0:
            rho = self.prefix_rho(cum_e, cum_n, positions, ends)
            return rho, rho
        upto = cum_e.shape[1] if positions.numel() == cum_e.shape[1] else int(positions.max()) + 1
        closed, with_open = self._scaled_prefix(cum_e[:, :upto], cum_n[:, :upto], ends, None)
        return with_open[:, positions], closed[:, positions]

    def _scaled_prefix(
        self,
        cum_e: torch.Tensor,
        cum_n: torch.Tensor,
        ends: torch.Tensor | None,
        attended: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scaled rules on every prefix, (B, T) each: (closed sentences only, with the open one).

        The multiscale rule reads no sentences: both are the same tensor.
        """
        require(
            bool(self.scales),
            f"the {self.kind} gate rule needs its per-column scales from calibration: fit the guardrail",
        )
        columns = self._window_columns(cum_e, cum_n)
        divisor = torch.tensor(self.scales, dtype=cum_e.dtype, device=cum_e.device)
        windows = (columns / divisor[: len(columns)].view(-1, 1, 1)).nan_to_num(nan=0.0).amax(0)
        if self.kind != "sentence":
            return windows, windows  # evidence >= 0: an unread size adds 0
        closed, open_ = self._sentence_prefix(cum_e, cum_n, ends, attended)
        scale = divisor[-1]
        closed = torch.maximum(windows, closed / scale)
        return closed, torch.maximum(closed, open_ / scale)

    def _columns_prefix(
        self,
        cum_e: torch.Tensor,
        cum_n: torch.Tensor,
        ends: torch.Tensor | None,
        input_end: bool,
        attended: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(columns, B, T) unscaled: the window columns, then the sentence column (sentence rule)."""
        columns = self._window_columns(cum_e, cum_n)
        if self.kind != "sentence":
            return columns
        closed, open_ = self._sentence_prefix(cum_e, cum_n, ends, attended)
        sentence = torch.maximum(closed, open_) if input_end else closed
        return torch.cat([columns, sentence.unsqueeze(0)])

    def _window_columns(self, cum_e: torch.Tensor, cum_n: torch.Tensor) -> torch.Tensor:
        """(sizes, B, T) unscaled: the smallest size as the window rule, larger ones NaN until full."""
        sizes = []
        for index, size in enumerate(self.windows):
            value = self._window_prefix(cum_e, cum_n, size)
            if index:
                value = torch.where(cum_n >= size, value, torch.full_like(value, torch.nan))
            sizes.append(value)
        return torch.stack(sizes)

    def _sentence_prefix(
        self,
        cum_e: torch.Tensor,
        cum_n: torch.Tensor,
        ends: torch.Tensor | None,
        attended: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sentence column on every prefix, unscaled, (B, T) each: the largest closed
        sentence's mean, and the open sentence's mean at each position (0 where none is open).
        A sentence of fewer than ``min_sentence`` counted tokens is read over the last
        ``min_sentence`` counted tokens up to its end. Padding (``attended`` 0) closes none."""
        batch, length = cum_n.shape
        counted = torch.diff(cum_n, dim=1, prepend=cum_n.new_zeros(batch, 1)) > 0
        close = ~counted
        if ends is not None:
            require(
                ends.dim() == 2 and ends.shape[0] == batch and ends.shape[1] >= length,
                f"sentence ends of shape {tuple(ends.shape)} do not cover the input's {(batch, length)}: "
                "pass one flag per token (GateRule.sentence_ends(input_ids))",
            )
            close = close | ends[:, :length].to(close.device).bool()
        if attended is not None:
            require(
                attended.dim() == 2 and attended.shape[0] == batch and attended.shape[1] >= length,
                f"attention mask of shape {tuple(attended.shape)} does not cover the input's "
                f"{(batch, length)}: pass the batch's attention_mask",
            )
            close = close & attended[:, :length].to(close.device).bool()
        index = torch.arange(length, device=cum_n.device).expand_as(cum_n)
        last_close = torch.where(close, index, torch.full_like(index, -1)).cummax(-1).values
        previous = torch.cat([last_close.new_full((batch, 1), -1), last_close[:, :-1]], 1)
        counted_before = torch.where(
            previous >= 0, cum_n.gather(1, previous.clamp(min=0)), torch.zeros_like(cum_n)
        )
        in_sentence = cum_n - counted_before  # counted tokens of the sentence holding each position
        width = in_sentence.clamp(min=float(self.min_sentence))
        value = self._trailing_means(cum_e, cum_n, width)
        has = in_sentence > 0
        closed = torch.where(close & has, value, torch.full_like(value, -torch.inf))
        best = closed.cummax(-1).values.clamp(min=0.0)  # evidence >= 0: no sentence yet reads 0
        return best, torch.where(has, value, torch.zeros_like(value))

    def _window_prefix(self, cum_e: torch.Tensor, cum_n: torch.Tensor, window: int) -> torch.Tensor:
        """The window rule of size ``window`` on every prefix (B, T): the largest full window's
        mean once there are ``window`` counted tokens, the mean of all of them before."""
        full = cum_n >= window
        means = self._trailing_means(cum_e, cum_n, window)
        best = torch.where(full, means, torch.full_like(means, -torch.inf)).cummax(-1).values
        return torch.where(full, best, mean_rho(cum_e, cum_n))

    @staticmethod
    def _trailing_means(cum_e: torch.Tensor, cum_n: torch.Tensor, window: int | torch.Tensor) -> torch.Tensor:
        """Mean evidence over the last ``window`` (an int, or (B, T) per position) counted
        tokens up to each position, or over all of them while fewer: (B, T)."""
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
