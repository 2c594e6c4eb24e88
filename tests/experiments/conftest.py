"""A tiny Llama whose SAE has two planted topic latents, topic corpora and question files on disk."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from saeguard.config import FitConfig
from saeguard.eval.items import McqItem
from saeguard.experiments.harness import EvalSettings
from saeguard.testing import (
    FORGET_WORDS,
    PLANTED_LATENT,
    corpus,
    eval_llama,
    eval_tokenizer,
    plant_forget_direction,
    random_sae,
)

HISTORY_WORDS = ["castle", "king", "empire", "trade", "city"]
UTILITY_WORDS = ["river", "mountain", "poem", "novel", "ocean"]
HISTORY_LATENT = 11


def plant_second_topic(model, sae, tokenizer, words: list[str], latent: int, seed: int = 9) -> None:
    """Give ``words`` a private direction u2 (orthogonal to the first planted one) read by ``latent`` only."""
    generator = torch.Generator().manual_seed(seed)
    first = sae.W_enc[:, PLANTED_LATENT].detach() / sae.W_enc[:, PLANTED_LATENT].norm()
    u = torch.randn(sae.W_enc.shape[0], generator=generator)
    u -= (u @ first) * first
    u /= u.norm()
    ids = tokenizer.convert_tokens_to_ids(words)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings -= (embeddings @ u).unsqueeze(1) * u
        embeddings[ids] += 3.0 * u
        sae.W_enc -= u.unsqueeze(1) * (u @ sae.W_enc).unsqueeze(0)
        sae.W_enc[:, latent] = 10.0 * u
        sae.b_enc[latent] = -10.0
        sae.threshold[latent] = 0.0


@dataclass
class World:
    """The tiny setup every experiment test runs on (paths are files in tmp_path)."""

    model: torch.nn.Module
    tokenizer: object
    sae: object
    folder: Path
    bio: str  # forget corpus (biology words): latent 37
    history: str  # second topic's corpus: latent 11
    retain: str
    bio_mcq: str
    history_mcq: str
    utility_mcq: str

    def write(self, name: str, docs: list[str]) -> str:
        path = self.folder / name
        path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        return str(path)

    def run(self, run_experiment: Callable[..., Any], config: Any, output: str = "out") -> Any:
        """``run_experiment`` (an experiment's run function) on this world, quietly, into folder/output."""
        return run_experiment(
            self.model,
            self.tokenizer,
            self.sae,
            config,
            self.folder / output,
            cache_dir=self.folder / "cache",
            show_progress=False,
        )


def topic_items(words: list[str], n: int, seed: int, prefix: str) -> list[McqItem]:
    """Questions made of ``words``; options of one or two of them."""
    generator = torch.Generator().manual_seed(seed)
    pick = lambda k: " ".join(words[int(i)] for i in torch.randint(len(words), (k,), generator=generator))  # noqa: E731
    return [
        McqItem(
            f"what is the {pick(4)}", tuple(pick(1 + k % 2) for k in range(4)), i % 4, prefix, f"{prefix}{i}"
        )
        for i in range(n)
    ]


def _items_file(path: Path, items: list[McqItem]) -> str:
    path.write_text("".join(json.dumps(item.to_dict()) + "\n" for item in items), encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def _tiny_calibration_is_expected():
    """The tiny setups calibrate tau on 16 retain prompts on purpose (speed); the fit warns about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the retain side is too small")
        yield


@pytest.fixture
def world(tmp_path: Path) -> World:
    tokenizer = eval_tokenizer()
    model, sae = plant_forget_direction(eval_llama(), random_sae("jumprelu"))
    plant_second_topic(model, sae, tokenizer, HISTORY_WORDS, HISTORY_LATENT)
    w = World(model, tokenizer, sae, tmp_path, "", "", "", "", "", "")
    w.bio = w.write("bio.txt", corpus(FORGET_WORDS, 12, 30, seed=1))
    w.history = w.write("history.txt", corpus(HISTORY_WORDS, 12, 30, seed=2))
    w.retain = w.write("retain.txt", corpus(UTILITY_WORDS, 16, 30, seed=3))
    w.bio_mcq = _items_file(tmp_path / "bio.jsonl", topic_items(FORGET_WORDS, 6, 1, "bio"))
    w.history_mcq = _items_file(tmp_path / "history.jsonl", topic_items(HISTORY_WORDS, 6, 2, "history"))
    w.utility_mcq = _items_file(tmp_path / "utility.jsonl", topic_items(UTILITY_WORDS, 6, 3, "utility"))
    return w


@pytest.fixture
def tiny_fit() -> FitConfig:
    """One latent per guard, read at the last block; tau from 16 retain prompts."""
    return FitConfig(
        layer=1,
        n_features=1,
        ratio_percentile=90.0,
        gate_percentile=95.0,
        clamp="20x",
        seq_len=32,
        batch_size=4,
        max_forget_chunks=8,
        max_retain_chunks=8,
        calibration_size=16,
    )


@pytest.fixture
def tiny_eval() -> EvalSettings:
    """Every question (a random model knows none), cloze scorer."""
    return EvalSettings(known_filter=False, mcq_limit=None, batch_size=8)
