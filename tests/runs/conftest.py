"""Fixtures for the comparison: tiny corpora and MCQ files on disk, a config small enough for seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeguard.runs.compare import CompareConfig, GuardGrid
from saeguard.runs.compare_types import compare_fit
from saeguard.testing import FORGET_WORDS, RETAIN_WORDS, corpus, eval_llama, eval_tokenizer, make_items

TINY_TRAIN = {"steps": [2], "batch_size": [2], "seq_len": [16], "learning_rate": [1e-3]}


def _write_corpus(path: Path, docs: list[str]) -> str:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def _write_items(path: Path, items) -> str:
    path.write_text("".join(json.dumps(item.to_dict()) + "\n" for item in items), encoding="utf-8")
    return str(path)


@pytest.fixture
def tok():
    return eval_tokenizer()


@pytest.fixture
def llama():
    return eval_llama()


@pytest.fixture
def compare_config(tmp_path) -> CompareConfig:
    """Every method once (DSG twice: two gate percentiles share one fit), no known filter."""
    items = make_items(8)
    return CompareConfig(
        forget=[_write_corpus(tmp_path / "forget.txt", corpus(FORGET_WORDS, 8, 40, seed=1))],
        retain=[_write_corpus(tmp_path / "retain.txt", corpus(RETAIN_WORDS, 8, 40, seed=2))],
        forget_mcq=[_write_items(tmp_path / "bio.jsonl", items[0::2])],
        utility_mcq=[_write_items(tmp_path / "history.jsonl", items[1::2])],
        mcq_limit=None,
        dsg=GuardGrid(n_features=[2], clamp=["5x"], gate_percentile=[50.0, 90.0], ratio_percentile=[50.0]),
        static=GuardGrid(n_features=[2], clamp=["5x"], retain_frequency_threshold=[0.5]),
        ungated=GuardGrid(n_features=[2], clamp=[100.0], ratio_percentile=[50.0]),
        gradient={
            "ga": dict(TINY_TRAIN),
            "graddiff": TINY_TRAIN | {"retain_weight": [1.0]},
            "npo": TINY_TRAIN | {"retain_loss": ["nll"]},
            "rmu": TINY_TRAIN | {"layer": [1], "steering_coeff": [10.0]},
        },
        fit=compare_fit(
            layer=0, seq_len=32, max_forget_chunks=8, max_retain_chunks=8, batch_size=4, calibration_size=16
        ),
        eval_chunks=2,
        known_filter=False,
        train_device="cpu",
    )
