"""Request and response bodies of the server, in the OpenAI shape (chat completions, completions).

Requests accept the fields OpenAI clients send; fields the server does not use are ignored,
except ones whose meaning it cannot honour (``n`` > 1, tools, ``response_format`` other than
text, ``logit_bias``, penalties, ``best_of`` > 1), which are refused by the handlers. Two
additions, sent by OpenAI clients through ``extra_body``: ``guards`` (the guard names to apply;
``[]`` for none) and ``on_flag`` (``clamp`` or ``refuse``). Every
response carries a ``saeguard`` field with each guard's decision (see :class:`GuardReport`).
Numbers and flags are strict: ``"5"`` is not a ``max_tokens``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    computed_field,
)

from saeguard.server.settings import Policy

FinishReason = Literal["stop", "length", "content_filter"]


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    include_usage: StrictBool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="model id, or 'id+guard+guard' ('id+none': no guard)")
    max_tokens: StrictInt | None = None
    temperature: StrictFloat | None = Field(None, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0)
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=2**64)  # torch.manual_seed's range
    user: StrictStr | None = None
    guards: list[StrictStr] | None = Field(None, description="guard names to apply (default: all loaded)")
    on_flag: Policy | None = Field(None, description="policy on a flagged request (default: the server's)")
    # OpenAI fields whose meaning the server cannot honour: refused when set (``jobs.UNHONOURED``)
    response_format: dict | None = None
    logit_bias: dict | None = None
    presence_penalty: StrictFloat | None = None
    frequency_penalty: StrictFloat | None = None


class TextPart(BaseModel):
    """One text part of a message's content (other part types are refused)."""

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One turn of the conversation (``developer`` is read as ``system``)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``'s body."""

    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    tools: list[dict] | None = None
    functions: list[dict] | None = None


class CompletionRequest(_Request):
    """``POST /v1/completions``'s body: text or token-id prompts, one or a list."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    echo: StrictBool = False
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None


class TraceRequest(BaseModel):
    """The playground's request for per-token gate evidence (``POST /saeguard/trace``)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    messages: list[ChatMessage]
    guards: list[StrictStr] | None = None


# -- responses ---------------------------------------------------------------------------------
class GuardReport(BaseModel):
    """One guard's decision on a request: the prompt's rho against tau, and any later flip."""

    name: str
    rho: float
    tau: float
    flagged: bool
    flipped_at: int | None = None  # the generated token where a passed prompt's gate flipped

    @computed_field  # type: ignore[prop-decorator]
    @property
    def clamped(self) -> bool:
        """Whether the guard clamped any of the answer: a flagged prompt, or a flip while generating."""
        return self.flagged or self.flipped_at is not None


class ChoiceDecision(BaseModel):
    """The guards' decisions on one choice's prompt, and whether it was refused."""

    index: int
    refused: bool
    guards: list[GuardReport]


class SaeguardInfo(BaseModel):
    """The ``saeguard`` field of every response."""

    policy: Policy
    flagged: bool = Field(description="some guard flagged some choice's prompt")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def clamped(self) -> bool:
        """Whether any guard clamped any choice: a flagged prompt or a flip while generating."""
        return any(report.clamped for choice in self.choices for report in choice.guards)

    choices: list[ChoiceDecision]


class Usage(BaseModel):
    """Token counts of a response."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    """A token and its log-probability under the served (guarded) model."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """A generated token's log-probability and its most likely alternatives."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """A chat choice's logprobs, one entry per generated token."""

    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    """The answer; ``refusal`` holds the refusal text when the request was refused."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    """One chat answer."""

    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    """A non-streamed chat response."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    saeguard: SaeguardInfo


class CompletionLogprobs(BaseModel):
    """The legacy completions' logprobs: one entry per token (``None`` for the first echoed one)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    """One completion (the prompt first when ``echo``)."""

    index: int
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    """A non-streamed completions response, one choice per prompt."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    saeguard: SaeguardInfo


class ModelCard(BaseModel):
    """One model id (``id``, ``id+guard``, ``id+none``)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "saeguard"


class ModelList(BaseModel):
    """``GET /v1/models``'s body."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """What went wrong, and which field (``param``)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody
