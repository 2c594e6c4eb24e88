"""Fixtures of the server tests: a tiny Llama with two fitted guards, served on 127.0.0.1.

Two guards: ``bio`` flags the forget words (saeguard.testing.FORGET_WORDS), ``lore`` the retain
words; the tiny model and tokenizer are also saved to disk for ``serve --model PATH`` and lm-eval.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

from saeguard import Guardrail  # noqa: E402
from saeguard.errors import CalibrationWarning  # noqa: E402
from saeguard.testing import (  # noqa: E402
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

from .helpers import FIT, Live, running  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> tuple[Any, Any, dict[str, Guardrail]]:
    """(model, tokenizer, {"bio": guard, "lore": guard}) fitted once for the server tests."""
    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        bio = Guardrail.fit(
            model,
            tokenizer,
            sae,
            forget=corpus(FORGET_WORDS, 24, 40, 1),
            retain=corpus(RETAIN_WORDS, 24, 40, 2),
            **FIT,
        )
        lore = Guardrail.fit(
            model,
            tokenizer,
            sae,
            forget=corpus(RETAIN_WORDS, 24, 40, 3),
            retain=corpus(FORGET_WORDS, 24, 40, 4),
            **FIT,
        )
    return model, tokenizer, {"bio": bio, "lore": lore}


@pytest.fixture(scope="session")
def live(tiny) -> Iterator[Live]:
    """The shared server: both guards, policy clamp, four workers."""
    model, tokenizer, guards = tiny
    with running(model, tokenizer, guards, workers=4) as server:
        yield server


@pytest.fixture(scope="session")
def saved_model(tiny, tmp_path_factory) -> Path:
    """The tiny model and tokenizer saved with save_pretrained (for --model PATH and lm-eval)."""
    model, tokenizer, _ = tiny
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
