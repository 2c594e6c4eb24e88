"""The server's settings (``saeguard serve`` options), importable without the server's dependencies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Policy = Literal["clamp", "refuse"]
"""What a flagged request gets: DSG's clamped generation, or the refusal text without generating."""
NAME = re.compile(r"[A-Za-z0-9_.-]+")
"""What a model id or a guard name may hold (``+`` joins guard names in a model alias)."""


@dataclass(frozen=True)
class ServerSettings:
    """How the server behaves (``saeguard serve`` options; docs/serving.md).

    Attributes:
        model_id: the name clients use in ``model`` (aliases add ``+guard``).
        on_flag: policy for a flagged request unless the request overrides it.
        refusal: the text a refused request gets.
        default_guards: guards applied when a request names none (None: all loaded).
        api_key: when set, ``/v1``, ``/saeguard`` and ``/metrics`` need ``Authorization: Bearer KEY``.
        workers: requests generating at once (threads sharing the model).
        queue_size: admitted requests waiting for a worker; more get 503.
        max_tokens: the largest ``max_tokens`` a request may ask for.
        default_chat_tokens, default_completion_tokens: ``max_tokens`` when a request gives none.
        max_body_bytes: larger request bodies get 413.
        max_prompts: prompts in one ``/v1/completions`` request.
    """

    model_id: str = "default"
    on_flag: Policy = "clamp"
    refusal: str = "I can't help with that request."
    default_guards: tuple[str, ...] | None = None
    api_key: str | None = None
    workers: int = 1
    queue_size: int = 64
    max_tokens: int = 1024
    default_chat_tokens: int = 256
    default_completion_tokens: int = 16
    max_body_bytes: int = 1 << 20
    max_prompts: int = 32
