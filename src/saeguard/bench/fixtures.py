"""What the benchmark runs on: a model, its tokenizer, text, and one SAE per architecture.

Speed does not depend on what an SAE has learned, only on its width and how
many latents fire, so random SAELens SAEs are calibrated on real residuals to
fire on ~``firing_rate`` of tokens; a trained default SAE is used for the
selection-quality figures when one is cached. ``tiny`` builds everything from
configs in a second (tests, smoke runs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saeguard.config import DEFAULT_LAYER, FitConfig
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import SelectedLatents, load_sae
from saeguard.core.selection import select_features
from saeguard.core.statistics import collect_statistics, token_batches
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import iter_chunks, special_token_ids
from saeguard.hf.layers import hidden_size, residual_at

ARCHITECTURES = ("standard", "jumprelu", "topk")
_TINY_FORGET = ["cell", "virus", "gene", "protein", "enzyme", "bacteria", "dna", "rna", "membrane", "tissue"]
_TINY_RETAIN = ["river", "mountain", "castle", "king", "poem", "novel", "city", "ocean", "trade", "empire"]
_TINY_COMMON = [
    "the",
    "a",
    "of",
    "and",
    "is",
    "in",
    "to",
    "what",
    "which",
    "are",
    "about",
    "this",
    "that",
    "it",
    "was",
]
_TINY_SPECIAL = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"]
_TINY_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


@dataclass
class Subject:
    """The model under test and everything built around it."""

    model: nn.Module
    tokenizer: Any
    name: str
    layer: int
    forget: list[str]
    retain: list[str]
    saes: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, list[int]] = field(default_factory=dict)
    sae_source: dict[str, str] = field(default_factory=dict)
    firing_rate: dict[str, float] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def chunks(self, docs: list[str], seq_len: int, count: int) -> list[list[int]]:
        """``count`` full chunks of exactly ``seq_len`` tokens, tokenising only what is needed."""
        stream = (doc for _ in range(10_000) for doc in docs)  # recycled if the corpus is short
        out = list(iter_chunks(stream, self.tokenizer, seq_len, max_chunks=count))
        require(len(out) == count, f"corpus too small for {count} chunks of {seq_len} tokens: use fewer")
        return out

    def ids(self, seq_len: int, batch: int, *, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A (batch, seq_len) block of real retain text with its attention mask."""
        rows = self.chunks(self.retain, seq_len, batch + offset)[offset:]
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        return ids, torch.ones_like(ids)

    def guard(self, arch: str, *, tau: float = 0.0, clamp_value: float = 500.0) -> Guardrail:
        """A guard on the selected latents of ``arch``'s SAE, built without a fit."""
        latents = SelectedLatents.from_sae(self.saes[arch], self.selected[arch])
        return Guardrail(
            latents=latents,
            layer=self.layer,
            tau=tau,
            clamp_value=clamp_value,
            config=FitConfig(layer=self.layer, n_features=len(self.selected[arch])),
            special_ids=sorted(special_token_ids(self.tokenizer)),
        )


# -- tiny ---------------------------------------------------------------------------------
def tiny_tokenizer():
    """A word-level tokenizer over the tiny vocabulary, with specials and a chat template."""
    from saeguard.testing import fast_tokenizer, word_level

    words = _TINY_SPECIAL + ["user", "assistant", "system", "answer:", "(", "A", "B", "C", "D"]
    words += _TINY_FORGET + _TINY_RETAIN + _TINY_COMMON + ["<unk>"]
    return fast_tokenizer(word_level(words), ["<|im_start|>", "<|im_end|>"], _TINY_TEMPLATE)


def tiny_model(vocab_size: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """A random 4-block Llama (hidden size 64) in eval mode."""
    from saeguard.testing import tiny_llama

    model = tiny_llama(seed, vocab_size, hidden_size=64, layers=4, max_positions=2048)
    return model.to(dtype).eval()  # type: ignore[arg-type]  # transformers' wrapped .to() stub wants a model


def tiny_docs(words: list[str], count: int, length: int, seed: int) -> list[str]:
    """``count`` documents of ``length`` words drawn from ``words`` and common words."""
    rng = random.Random(seed)
    pool = words + _TINY_COMMON
    return [" ".join(rng.choice(pool) for _ in range(length)) for _ in range(count)]


def tiny_mcq(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` four-choice items over the tiny vocabulary (for the evaluation section)."""
    rng = random.Random(seed)
    return [
        {
            "id": f"tiny-{i}",
            "question": " ".join(rng.choice(_TINY_FORGET + _TINY_COMMON) for _ in range(12)),
            "choices": rng.sample(_TINY_FORGET + _TINY_RETAIN, 4),
            "answer": rng.randrange(4),
        }
        for i in range(count)
    ]


# -- SAEs ---------------------------------------------------------------------------------
def random_sae(arch: str, sample: torch.Tensor, d_sae: int, *, k: int, rate: float, seed: int):
    """A SAELens SAE with random unit directions, biased so each latent fires on ~``rate`` of tokens.

    The threshold of latent j is the (1-rate) quantile of its pre-activation on ``sample``.
    """
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    require(arch in ARCHITECTURES, f"unknown SAE architecture {arch!r}: use {', '.join(ARCHITECTURES)}")
    d_in = int(sample.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(d_in, d_sae, generator=generator)
    directions /= directions.norm(dim=0, keepdim=True)
    centre = sample.float().mean(0)
    pre = (sample.float() - centre) @ directions
    rank = max(1, min(pre.shape[0], int(round((1.0 - rate) * pre.shape[0]))))
    cut = pre.kthvalue(rank, dim=0).values
    if arch == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        sae.W_enc.copy_(directions)
        sae.W_dec.copy_(directions.T)
        sae.b_dec.copy_(centre)
        sae.b_enc.copy_(-cut if arch == "standard" else torch.zeros(d_sae))
        if arch == "jumprelu":
            sae.threshold.copy_(cut.clamp(min=1e-3))
    return sae.eval()


def trained_default_sae(layer: int) -> Path | None:
    """The default SAE's folder for ``layer`` when it is shipped or cached, else None (never trains)."""
    try:
        from saeguard.defaults import default_sae_dir
    except ImportError:
        return None
    path = default_sae_dir(layer)
    return path if (path / "cfg.json").is_file() else None


def default_layer() -> int:
    """The default hook layer (``config.DEFAULT_LAYER``: 6, the default SAE's block)."""
    return int(DEFAULT_LAYER)


def load_subject(
    model_name: str,
    *,
    layer: int | None = None,
    d_sae: int | None = None,
    k: int = 32,
    n_features: int = 20,
    firing_rate: float = 0.03,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    with_saes: bool = True,
) -> Subject:
    """The default model (or ``tiny``), its corpora and calibrated SAEs."""
    if model_name == "tiny":
        tokenizer = tiny_tokenizer()
        model = tiny_model(len(tokenizer), dtype, seed)
        forget = tiny_docs(_TINY_FORGET, 600, 60, seed + 1)
        retain = tiny_docs(_TINY_RETAIN, 600, 60, seed + 2)
        layer = 1 if layer is None else layer
        d_sae = d_sae or 256
        k = min(k, 8)
    else:
        from saeguard.data.corpora import load_corpus
        from saeguard.hf.models import load_model

        model, tokenizer = load_model(model_name, dtype=dtype)
        forget = load_corpus("wiki:biology", "train")
        retain = load_corpus("wiki:not-biology", "train")
        layer = default_layer() if layer is None else layer
        d_sae = d_sae or 4096
    model.to(device).eval()
    subject = Subject(model, tokenizer, model_name, layer, forget, retain)
    if with_saes:
        attach_saes(subject, d_sae=d_sae, k=k, n_features=n_features, rate=firing_rate, seed=seed)
    return subject


@torch.no_grad()
def attach_saes(
    subject: Subject,
    *,
    d_sae: int,
    k: int,
    n_features: int,
    rate: float,
    seed: int,
    archs: tuple[str, ...] = ARCHITECTURES,
    select: bool = True,
) -> None:
    """Random calibrated SAEs per architecture (plus ``trained``: the cached default SAE, if
    any) and, with ``select``, a selection for each."""
    ids, mask = subject.ids(128, 8)
    sample = residual_at(subject.model, subject.layer, ids, mask)[:, 1:].reshape(
        -1, hidden_size(subject.model)
    )
    trained = trained_default_sae(subject.layer) if subject.name == "default" else None
    forget_batches = list(token_batches(subject.chunks(subject.forget, 128, 8), subject.tokenizer, 8))
    retain_batches = list(token_batches(subject.chunks(subject.retain, 128, 8), subject.tokenizer, 8))
    keys = archs + (("trained",) if trained is not None and select else ())
    for arch in keys:
        if arch == "trained":
            sae = load_sae(trained)
            subject.sae_source[arch] = f"{trained} ({sae.cfg.architecture()})"
        else:
            sae = random_sae(arch, sample, d_sae, k=k, rate=rate, seed=seed)
            subject.sae_source[arch] = f"random (calibrated to fire on ~{rate:.0%} of tokens)"
        sae = sae.to(subject.device)
        subject.saes[arch] = sae
        if not select:
            continue
        stats = [
            collect_statistics(subject.model, sae, subject.layer, b, show_progress=False)
            for b in (forget_batches, retain_batches)
        ]
        subject.firing_rate[arch] = float(stats[1].frequency.mean())
        try:
            chosen = select_features(stats[0], stats[1], n_features=n_features, ratio_percentile=90.0)
            subject.selected[arch] = chosen.latent_ids
        except SaeguardError:  # too few candidates in a tiny SAE: the most active latents
            subject.selected[arch] = stats[0].mean.argsort(descending=True)[:n_features].tolist()
