"""What each selected latent is: its selection numbers, where it fires, and what it writes.

Three sources, all for the guard's N selected latents (paper §3.2):

* the guard's provenance (:class:`~saeguard.core.provenance.SelectionRecord`): Fisher
  importances on forget and retain text, their ratio, firing frequencies and the mean
  forget activation where the latent fires, exactly as the fit measured them;
* one streaming pass over forget or retain text (:func:`scan_latents`): per latent a
  bounded min-heap of its top-k activating tokens with their context windows, and a
  reservoir sample of its non-zero activations for a histogram, so memory stays
  O(N * (k * window + sample)) whatever the corpus size;
* the decoder direction read through the unembedding (:func:`decoder_logits`):
  ``W_dec[j] @ lm_head.weight.T`` ranks the output tokens latent j promotes and suppresses
  when it is active (the "logit lens" of SAE latents, as Neuronpedia shows them).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from saeguard.core.statistics import token_batches
from saeguard.errors import require
from saeguard.hf.corpus import iter_chunks
from saeguard.hf.layers import model_device, residual_at

if TYPE_CHECKING:
    from saeguard.core.fit import FitResult
    from saeguard.core.provenance import SaeRecord

#: A latent's page on Neuronpedia: the SAELens release's ``neuronpedia`` id (pretrained_saes.yaml,
#: e.g. ``gemma-2-2b/3-gemmascope-res-16k`` for gemma-scope-2b-pt-res-canonical
#: ``layer_3/width_16k/canonical``), then the latent index.
NEURONPEDIA_URL = "https://www.neuronpedia.org/{neuronpedia_id}/{latent}"


@dataclass
class Context:
    """One top-activating token of a latent and the tokens around it.

    ``tokens`` is the window (each token decoded on its own), ``activations`` the latent's
    activation on each of them (float, SAE units), ``mark`` the window index of the token
    itself; ``chunk`` and ``position`` say where the scan met it (chunk index, token index).
    """

    activation: float
    chunk: int
    position: int
    tokens: list[str]
    activations: list[float]
    mark: int


@dataclass
class LatentScan:
    """One latent on one corpus: top contexts (highest activation first) and firing numbers."""

    contexts: list[Context]
    sample: list[float]  # a uniform sample (reservoir) of the activations where it fires
    fired: int  # counted tokens where it fires
    tokens: int  # counted tokens scanned
    activation_sum: float  # sum of its activation over those tokens

    @property
    def frequency(self) -> float:
        """Share of counted tokens where the latent fires."""
        return self.fired / self.tokens if self.tokens else 0.0

    @property
    def mean_nonzero(self) -> float:
        """Mean activation where the latent fires (0.0 if it never does)."""
        return self.activation_sum / self.fired if self.fired else 0.0


@dataclass
class ScanConfig:
    """How much text one scan reads and how much it keeps per latent."""

    top_k: int = 8  # contexts kept per latent
    before: int = 12  # tokens shown before the top token
    after: int = 4  # and after it
    seq_len: int = 128
    max_chunks: int = 64
    batch_size: int = 8
    sample_size: int = 4096  # activations kept per latent for the histogram
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "seq_len", "max_chunks", "batch_size", "sample_size"):
            require(int(getattr(self, name)) >= 1, f"ScanConfig.{name} must be at least 1")
        require(self.before >= 0 and self.after >= 0, "ScanConfig.before and .after must be >= 0")


class _Reservoir:
    """A uniform sample of at most ``size`` values from a stream (Vitter's algorithm R)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.values = np.empty(size, dtype=np.float64)
        self.seen = 0
        self.rng = rng

    def add(self, new: np.ndarray) -> None:
        size = self.values.size
        room = max(0, min(size - self.seen, new.size))
        self.values[self.seen : self.seen + room] = new[:room]
        rest = new[room:]
        if rest.size:
            index = self.seen + room + np.arange(rest.size)  # 0-based index of each value in the stream
            draws = self.rng.integers(0, index + 1)
            for slot, value in zip(draws[draws < size], rest[draws < size], strict=True):
                self.values[slot] = value  # in stream order, so a later value replaces an earlier one
        self.seen += new.size

    def sample(self) -> list[float]:
        return [float(v) for v in self.values[: min(self.seen, self.values.size)]]


@dataclass
class _LatentState:
    heap: list[tuple[float, int, int, Context]] = field(default_factory=list)
    fired: int = 0
    activation_sum: float = 0.0


@torch.no_grad()
def scan_latents(
    model: nn.Module,
    tokenizer: Any,
    guard: FitResult,
    documents: Sequence[str],
    config: ScanConfig | None = None,
) -> list[LatentScan]:
    """Top-activating contexts and activation samples of each selected latent, in one pass.

    Documents are cut into ``seq_len``-token chunks (``hf.corpus.iter_chunks``, at most
    ``max_chunks``); the model runs up to the guard's layer only; only counted tokens (real,
    non-special) are read. A latent's contexts are its ``top_k`` highest activations over
    every counted token where it fires; ties go to the earlier chunk, then the earlier
    position (so the ranking equals sorting all activations by (-activation, chunk, position)).

    Returns:
        One :class:`LatentScan` per selected latent, in the guard's selection order.

    Raises:
        SaeguardError: the documents hold no chunk with a counted token.
    """
    config = config or ScanConfig()
    device = model_device(model)
    latents = guard.latents.to(device)
    count = int(latents.ids.numel())
    rng = np.random.default_rng(config.seed)
    states = [_LatentState() for _ in range(count)]
    reservoirs = [_Reservoir(config.sample_size, rng) for _ in range(count)]
    chunks = list(iter_chunks(list(documents), tokenizer, config.seq_len, max_chunks=config.max_chunks))
    tokens = 0
    start = 0
    for batch in token_batches(chunks, tokenizer, config.batch_size):
        hidden = residual_at(model, guard.layer, batch.input_ids.to(device), batch.attention_mask.to(device))
        counted = batch.counted.to(device)
        acts = (latents.activations(hidden) * counted.unsqueeze(-1)).float().cpu()  # (B, T, N)
        tokens += int(counted.sum())
        for j in range(count):
            _update(states[j], reservoirs[j], acts[..., j], start, batch.input_ids, tokenizer, config)
        start += int(batch.input_ids.shape[0])
    require(tokens > 0, "no text to scan: give documents with at least 2 tokens")
    return [
        LatentScan(
            contexts=[entry[3] for entry in sorted(state.heap, reverse=True)],
            sample=reservoir.sample(),
            fired=state.fired,
            tokens=tokens,
            activation_sum=state.activation_sum,
        )
        for state, reservoir in zip(states, reservoirs, strict=True)
    ]


def _update(
    state: _LatentState,
    reservoir: _Reservoir,
    acts: torch.Tensor,
    first_chunk: int,
    input_ids: torch.Tensor,
    tokenizer: Any,
    config: ScanConfig,
) -> None:
    """Fold one batch's (B, T) activations of one latent into its heap, counts and sample."""
    positive = acts > 0
    fired = int(positive.sum())
    if not fired:
        return
    state.fired += fired
    state.activation_sum += float(acts[positive].double().sum())
    reservoir.add(acts[positive].double().numpy())
    # Candidates: every firing token at or above the batch's k-th largest activation (ties included).
    kth = float(torch.topk(acts.flatten(), min(config.top_k, fired)).values[-1])
    for row, position in (positive & (acts >= kth)).nonzero().tolist():
        value = float(acts[row, position])
        key = (value, -(first_chunk + row), -position)
        if len(state.heap) == config.top_k and key <= state.heap[0][:3]:
            continue
        context = _context(value, first_chunk + row, position, acts[row], input_ids[row], tokenizer, config)
        entry = (*key, context)
        if len(state.heap) < config.top_k:
            heapq.heappush(state.heap, entry)
        else:
            heapq.heapreplace(state.heap, entry)


def _context(
    value: float,
    chunk: int,
    position: int,
    acts: torch.Tensor,
    ids: torch.Tensor,
    tokenizer: Any,
    config: ScanConfig,
) -> Context:
    low = max(0, position - config.before)
    high = min(int(ids.shape[0]), position + config.after + 1)
    window = [int(i) for i in ids[low:high]]
    return Context(
        activation=value,
        chunk=chunk,
        position=position,
        tokens=[tokenizer.decode([i]) for i in window],
        activations=[float(a) for a in acts[low:high]],
        mark=position - low,
    )


@dataclass
class TokenScore:
    """An output token and its logit contribution per unit of the latent's activation."""

    token: str
    token_id: int
    score: float


@torch.no_grad()
def decoder_logits(
    model: nn.Module, tokenizer: Any, guard: FitResult, top: int = 10
) -> list[tuple[list[TokenScore], list[TokenScore]]]:
    """Per selected latent: the ``top`` output tokens its decoder row promotes and suppresses.

    Scores are ``W_dec[j] @ W_U.T`` with ``W_U = model.get_output_embeddings().weight``
    (V, d); the final norm is not folded in, so scores rank tokens within a latent but are
    not calibrated logits. Promoted: highest first; suppressed: lowest first.

    Raises:
        SaeguardError: the model has no output embeddings, or their width is not the SAE's d_in.
    """
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    weight = getattr(head, "weight", None)
    require(
        isinstance(weight, torch.Tensor), "the model has no output embeddings (lm_head): cannot rank tokens"
    )
    assert isinstance(weight, torch.Tensor)
    decoder = guard.latents.decoder.float()
    require(
        weight.shape[-1] == decoder.shape[-1],
        f"lm_head width {weight.shape[-1]} differs from the SAE's d_in {decoder.shape[-1]}: "
        "use the model the guard was fitted on",
    )
    scores = decoder.to(weight.device) @ weight.float().T  # (N, V)
    k = min(top, int(scores.shape[-1]))
    out = []
    for row in scores.cpu():
        high, low = torch.topk(row, k), torch.topk(row, k, largest=False)
        out.append(
            (
                [
                    TokenScore(tokenizer.decode([int(i)]), int(i), float(v))
                    for v, i in zip(*high, strict=True)
                ],
                [TokenScore(tokenizer.decode([int(i)]), int(i), float(v)) for v, i in zip(*low, strict=True)],
            )
        )
    return out


def neuronpedia_url(sae: SaeRecord | None, latent: int) -> str | None:
    """The latent's Neuronpedia page when the SAE is a SAELens release Neuronpedia hosts, else None.

    The Neuronpedia id comes from SAELens's own ``pretrained_saes.yaml`` (installed with
    sae-lens, read offline); the URL follows :data:`NEURONPEDIA_URL`.
    """
    if sae is None or sae.kind != "pretrained" or not sae.release or not sae.sae_id:
        return None
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory().get(sae.release)
    neuronpedia_id = lookup.neuronpedia_id.get(sae.sae_id) if lookup is not None else None
    if not neuronpedia_id:
        return None
    return NEURONPEDIA_URL.format(neuronpedia_id=neuronpedia_id, latent=int(latent))
