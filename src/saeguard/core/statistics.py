"""Streaming per-latent statistics: one pass per corpus, O(F) memory.

The reference implementation keeps every dense activation tensor; here each
batch is encoded, folded into float64 running sums and dropped, so peak memory
does not grow with the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

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
        self.activation_sum += acts.sum(0).double().cpu()
        self.squared_sum += acts.square().sum(0).double().cpu()
        self.nonzero_count += (acts > 0).sum(0).double().cpu()
        self.token_count += int(acts.shape[0])

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
) -> FeatureStatistics:
    """Mean, mean square and firing frequency of every latent over counted tokens.

    Runs ``model`` only up to block ``layer`` and encodes the counted tokens'
    residuals with the full ``sae`` in chunks of at most 4,096 tokens; nothing
    dense is kept (docs/method.md §2.1). ``allow_empty``: a shard of a data-parallel
    fit may hold no counted token (the check then runs on the summed statistics).

    Raises:
        SaeguardError: non-finite activations at ``layer``, or no counted token at all.
    """
    stats = FeatureStatistics.empty(int(sae.cfg.d_sae))
    device = model_device(model)
    with progress_bar(description, total=total, unit="chunks", enabled=show_progress) as advance:
        for batch in batches:
            hidden = residual_at(model, layer, batch.input_ids.to(device), batch.attention_mask.to(device))
            tokens = hidden[batch.counted.to(device)]
            if not bool(torch.isfinite(tokens).all()):
                raise SaeguardError(
                    f"non-finite (NaN/inf) activations at layer {layer}: load the model in "
                    "float32 or check its weights"
                )
            for start in range(0, tokens.shape[0], _TOKEN_CHUNK):
                stats.update(encode_all(sae, tokens[start : start + _TOKEN_CHUNK]))
            stats.sequence_count += int(batch.input_ids.shape[0])
            advance(int(batch.input_ids.shape[0]))
    require(
        allow_empty or stats.token_count > 0,
        f"{description}: the corpus has no document with at least 2 tokens: give it real text",
    )
    return stats
