"""The server: OpenAI-compatible endpoints in front of a guarded model (docs/serving.md).

``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as server-sent events
or not; completions with ``echo`` + ``logprobs`` for lm-eval), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus), ``POST /saeguard/trace`` (per-token gate
evidence) and ``GET /`` (the playground page). Every bad request gets OpenAI's error JSON
with a 4xx status naming the field; work runs on a bounded pool (:mod:`.scheduler`).
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Header
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from torch import nn
from transformers import TextIteratorStreamer

from saeguard._version import __version__
from saeguard.core.guardrail import Guardrail
from saeguard.errors import SaeguardError
from saeguard.explain.trace import trace_prompt
from saeguard.server.context import ApiError, Served, ServerSettings
from saeguard.server.generation import Job, Outcome, StopFilter, run_job
from saeguard.server.jobs import chat_job, completion_jobs, trace_messages
from saeguard.server.metrics import Metrics
from saeguard.server.middleware import LimitsAndMetrics, add_error_handlers
from saeguard.server.responses import (
    DECISION_HEADER,
    ChunkMaker,
    Texts,
    chat_completion,
    completion,
    decision_header,
    saeguard_info,
    sse,
)
from saeguard.server.scheduler import Busy, Scheduler
from saeguard.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    GuardReport,
    ModelCard,
    ModelList,
    SaeguardInfo,
    TraceRequest,
)

T = TypeVar("T")
ROUTES = (
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/saeguard/trace",
)


def create_app(
    model: nn.Module, tokenizer: Any, guards: dict[str, Guardrail], settings: ServerSettings | None = None
) -> FastAPI:
    """The FastAPI app serving ``model`` with ``guards`` (name -> guard), e.g. for ``uvicorn.run``.

    Raises:
        SaeguardError: bad settings (workers, queue size).
    """
    settings = settings or ServerSettings()
    served = Served(model, tokenizer, dict(guards), settings)
    scheduler = Scheduler(settings.workers, settings.queue_size)
    metrics = Metrics(guards, lambda: scheduler.admitted)
    texts = Texts(tokenizer)
    cancels: set[threading.Event] = set()
    started = int(time.time())
    page = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for event in list(cancels):
            event.set()
        scheduler.shutdown()

    app = FastAPI(title="saeguard", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(LimitsAndMetrics, max_body=settings.max_body_bytes, metrics=metrics, routes=ROUTES)
    add_error_handlers(app)

    def authorize(authorization: str | None = Header(None)) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        sent = token.strip().encode("latin-1")  # the header's bytes (HTTP headers arrive as latin-1)
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent, settings.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                kind="authentication_error",
                code="invalid_api_key",
            )

    auth = [Depends(authorize)]

    async def run(work: Callable[[], T]) -> T:
        try:
            future = scheduler.submit(work)
        except Busy:
            raise ApiError(
                503,
                "the server is busy (every worker and the queue are full): retry shortly",
                kind="server_busy",
            ) from None
        try:
            return await future
        except SaeguardError as error:
            raise ApiError(400, str(error)) from None

    def observed(outcome: Outcome) -> Outcome:
        metrics.observe_outcome(outcome.reports, outcome.refused, len(outcome.token_ids))
        return outcome

    def job_runner(job: Job, **kwargs: Any) -> Callable[[], Outcome]:
        return lambda: observed(run_job(model, tokenizer, job, refusal=settings.refusal, **kwargs))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": settings.model_id,
            "guards": list(guards),
            "queue": scheduler.admitted,
        }

    @app.get("/metrics", dependencies=auth)
    async def metrics_page() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=auth)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=alias, created=started) for alias in served.aliases()])

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(body: ChatCompletionRequest) -> Response:
        job = chat_job(served, body)
        name = body.model or settings.model_id
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await stream(job, ChunkMaker(True, name), include_usage)
        outcome = await run(job_runner(job))
        response = chat_completion(name, job, outcome, texts)
        return _json(response, response.saeguard)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest) -> Response:
        jobs = completion_jobs(served, body)
        name = body.model or settings.model_id
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await stream(jobs[0], ChunkMaker(False, name), include_usage)
        runners = [job_runner(job) for job in jobs]
        outcomes = await run(lambda: [runner() for runner in runners])
        response = completion(name, jobs, outcomes, body.echo, texts)
        return _json(response, response.saeguard)

    @app.post("/saeguard/trace", dependencies=auth)
    async def trace(body: TraceRequest) -> dict[str, Any]:
        chosen = served.select(body.model, body.guards)
        messages = trace_messages(served, body)
        try:
            traces = await run(lambda: trace_chain(chosen, messages))
        except ApiError as error:
            raise ApiError(error.status, f"messages: {error}", param="messages") from None
        return {"guards": traces}

    def trace_chain(chosen: tuple[tuple[str, Guardrail], ...], messages: list[dict]) -> list[dict[str, Any]]:
        """Each guard's trace as the request applies it: after the guards ahead of it."""
        out = []
        for index, (name, guard) in enumerate(chosen):
            ahead = [g for _, g in chosen[:index]]
            out.append(
                {"name": name, **trace_prompt(model, tokenizer, guard, messages, before=ahead).to_dict()}
            )
        return out

    async def stream(job: Job, make: ChunkMaker, include_usage: bool) -> StreamingResponse:
        """Start the job, wait for the prompt's decision (it goes in the headers), then stream."""
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[list[GuardReport]] = loop.create_future()
        cancel = threading.Event()
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

        def resolve(reports: list[GuardReport]) -> None:
            if not decided.done():
                decided.set_result(reports)

        def on_decided(reports: list[GuardReport]) -> None:
            loop.call_soon_threadsafe(resolve, reports)

        cancels.add(cancel)
        try:
            future = asyncio.ensure_future(
                run(job_runner(job, streamer=streamer, on_decided=on_decided, cancel=cancel))
            )
            waiting: set[asyncio.Future[Any]] = {decided, future}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not decided.done():  # the job failed before its prompt was judged
                await future
            reports = decided.result()
        except BaseException:
            cancel.set()
            cancels.discard(cancel)
            raise
        refused = job.policy == "refuse" and any(r.flagged for r in reports)
        info = saeguard_info(job.policy, [(reports, refused)])

        async def events() -> AsyncIterator[str]:
            try:
                yield sse(make("", first=True, saeguard=info))
                if not refused:
                    async for piece in _pieces(streamer, StopFilter(job.stop), cancel):
                        yield sse(make(piece))
                outcome = await future
                if refused:
                    yield sse(make(outcome.text))
                final = saeguard_info(job.policy, [(outcome.reports, outcome.refused)])
                yield sse(make(None, finish=outcome.finish_reason, saeguard=final))
                if include_usage:
                    yield sse(make(None, usage=make.usage(job, outcome)))
                yield sse("[DONE]")
            except ApiError as error:
                yield sse(error.body.model_dump())
            finally:
                cancel.set()
                cancels.discard(cancel)

        headers = {DECISION_HEADER: decision_header(info), "cache-control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    return app


async def _pieces(
    streamer: TextIteratorStreamer, stop: StopFilter, cancel: threading.Event
) -> AsyncIterator[str]:
    """Text pieces from the worker's streamer, read off the event loop, cut at a stop string."""
    iterator = iter(streamer)
    while True:
        piece = await asyncio.to_thread(next, iterator, None)
        if piece is None:
            break
        out = stop.feed(piece)
        if out:
            yield out
        if stop.stopped:
            cancel.set()
            break
    tail = stop.flush()
    if tail:
        yield tail


def _json(body: BaseModel, info: SaeguardInfo) -> JSONResponse:
    return JSONResponse(body.model_dump(), headers={DECISION_HEADER: decision_header(info)})
