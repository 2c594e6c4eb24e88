"""The embedded default: SmolLM2-135M-Instruct, its SAE, and the demo's corpora.

The default hook layer was chosen by measurement (docs/default-sae.md): on SmolLM2 the
biology latents of a block-6 SAE separate held-out biology from other text far better
(gate TPR at 5% FPR 0.90 vs 0.60 at block 3, the paper's layer for gemma-2-2b).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

from saeguard.config import DEFAULT_LAYER
from saeguard.io import cache_dir

if TYPE_CHECKING:  # sae_training imports SAELens (seconds); the CLI reads this module at start-up
    from saeguard.sae_training import SAETrainingConfig

DEFAULT_SAE = "default"
"""The name that means the embedded default SAE (``--sae default``, ``resolve_sae("default")``)."""
DEFAULT_WIDTH = 4096
DEFAULT_K = 32
DEFAULT_TOKENS = 800_000
SAE_TRAINING_MIX = ("wiki", "wordnet", "austen", "cwe")


def default_sae_config(layer: int = DEFAULT_LAYER, width: int = DEFAULT_WIDTH) -> SAETrainingConfig:
    """How the default SAE is trained: BatchTopK, k 32, 800k tokens of the general mix."""
    from saeguard.sae_training import SAETrainingConfig

    return SAETrainingConfig(layer=layer, width=width, k=DEFAULT_K, tokens=DEFAULT_TOKENS)


SHIPPED_SAE = Path(__file__).parent / "resources" / "default_sae"
"""The default SAE as trained by ``saeguard train-sae`` (fp16 SAELens folder; docs/default-sae.md)."""


def shipped_sae_dir(
    layer: int = DEFAULT_LAYER, width: int = DEFAULT_WIDTH, k: int = DEFAULT_K
) -> Path | None:
    """The SAE shipped inside the package for these settings, if there is one."""
    folder = SHIPPED_SAE / f"layer{layer}-w{width}-k{k}"
    complete = (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    return folder if complete else None


#: Environment variable: a folder of default SAEs (``layer{L}-w{W}-k{K}/``) used instead of the
#: shipped ones and the cache, e.g. your own retrained default, or a test's stand-in.
DEFAULT_SAES_ENV = "SAEGUARD_DEFAULT_SAES"


def default_sae_dir(layer: int = DEFAULT_LAYER, width: int = DEFAULT_WIDTH, k: int = DEFAULT_K) -> Path:
    """Folder of the default SAE (SAELens layout; may be absent).

    ``$SAEGUARD_DEFAULT_SAES/layer{L}-w{W}-k{K}`` when that variable is set, else the shipped
    one, else the user cache (where :func:`ensure_default_sae` trains it).
    """
    override = os.environ.get(DEFAULT_SAES_ENV)
    if override:
        return Path(override).expanduser() / f"layer{layer}-w{width}-k{k}"
    shipped = shipped_sae_dir(layer, width, k)
    if shipped is not None:
        return shipped
    return trained_sae_dir(layer, width, k)


def trained_sae_dir(layer: int = DEFAULT_LAYER, width: int = DEFAULT_WIDTH, k: int = DEFAULT_K) -> Path:
    """Where ``ensure_default_sae`` trains the default SAE when none ships for these settings."""
    return cache_dir() / "saes" / "smollm2-135m-instruct" / f"layer{layer}-w{width}-k{k}"


def sae_training_documents(split: str = "train", seed: int = 0) -> list[str]:
    """General text covering the domains: every Wikipedia topic, WordNet, Austen, CWE.

    An SAE trained on one domain only selects generic-word latents (docs/method.md §9),
    so the mix is broad; documents are interleaved so any prefix is mixed.
    """
    from saeguard.data.corpora import load_corpus

    docs = [doc for name in SAE_TRAINING_MIX for doc in load_corpus(name, split)]
    random.Random(seed).shuffle(docs)
    return docs


def default_sae_ready(layer: int = DEFAULT_LAYER, width: int = DEFAULT_WIDTH) -> bool:
    """Whether the default SAE is trained and cached (else the first use trains it, ~15 min on 2 cores)."""
    return (default_sae_dir(layer, width) / "cfg.json").is_file()


def resolve_sae(spec: str | None = DEFAULT_SAE, *, show_progress: bool = True) -> str:
    """The SAE to give ``Guardrail.fit``: ``"default"`` (or None) is the embedded default SAE's folder.

    The default SAE belongs to the default model (``load_model("default")``); it
    is trained on first use (about 15 min on 2 CPU cores) and cached
    (``saeguard data status`` shows where). Any other spec (a SAELens folder or
    ``release:sae_id``) is returned unchanged.

    Raises:
        SaeguardError: the offline training text is missing (run ``saeguard data fetch``).
    """
    if spec is not None and spec != DEFAULT_SAE:
        return spec
    return str(ensure_default_sae(show_progress=show_progress))


def ensure_default_sae(
    layer: int = DEFAULT_LAYER, width: int = DEFAULT_WIDTH, *, show_progress: bool = True
) -> Path:
    """The default SAE folder, trained once (about 15 min on 2 cores) and cached.

    ``--sae default`` (or no ``--sae`` on the default model) means this folder.
    """
    target = default_sae_dir(layer, width)
    if default_sae_ready(layer, width):
        return target
    from saeguard.hf.models import load_default_model
    from saeguard.sae_training import train_and_save

    model, tokenizer = load_default_model()
    train_and_save(
        model,
        tokenizer,
        sae_training_documents("train"),
        sae_training_documents("heldout")[:64],
        [default_sae_config(layer, width)],
        [target],
        model_name="SmolLM2-135M-Instruct",
        data_mix="+".join(SAE_TRAINING_MIX),
        show_progress=show_progress,
    )
    return target
