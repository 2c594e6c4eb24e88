"""Random SAEs, a planted forget latent, question items and a guard built without a fit.

:func:`plant_forget_direction` makes one latent of a random SAE read a private
embedding direction of the forget words, so a fit on tiny corpora selects it and
the gate separates forget from retain text deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from saeguard.config import FitConfig
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import SelectedLatents
from saeguard.eval.items import McqItem
from saeguard.testing.models import FORGET_WORDS, RETAIN_WORDS, make_tokenizer


def random_sae(architecture: str, d_in: int = 32, d_sae: int = 64, seed: int = 0) -> Any:
    """A random SAELens SAE (``standard``, ``jumprelu`` or ``topk`` with k=8) whose latents fire often.

    Raises:
        ValueError: an unknown ``architecture`` (a programming error in a test).
    """
    generator = torch.Generator().manual_seed(seed)
    if architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    elif architecture == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    elif architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8))
    else:
        raise ValueError(architecture)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) * 4.0)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=generator) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.1 - 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.05)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=generator) * 0.2)
    return sae


PLANTED_LATENT = 37
"""The latent :func:`plant_forget_direction` makes read the forget words by default."""


def plant_forget_direction(
    model: Any, sae: Any, latent: int = PLANTED_LATENT, strength: float = 3.0, seed: int = 5
) -> tuple[Any, Any]:
    """Give forget words a private embedding direction u and make ``latent`` read it (in place).

    Other latents are made blind to u, so the planted latent fires on forget
    tokens only and dominates TopK selection there. Returns ``(model, sae)``.
    """
    generator = torch.Generator().manual_seed(seed)
    width = sae.W_enc.shape[0]
    u = torch.randn(width, generator=generator)
    u /= u.norm()
    tokenizer = make_tokenizer()
    forget_ids = tokenizer.convert_tokens_to_ids(FORGET_WORDS)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings -= (embeddings @ u).unsqueeze(1) * u
        embeddings[forget_ids] += strength * u
        sae.W_enc -= u.unsqueeze(1) * (u @ sae.W_enc).unsqueeze(0)
        sae.W_enc[:, latent] = 10.0 * u
        sae.b_enc[latent] = -10.0
        if hasattr(sae, "threshold"):
            sae.threshold[latent] = 0.0
    return model, sae


def make_items(n: int = 6, seed: int = 0) -> list[McqItem]:
    """Questions made of forget or retain words, options of 1-3 words."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(n):
        pool = FORGET_WORDS if index % 2 == 0 else RETAIN_WORDS
        words = [pool[int(i)] for i in torch.randint(len(pool), (5,), generator=generator)]
        choices = tuple(
            " ".join(pool[int(i)] for i in torch.randint(len(pool), (1 + k % 3,), generator=generator))
            for k in range(4)
        )
        subject = "biology" if index % 2 == 0 else "history"
        items.append(McqItem(f"what is the {' '.join(words)}", choices, index % 4, subject, f"q{index}"))
    return items


def make_guard(
    model: Any,
    tokenizer: Any,
    *,
    layer: int = 0,
    ids: Sequence[int] = (0, 1, 2, 3),
    tau: float = 0.5,
    clamp_value: float = 50.0,
    seed: int = 0,
) -> Guardrail:
    """A guardrail built directly (no fit) on latents ``ids`` of a random standard SAE (32 -> 16, b_dec 0).

    ``model`` is not read (the SAE's width is the tiny models' 32); ``tokenizer`` gives the special ids.
    """
    sae = random_sae("standard", d_in=32, d_sae=16, seed=seed)
    with torch.no_grad():
        sae.b_dec.zero_()
    return Guardrail(
        latents=SelectedLatents.from_sae(sae, list(ids)),
        layer=layer,
        tau=tau,
        clamp_value=clamp_value,
        config=FitConfig(),
        special_ids=sorted(tokenizer.all_special_ids),
    )


SENTENCE_END_WORDS = ("a", "and", "is")  # the tiny vocabulary has no punctuation: these end sentences


def sentence_guard(tau: float = 0.55) -> tuple[Any, Any, Guardrail, Guardrail]:
    """A sentence-rule guard fitted on a tiny llama with a planted forget latent (layer 1, window 8/4).

    Returns ``(tokenizer, model, fitted, guard)``: ``fitted`` as the fit left it (no end ids: the
    tiny vocabulary has no punctuation; tau 0, retain evidence being 0), ``guard`` the same with
    :data:`SENTENCE_END_WORDS` as sentence ends and ``tau`` set between the test prompts' rho, so
    the gate decides both ways and end ids change decisions.
    """
    from dataclasses import replace

    from saeguard.testing.models import corpus, tiny_llama

    tokenizer = make_tokenizer()
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    fitted = Guardrail.fit(
        model,
        tokenizer,
        sae,
        forget=corpus(FORGET_WORDS, 16, 40, 1),
        retain=corpus(RETAIN_WORDS, 16, 40, 2),
        layer=1,
        n_features=1,
        ratio_percentile=90,
        seq_len=32,
        gate_percentile=90,
        gate_rule="sentence",
        window_tokens=8,
        min_window_tokens=4,
        calibration_long_tokens=64,
        show_progress=False,
    )
    ends = tuple(sorted(tokenizer.vocab[word] for word in SENTENCE_END_WORDS))
    return tokenizer, model, fitted, replace(fitted, sentence_end_ids=ends, tau=tau)
