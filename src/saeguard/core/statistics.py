"""Streaming per-latent statistics: one pass per corpus, O(F) memory.

The reference implementation keeps every dense activation tensor; here each
batch is encoded, folded into float64 running sums and dropped, so peak memory
does not grow with the corpus. For SAELens ReLU, JumpReLU and TopK SAEs the
encode and the sums are fused (:class:`SaeEncoder`: reused blocks, no dense
activations), which keeps the pass within ~1.09x a bare forward truncated at the
default layer (docs/performance.md §1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from saeguard.core.sae import encode_all
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import TokenBatch, counted_mask, pad_batch, pad_token_id, special_token_ids
from saeguard.hf.layers import model_device, residual_at
from saeguard.io import write_bytes_atomic
from saeguard.progress import progress_bar

_TOKEN_CHUNK = 4096
_FUSED_ROWS = 256
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Which batches this process runs in a data-parallel fit: rank ``rank`` of ``count`` processes.

    Every process builds the same batches as a single process would; a shard only
    chooses which of them it runs, so the ranks together do exactly the
    single-process work (``saeguard.distributed`` sums and gathers the results).

    Raises:
        SaeguardError: ``rank`` outside ``0..count-1``.
    """

    rank: int
    count: int

    def __post_init__(self) -> None:
        require(
            0 <= self.rank < self.count, f"shard rank {self.rank} is outside 0..{self.count - 1}: fix RANK"
        )

    def take(self, batches: Iterable[T]) -> Iterator[T]:
        """Batches ``rank``, ``rank + count``, ...: for sums, where order does not matter (streams)."""
        return islice(batches, self.rank, None, self.count)

    def span(self, total: int, step: int) -> tuple[int, int]:
        """``[start, stop)``: this rank's contiguous block of ``total`` items, cut at multiples of ``step``.

        The blocks in rank order are items ``0..total`` in order, and each starts on a
        batch boundary (``step`` = batch size), so every batch is the single-process one.
        """
        batches = -(-total // step)
        first, last = batches * self.rank // self.count, batches * (self.rank + 1) // self.count
        return min(first * step, total), min(last * step, total)


@dataclass
class FeatureStatistics:
    """Running sums over counted tokens for every latent (docs/method.md §2.1).

    F is the SAE width ``d_sae``; the sums are float64 on the CPU. Counted tokens
    are real, non-special tokens (BOS/EOS/PAD and padding excluded by id and mask).
    """

    activation_sum: torch.Tensor  # (F,) float64
    squared_sum: torch.Tensor  # (F,) float64
    nonzero_count: torch.Tensor  # (F,) float64
    token_count: int
    sequence_count: int

    @classmethod
    def empty(cls, width: int) -> FeatureStatistics:
        """All-zero sums for ``width`` latents."""
        zeros = torch.zeros(width, dtype=torch.float64)
        return cls(zeros, zeros.clone(), zeros.clone(), 0, 0)

    @property
    def mean(self) -> torch.Tensor:
        """mu_j: mean activation per latent over counted tokens, (F,) float64."""
        return self.activation_sum / max(self.token_count, 1)

    @property
    def mean_square(self) -> torch.Tensor:
        """E[f_j^2] per latent over counted tokens, (F,) float64."""
        return self.squared_sum / max(self.token_count, 1)

    @property
    def frequency(self) -> torch.Tensor:
        """Fraction of counted tokens on which each latent fires."""
        return self.nonzero_count / max(self.token_count, 1)

    @property
    def mean_nonzero(self) -> torch.Tensor:
        """Mean activation over the tokens where the latent fires (0 if it never does)."""
        return self.activation_sum / self.nonzero_count.clamp(min=1)

    def update(self, activations: torch.Tensor) -> None:
        """Fold a (tokens, F) block of activations into the sums.

        Each block (at most a few thousand tokens) is summed in float32 and only the
        running totals are float64: converting the whole block to float64 cost as
        much as the SAE encode itself (docs/performance.md).
        """
        acts = activations.float()
        sums = torch.stack([acts.sum(0), acts.square().sum(0), (acts > 0).sum(0, dtype=acts.dtype)])
        self.add_sums(sums, int(acts.shape[0]))

    def add_sums(self, sums: torch.Tensor, tokens: int) -> None:
        """Add (3, F) per-latent sums of ``tokens`` tokens: activations, squares, firing counts."""
        totals = sums.double().cpu()
        self.activation_sum += totals[0]
        self.squared_sum += totals[1]
        self.nonzero_count += totals[2]
        self.token_count += tokens

    def save(self, path: Path) -> None:
        """Write the sums to ``path`` (safetensors, atomically)."""
        tensors = {
            "activation_sum": self.activation_sum,
            "squared_sum": self.squared_sum,
            "nonzero_count": self.nonzero_count,
            "counts": torch.tensor([self.token_count, self.sequence_count], dtype=torch.int64),
        }
        write_bytes_atomic(path, save_tensors(tensors))

    @classmethod
    def load(cls, path: Path) -> FeatureStatistics:
        """Read what :meth:`save` wrote.

        Raises:
            SaeguardError: the file is truncated, not safetensors, or lacks a field.
        """
        try:
            data = load_file(str(path))
            counts = data["counts"].tolist()
            stats = cls(data["activation_sum"], data["squared_sum"], data["nonzero_count"], *counts)
        except Exception as error:  # SafetensorError, KeyError, TypeError: all mean "not our file"
            raise SaeguardError(
                f"statistics cache {path} is unreadable ({type(error).__name__}): delete it"
            ) from None
        widths = {stats.activation_sum.shape, stats.squared_sum.shape, stats.nonzero_count.shape}
        require(len(widths) == 1, f"statistics cache {path} is inconsistent: delete it")
        return stats


@dataclass
class SaeEncoder:
    """The encoder of a SAELens ReLU, JumpReLU or TopK SAE, read out for the statistics pass.

    ``pre = (x - b_dec) @ W_enc + b_enc`` with the operations SAELens's ``encode`` uses, in
    blocks of 256 tokens whose (256, F) buffers are reused (fresh (tokens, F) tensors cost
    more in page faults than in arithmetic). A latent fires where ``pre > threshold`` (ReLU:
    0; JumpReLU: ``max(threshold, 0)``, which is where ``relu(pre) * (pre > threshold)`` > 0),
    or, for TopK, where it is among the ``k`` largest ``pre`` of its token and ``pre > 0``.
    The per-latent sums are matrix-vector products of the masked block, or for TopK an
    ``index_add`` of the k values, so nothing is written per token beyond the block of
    ``pre``; results equal :func:`~saeguard.core.sae.encode_all` + :meth:`FeatureStatistics.update`
    to float32 rounding (tests/core/test_statistics.py).
    """

    weight: torch.Tensor  # (d_in, F) W_enc
    bias: torch.Tensor  # (F,) b_enc
    input_bias: torch.Tensor | None  # (d_in,) b_dec when apply_b_dec_to_input, else None
    threshold: torch.Tensor | None  # (F,) JumpReLU: max(threshold, 0); None for ReLU and TopK
    k: int | None = None  # TopK's k
    _buffers: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def from_sae(cls, sae: Any) -> SaeEncoder | None:
        """The encoder of ``sae``, or None where its ``encode`` is not one this class reproduces.

        Reproduced: SAELens's ``StandardSAE``, ``JumpReLUSAE`` and ``TopKSAE`` (exact classes), float32,
        no hooks on their hook points, no run-time input normalisation or reshaping, and no
        ``rescale_acts_by_decoder_norm``. Anything else uses SAELens's own ``encode``.
        """
        try:
            from sae_lens import JumpReLUSAE, StandardSAE, TopKSAE
        except ImportError:
            return None
        kind = type(sae)
        cfg = getattr(sae, "cfg", None)
        if kind not in (StandardSAE, JumpReLUSAE, TopKSAE) or cfg is None:
            return None
        if sae.W_enc.dtype != torch.float32 or any(
            m._forward_hooks or m._forward_pre_hooks for m in sae.modules()
        ):
            return None
        if getattr(cfg, "normalize_activations", "none") not in ("none", "expected_average_only_in"):
            return None  # "expected_average_only_in" is the identity at inference in SAELens
        if getattr(cfg, "reshape_activations", "none") != "none":
            return None
        activation = sae.activation_fn
        if kind is TopKSAE:
            if getattr(cfg, "rescale_acts_by_decoder_norm", False) or getattr(
                activation, "use_sparse_activations", False
            ):
                return None
            k = getattr(activation, "k", None)
            if not isinstance(k, int):
                return None
        elif not isinstance(activation, torch.nn.ReLU):
            return None
        else:
            k = None
        weight, bias = sae.W_enc.detach(), sae.b_enc.detach()
        input_bias = sae.b_dec.detach() if bool(getattr(cfg, "apply_b_dec_to_input", True)) else None
        threshold = sae.threshold.detach().clamp(min=0) if kind is JumpReLUSAE else None
        return cls(weight, bias, input_bias, threshold, k)

    @property
    def width(self) -> int:
        """F: the SAE's number of latents (``d_sae``)."""
        return int(self.weight.shape[1])

    def sums(self, tokens: torch.Tensor) -> torch.Tensor:
        """(3, F) float64 sums over ``tokens`` (n, d_in): activations, squares, firing counts.

        Returned on ``tokens``' device.
        """
        device = tokens.device
        totals = torch.zeros(3, self.width, dtype=torch.float64, device=device)
        pre_buffer, mask_buffer, ones = self._blocks(device)
        for start in range(0, tokens.shape[0], _FUSED_ROWS):
            x = tokens[start : start + _FUSED_ROWS].to(self.weight.dtype)
            if self.input_bias is not None:
                x = x - self.input_bias
            rows = int(x.shape[0])
            pre = pre_buffer[:rows]
            torch.mm(x, self.weight, out=pre)
            pre.add_(self.bias)  # SAELens: sae_in @ W_enc + b_enc, the same two roundings
            if self.k is not None:
                self._add_topk(totals, pre)
                continue
            mask, weights = mask_buffer[:rows], ones[:, :rows]
            torch.gt(pre, 0.0 if self.threshold is None else self.threshold, out=mask)
            pre.mul_(mask)  # the activations: pre where the latent fires, else 0
            totals[0] += torch.mm(weights, pre)[0]
            totals[2] += torch.mm(weights, mask)[0]
            totals[1] += torch.mm(weights, pre.mul_(pre))[0]
        return totals

    def _add_topk(self, totals: torch.Tensor, pre: torch.Tensor) -> None:
        assert self.k is not None
        values, index = torch.topk(pre, self.k, dim=-1, sorted=False)  # SAELens's TopK, then relu
        acts = values.relu().reshape(-1).double()
        index = index.reshape(-1)
        totals[0].index_add_(0, index, acts)
        totals[1].index_add_(0, index, acts * acts)
        totals[2].index_add_(0, index, (acts > 0).double())

    def _blocks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(256, F) buffers for pre-activations and the firing mask, and a (1, 256) row of ones."""
        if device not in self._buffers:
            dtype = self.weight.dtype
            pre = torch.empty(_FUSED_ROWS, self.width, dtype=dtype, device=device)
            ones = torch.ones(1, _FUSED_ROWS, dtype=dtype, device=device)
            self._buffers[device] = (pre, torch.empty_like(pre), ones)
        return self._buffers[device]


def fold_tokens(stats: FeatureStatistics, sae: Any, encoder: SaeEncoder | None, tokens: torch.Tensor) -> None:
    """Add the latent activations of ``tokens`` (n, d_in) to ``stats``.

    Through ``encoder`` (:meth:`SaeEncoder.from_sae`) when there is one, else SAELens's
    ``encode`` in blocks of at most 4,096 tokens.
    """
    if encoder is not None:
        stats.add_sums(encoder.sums(tokens), int(tokens.shape[0]))
        return
    for start in range(0, tokens.shape[0], _TOKEN_CHUNK):
        stats.update(encode_all(sae, tokens[start : start + _TOKEN_CHUNK]))


def _finite(tokens: torch.Tensor) -> bool:
    """Whether every value of ``tokens`` is finite: one min/max reduction (NaN propagates), no mask."""
    if tokens.numel() == 0:
        return True
    low, high = torch.aminmax(tokens)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def batched(items: Iterable[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    """Groups of ``batch_size`` token-id lists; the last group may be shorter."""
    batch: list[list[int]] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def token_batches(sequences: Iterable[list[int]], tokenizer, batch_size: int) -> Iterator[TokenBatch]:
    """Right-padded batches with the mask of tokens statistics count."""
    special = special_token_ids(tokenizer)
    pad = pad_token_id(tokenizer)
    for group in batched(sequences, batch_size):
        ids, mask = pad_batch(group, pad)
        yield TokenBatch(ids, mask, counted_mask(ids, mask, special))


@torch.no_grad()
def collect_statistics(
    model: torch.nn.Module,
    sae,
    layer: int,
    batches: Iterable[TokenBatch],
    *,
    description: str = "statistics",
    total: int | None = None,
    show_progress: bool = True,
    allow_empty: bool = False,
    fused: bool = True,
) -> FeatureStatistics:
    """Mean, mean square and firing frequency of every latent over counted tokens.

    Runs ``model`` only up to block ``layer`` and encodes the counted tokens'
    residuals with the full ``sae`` (:class:`SaeEncoder` for SAELens ReLU, JumpReLU and
    TopK SAEs, else SAELens's ``encode`` in chunks of at most 4,096 tokens); nothing
    dense is kept (docs/method.md §2.1, docs/performance.md §1). ``allow_empty``: a
    shard of a data-parallel fit may hold no counted token (the check then runs on the
    summed statistics). ``fused=False`` always uses SAELens's ``encode`` (the reference
    the bench compares with).

    Raises:
        SaeguardError: non-finite activations at ``layer``, or no counted token at all.
    """
    stats = FeatureStatistics.empty(int(sae.cfg.d_sae))
    device = model_device(model)
    encoder = SaeEncoder.from_sae(sae) if fused else None
    with progress_bar(description, total=total, unit="chunks", enabled=show_progress) as advance:
        for batch in batches:
            hidden = residual_at(model, layer, batch.input_ids.to(device), batch.attention_mask.to(device))
            tokens = hidden[batch.counted.to(device)]
            if not _finite(tokens):
                raise SaeguardError(
                    f"non-finite (NaN/inf) activations at layer {layer}: load the model in "
                    "float32 or check its weights"
                )
            fold_tokens(stats, sae, encoder, tokens)
            stats.sequence_count += int(batch.input_ids.shape[0])
            advance(int(batch.input_ids.shape[0]))
    require(
        allow_empty or stats.token_count > 0,
        f"{description}: the corpus has no document with at least 2 tokens: give it real text",
    )
    return stats
