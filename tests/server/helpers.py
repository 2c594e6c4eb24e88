"""Helpers of the server tests: prompts, and a real server on a free loopback port (``running``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from saeguard import Guardrail  # noqa: E402
from saeguard.server import ServerSettings, create_app  # noqa: E402
from saeguard.server.background import serving  # noqa: E402

FLAGGED = ["what is the cell virus gene protein", "what is dna in a cell", "the enzyme of the bacteria"]
BENIGN = ["the king of the city", "a poem about the river", "what is the mountain"]
FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, gate_percentile=90, show_progress=False)


@dataclass
class Live:
    """A running server and what it serves."""

    url: str
    model: Any
    tokenizer: Any
    guards: dict[str, Guardrail]

    def client(self, **kwargs: Any) -> Any:
        """The official OpenAI client pointed at this server."""
        kwargs.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, timeout=60, **kwargs)


@contextmanager
def running(model: Any, tokenizer: Any, guards: dict[str, Guardrail], **settings: Any) -> Iterator[Live]:
    """Serve ``create_app(...)`` with uvicorn on a free loopback port until the block ends."""
    app = create_app(model, tokenizer, guards, ServerSettings(model_id="tiny", **settings))
    with serving(app) as url:
        yield Live(url, model, tokenizer, guards)
