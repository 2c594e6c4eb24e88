"""HTTP plumbing of the server: OpenAI-shaped errors, the body limit, request metrics.

Every error leaves as ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status
naming the field (a 500 only for a bug, logged); bodies over the limit get 413 before any
parsing (declared or streamed); every request is counted and timed by route.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import Request

from saeguard.errors import SaeguardError
from saeguard.server.context import ApiError
from saeguard.server.metrics import Metrics

log = logging.getLogger("saeguard.server")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict"}
_UNION_HINTS = {
    "prompt": "must be a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "must be a string or a list of strings",
    "content": "must be a string or a list of text parts",
}


def error_response(error: ApiError) -> JSONResponse:
    """The JSON response of an :class:`ApiError` (503 adds ``retry-after``)."""
    headers = {"retry-after": "1"} if error.status == 503 else None
    return JSONResponse(error.body.model_dump(), status_code=error.status, headers=headers)


def _validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """One 400 naming the first bad field (union member tags such as ``list[int]`` left out)."""
    error: dict[str, Any] = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    path = [p for p in loc if "[" not in p and p not in _TYPE_TAGS]
    field = ".".join(path)
    if len(path) < len(loc) and path and path[-1] in _UNION_HINTS:  # a union: name its forms
        return ApiError(400, f"{field} {_UNION_HINTS[path[-1]]}", param=path[0])
    if error.get("type") == "json_invalid":
        context: dict[str, Any] = error.get("ctx") or {}
        return ApiError(400, f"the body is not valid JSON ({context.get('error', 'parse error')})")
    if error.get("type") == "missing":
        return ApiError(400, f"{field or 'body'} is required", param=field or None)
    return ApiError(
        400, f"{field or 'body'}: {error.get('msg', 'invalid value')}", param=path[0] if path else None
    )


def add_error_handlers(app: FastAPI) -> None:
    """Turn every exception into OpenAI's error JSON (a 500 only for a bug, logged)."""

    async def api_error(_request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return error_response(error)

    async def invalid(_request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return error_response(_validation_error(list(error.errors())))

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        message = str(error.detail)
        if error.status_code == 404:
            message = (
                f"no such path {request.url.path}: the API is under /v1 (GET /v1/models lists the models)"
            )
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(ApiError(error.status_code, message))

    async def saeguard_error(_request: Request, error: Exception) -> Response:
        return error_response(ApiError(400, str(error)))

    async def internal(_request: Request, error: Exception) -> Response:
        log.exception("internal error", exc_info=error)
        return error_response(
            ApiError(500, "internal server error (see the server log)", kind="server_error")
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(SaeguardError, saeguard_error)
    app.add_exception_handler(Exception, internal)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class LimitsAndMetrics:
    """ASGI middleware: refuse bodies over ``max_body`` bytes (413), count and time every request."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        max_body: int,
        metrics: Metrics,
        routes: tuple[str, ...],
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics
        self.routes = routes  # the paths counted by name (others as "other": bounded label values)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            body = await self._read(scope, receive)
            if body is None:
                too_large = ApiError(
                    413, f"the request body is over this server's limit of {self.max_body} bytes"
                )
                await error_response(too_large)(scope, receive, send_counted)
                return
            await self.app(scope, _replay(body, receive), send_counted)
        finally:
            self.metrics.observe_request(route, status, time.perf_counter() - started)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode() or "0"
        if declared.isdigit() and int(declared) > self.max_body:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then waits on the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
