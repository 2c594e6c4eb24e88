"""From job outcomes to OpenAI-shaped bodies, stream chunks and the decision header.

Every response reports each guard's decision: the ``saeguard`` field of the body (and of the
first and last stream chunk) and the ``x-saeguard-decision`` header, one entry per guard
(``bio;flagged=1;rho=0.4231;tau=0.3000``, comma-separated; ``;choice=N`` when a completions
request holds several prompts; ``none`` without guards).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from saeguard.server.generation import Job, Outcome, TokenScore
from saeguard.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChoiceDecision,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    GuardReport,
    Policy,
    SaeguardInfo,
    TokenLogprob,
    TopLogprob,
    Usage,
)

DECISION_HEADER = "x-saeguard-decision"


def new_id(prefix: str) -> str:
    """A fresh response id, ``PREFIX-<32 hex digits>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds (the ``created`` field)."""
    return int(time.time())


def saeguard_info(policy: Policy, outcomes: Sequence[tuple[list[GuardReport], bool]]) -> SaeguardInfo:
    """The ``saeguard`` field from each choice's (guard reports, refused)."""
    choices = [
        ChoiceDecision(index=i, refused=refused, guards=reports)
        for i, (reports, refused) in enumerate(outcomes)
    ]
    flagged = any(r.flagged for c in choices for r in c.guards)
    return SaeguardInfo(policy=policy, flagged=flagged, choices=choices)


def decision_header(info: SaeguardInfo) -> str:
    """The ``x-saeguard-decision`` header value (see the module docstring)."""
    entries = []
    for choice in info.choices:
        suffix = f";choice={choice.index}" if len(info.choices) > 1 else ""
        for r in choice.guards:
            entries.append(f"{r.name};flagged={int(r.flagged)};rho={r.rho:.4f};tau={r.tau:.4f}{suffix}")
    return ", ".join(entries) or "none"


class Texts:
    """Token texts for logprobs, decoded once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _chat_logprobs(scores: list[TokenScore], text: Texts) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=text(s.token_id),
                logprob=s.logprob,
                bytes=list(text(s.token_id).encode()),
                top_logprobs=[
                    TopLogprob(token=text(i), logprob=v, bytes=list(text(i).encode())) for i, v in s.top
                ],
            )
            for s in scores
        ]
    )


def chat_completion(model: str, job: Job, outcome: Outcome, text: Texts) -> ChatCompletion:
    """The body of a non-streamed chat completion."""
    logprobs = None if outcome.scores is None else _chat_logprobs(outcome.scores, text)
    message = AssistantMessage(content=outcome.text, refusal=outcome.text if outcome.refused else None)
    return ChatCompletion(
        id=new_id("chatcmpl"),
        created=now(),
        model=model,
        choices=[
            ChatChoice(index=0, message=message, finish_reason=outcome.finish_reason, logprobs=logprobs)
        ],
        usage=_usage(len(job.ids), len(outcome.token_ids)),
        saeguard=saeguard_info(job.policy, [(outcome.reports, outcome.refused)]),
    )


def _completion_logprobs(job: Job, outcome: Outcome, prompt_text: str, text: Texts) -> CompletionLogprobs:
    """Legacy logprobs: the echoed prompt's tokens (first one without a score), then the generated ones."""
    entries: list[tuple[int, TokenScore | None]] = []
    if outcome.prompt_scores is not None:
        entries += list(zip(job.ids, outcome.prompt_scores, strict=True))
    entries += [(s.token_id, s) for s in outcome.scores or []]
    tokens = [text(token) for token, _ in entries]
    offsets, position = [], 0 if outcome.prompt_scores is not None else len(prompt_text)
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[None if s is None else s.logprob for _, s in entries],
        top_logprobs=[None if s is None else {text(i): v for i, v in s.top} for _, s in entries],
        text_offset=offsets,
    )


def completion(
    model: str, jobs: Sequence[Job], outcomes: Sequence[Outcome], echo: bool, text: Texts
) -> Completion:
    """The body of a non-streamed completion, one choice per prompt."""
    choices = []
    for index, (job, outcome) in enumerate(zip(jobs, outcomes, strict=True)):
        prompt_text = text.tokenizer.decode(job.ids, skip_special_tokens=True)
        logprobs = None
        if not outcome.refused and (outcome.scores is not None or outcome.prompt_scores is not None):
            logprobs = _completion_logprobs(job, outcome, prompt_text, text)
        body = (prompt_text if echo and not outcome.refused else "") + outcome.text
        choices.append(
            CompletionChoice(index=index, text=body, finish_reason=outcome.finish_reason, logprobs=logprobs)
        )
    return Completion(
        id=new_id("cmpl"),
        created=now(),
        model=model,
        choices=choices,
        usage=_usage(sum(len(j.ids) for j in jobs), sum(len(o.token_ids) for o in outcomes)),
        saeguard=saeguard_info(jobs[0].policy, [(o.reports, o.refused) for o in outcomes]),
    )


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event line (``data: {...}``); ``"[DONE]"`` ends the stream."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


class ChunkMaker:
    """Stream chunks of one response (``chat.completion.chunk`` or ``text_completion``)."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = now()

    def __call__(
        self,
        content: str | None,
        *,
        finish: str | None = None,
        first: bool = False,
        saeguard: SaeguardInfo | None = None,
        usage: Usage | None = None,
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if content is not None:
                delta["content"] = content
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            chunk["object"] = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": content or "", "finish_reason": finish, "logprobs": None}
            chunk["object"] = "text_completion"
        chunk["choices"] = [] if usage is not None else [choice]
        if usage is not None:
            chunk["usage"] = usage.model_dump()
        if saeguard is not None:
            chunk["saeguard"] = saeguard.model_dump()
        return chunk

    def usage(self, job: Job, outcome: Outcome) -> Usage:
        """The token counts of the streamed job."""
        return _usage(len(job.ids), len(outcome.token_ids))
