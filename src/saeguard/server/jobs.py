"""From a request body to the :class:`~saeguard.server.generation.Job` s it runs.

Which tokens the gate counts: a chat request is encoded with the chat template and every
user turn's tokens count (``encode_prompts`` on the whole conversation). A completions
prompt is raw text (or token ids): every non-special token counts. A completions request
with ``echo`` and ``logprobs`` is a scoring request (lm-eval's ``local-completions``): the
gate decides on every token but the last and keeps that decision (docs/serving.md), as
``guarded_lm(..., judge="request")`` does in process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saeguard.errors import SaeguardError
from saeguard.hf.chat import has_chat_template
from saeguard.hf.prompts import EncodedPrompts, encode_prompt, encode_prompts
from saeguard.server.context import ApiError, Served
from saeguard.server.generation import Job
from saeguard.server.schemas import ChatCompletionRequest, CompletionRequest, TraceRequest
from saeguard.server.settings import Policy

MAX_STOPS = 4
UNHONOURED: dict[str, Callable[[Any], bool]] = {
    "response_format": lambda value: value in (None, {"type": "text"}),
    "logit_bias": lambda value: not value,
    "presence_penalty": lambda value: not value,
    "frequency_penalty": lambda value: not value,
    "functions": lambda value: not value,
    "best_of": lambda value: value in (None, 1),
}
"""OpenAI fields the server cannot honour, and which of their values it may accept (the defaults)."""


def _common(served: Served, body: ChatCompletionRequest | CompletionRequest) -> dict:
    """Settings every request shares, checked: sampling, stop strings, the policy."""
    if body.n != 1:
        raise ApiError(400, f"n must be 1 (one choice per request), got {body.n}", param="n")
    for name, accepted in UNHONOURED.items():
        if not accepted(getattr(body, name, None)):
            raise ApiError(400, f"{name} is not supported by this server: leave it out", param=name)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise ApiError(400, f"stop takes up to {MAX_STOPS} non-empty strings", param="stop")
    policy: Policy = body.on_flag or served.settings.on_flag
    return {
        "policy": policy,
        "temperature": 0.0 if body.temperature is None else float(body.temperature),
        "top_p": 1.0 if body.top_p is None else float(body.top_p),
        "seed": body.seed,
        "stop": tuple(stops),
    }


def chat_job(served: Served, body: ChatCompletionRequest) -> Job:
    """The job of a chat request: the conversation through the chat template, user turns counted.

    Raises:
        ApiError: a bad field (named in the error), or a model without a chat template.
    """
    settings = _common(served, body)
    if body.tools:
        raise ApiError(400, "tools are not supported by this server", param="tools")
    if not body.messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} messages", param="messages")
    if not has_chat_template(served.tokenizer):
        raise ApiError(
            400, "this model has no chat template: send the text to /v1/completions", param="messages"
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = _messages(body)
    encoded = _encode_messages(served, messages)
    ids = [int(i) for i in encoded.input_ids[0]]
    guards = served.select(body.model, body.guards)
    tokens_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    new_tokens = served.new_tokens(
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        len(ids),
        default=served.settings.default_chat_tokens,
        param=tokens_param,
        prompt_param="messages",
    )
    return Job(
        ids=ids,
        counted=[bool(c) for c in encoded.content_mask[0]],
        guards=guards,
        max_new_tokens=new_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        **settings,
    )


def _messages(body: ChatCompletionRequest | TraceRequest) -> list[dict[str, str]]:
    """The conversation as ``{"role", "content"}`` dicts (``developer`` read as ``system``)."""
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]


def _encode_messages(served: Served, messages: list[dict[str, str]]) -> EncodedPrompts:
    try:
        return encode_prompts(served.tokenizer, [messages], chat=True)
    except SaeguardError as error:
        raise ApiError(400, f"messages: {error}", param="messages") from None


def trace_messages(served: Served, body: TraceRequest) -> list[dict[str, str]]:
    """The conversation of a trace request, checked as a chat request's prompt is.

    Raises:
        ApiError: no messages, a conversation the chat template refuses (or without a user turn),
            or a prompt longer than the model's positions (``context_length_exceeded``).
    """
    if not body.messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} messages", param="messages")
    messages = _messages(body)
    tokens = int(_encode_messages(served, messages).input_ids.shape[1])
    if served.positions is not None and tokens > served.positions:
        raise ApiError(
            400,
            f"messages: the prompt has {tokens} tokens, over the model's {served.positions} positions; "
            "shorten the prompt",
            param="messages",
            code="context_length_exceeded",
        )
    return messages


def _prompt_ids(served: Served, body: CompletionRequest) -> list[list[int]]:
    """The request's prompts as token ids (text gets the tokenizer's special tokens, e.g. BOS)."""
    prompt = body.prompt
    items: list = [prompt] if isinstance(prompt, str) else list(prompt)
    if items and all(isinstance(p, str) for p in items):
        return [encode_prompt(served.tokenizer, text, chat=False)[0] for text in items]
    rows: list[list[int]] = [list(p) for p in items] if items and isinstance(items[0], list) else [items]
    for row in rows:
        for token in row:
            if not isinstance(token, int) or not 0 <= token < served.vocab_size:
                raise ApiError(
                    400,
                    f"prompt holds token id {token!r}, outside the vocabulary 0..{served.vocab_size - 1}",
                    param="prompt",
                )
    return rows


def completion_jobs(served: Served, body: CompletionRequest) -> list[Job]:
    """One job per prompt of a completions request (see the module docstring).

    Raises:
        ApiError: a bad field, named in the error.
    """
    settings = _common(served, body)
    if body.suffix:
        raise ApiError(400, "suffix is not supported by this server", param="suffix")
    rows = _prompt_ids(served, body)
    if not rows or any(not row for row in rows):
        raise ApiError(400, "prompt must be non-empty text or token ids", param="prompt")
    if len(rows) > served.settings.max_prompts:
        raise ApiError(
            400,
            f"prompt holds {len(rows)} prompts; this server takes {served.settings.max_prompts}",
            param="prompt",
        )
    if body.stream and (len(rows) > 1 or body.echo or body.logprobs is not None):
        raise ApiError(400, "stream takes one prompt, without echo or logprobs", param="stream")
    guards = served.select(body.model, body.guards)
    scoring = body.echo and body.logprobs is not None
    jobs = []
    for ids in rows:
        counted = [i not in served.special_ids for i in ids]
        new_tokens = served.new_tokens(
            body.max_tokens,
            len(ids),
            default=served.settings.default_completion_tokens,
            param="max_tokens",
            prompt_param="prompt",
            minimum=0 if scoring else 1,
        )
        jobs.append(
            Job(
                ids=ids,
                counted=counted[:-1] + [False] if scoring else counted,
                guards=guards,
                max_new_tokens=new_tokens,
                decision_end=len(ids) - 1 if scoring else None,
                freeze=scoring,
                logprobs=body.logprobs,
                echo=scoring,
                **settings,
            )
        )
    return jobs
