"""The server (``create_app``, served by uvicorn on a free loopback port): bad requests and state.

Every bad request must get OpenAI's error JSON (``{"error": {message, type, param, code}}``) with a
4xx status and a one-line message, never a 500, and the server must stay healthy after it. Good
requests must give the decision the guard gives through the API. (``create_app``'s own checks are in
``cases_state``.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from saeguard.server import ServerSettings, create_app
from saeguard.server.background import serving
from scripts.reliability.fixtures import Workspace
from scripts.reliability.framework import Probe, Result

AREA = "api:server"
FLAGGED = "what is the cell virus gene protein"
BENIGN = "the king of the city and the river"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
TRACE = "/saeguard/trace"
HttpCheck = Callable[[httpx.Response], "str | None"]


def chat(content: Any = BENIGN, **fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields}


def run(probe: Probe, ws: Workspace) -> None:
    guards = {"bio": ws.guard}
    settings = ServerSettings(model_id="tiny", workers=2, max_body_bytes=1 << 16)
    with serving(create_app(ws.model, ws.tok, guards, settings)) as url:
        _requests(probe, ws, url)
        _decisions(probe, ws, url)
    with serving(
        create_app(ws.model, ws.tok, guards, ServerSettings(model_id="tiny", api_key="sesame"))
    ) as url:
        _api_key(probe, url)
    _non_ascii_key(probe, ws)


def send(
    probe: Probe,
    url: str,
    name: str,
    expect: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    check: HttpCheck | None = None,
    headers: dict[str, str | bytes] | None = None,
    area: str = AREA,
) -> None:
    """One request; ``expect`` is "error" (a 4xx in OpenAI's shape), "success" (2xx) or "either"."""
    if not probe._wanted(area, name):
        return
    shown = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    shown = shown if len(str(shown)) <= 160 else str(shown)[:150] + f"...({len(shown)} chars)"
    result = Result(area, name, f"{method} {path} {shown!s}", expect)
    started = time.perf_counter()
    try:
        kwargs: dict[str, Any] = {"headers": dict(headers or {}), "timeout": 120}
        if isinstance(body, (bytes, str)):
            kwargs["content"] = body
            kwargs["headers"].setdefault("content-type", "application/json")
        elif body is not None:
            kwargs["json"] = body
        response = httpx.request(method, url + path, **kwargs)
    except httpx.HTTPError as error:
        result.outcome, result.message = "TRACEBACK", f"no response: {type(error).__name__}: {error}"
    else:
        result.outcome, result.message = classify(response, expect, check)
    try:
        health = httpx.get(url + "/health", timeout=30).json().get("status")
    except (httpx.HTTPError, ValueError) as error:
        health = f"{type(error).__name__}"
    if health != "ok" and result.outcome == "OK":
        result.outcome, result.message = "TRACEBACK", f"server unhealthy after the request: {health}"
    result.seconds = time.perf_counter() - started
    probe.results.append(result)


def classify(response: httpx.Response, expect: str, check: HttpCheck | None) -> tuple[str, str]:
    """(outcome, message) of one response."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message", "") if isinstance(error, dict) else response.text[:200]
    if status >= 500:
        return "TRACEBACK", f"{status}: {message}"
    if status >= 400:
        if expect == "success":
            return "REFUSED", f"{status}: {message}"
        shape = isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
        if not shape or not message.strip() or "\n" in message.strip():
            return "MULTI-LINE", f"{status}: not one OpenAI-shaped error line: {response.text[:200]}"
        return "OK", f"{status}: {message}"
    if expect == "error":
        return "SILENT-WRONG", f"{status}: {response.text[:200]}"
    problem = check(response) if check is not None else None
    return ("SILENT-WRONG", problem) if problem else ("OK", f"{status}: {response.text[:120]}")


def _ok_status(response: httpx.Response) -> str | None:
    return None if response.status_code == 200 else f"status {response.status_code}"


def _requests(probe: Probe, ws: Workspace, url: str) -> None:
    deep = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    errors: list[tuple[str, str, str, Any]] = [
        ("temperature NaN (a JSON extension)", "POST", CHAT, json.dumps(chat(temperature=float("nan")))),
        ("top_p 1e999 (infinity)", "POST", CHAT, json.dumps(chat()).replace("}", ', "top_p": 1e999}')),
        ("max_tokens 1e20 (a float)", "POST", CHAT, chat(max_tokens=1e20)),
        ("max_tokens 2**64", "POST", CHAT, chat(max_tokens=2**64)),
        ("max_tokens true", "POST", CHAT, chat(max_tokens=True)),
        ("max_completion_tokens 0", "POST", CHAT, chat(max_completion_tokens=0, max_tokens=None)),
        ("seed 2**70 with sampling", "POST", CHAT, chat(seed=2**70, temperature=1.0)),
        ("stop [5]", "POST", CHAT, chat(stop=[5])),
        ("content null", "POST", CHAT, chat(content=None)),
        (
            "content an image part",
            "POST",
            CHAT,
            chat(content=[{"type": "image_url", "image_url": {"url": "x"}}]),
        ),
        ("role tool", "POST", CHAT, {**chat(), "messages": [{"role": "tool", "content": "x"}]}),
        ("name 5", "POST", CHAT, {**chat(), "messages": [{"role": "user", "content": "x", "name": 5}]}),
        ("messages an object", "POST", CHAT, {**chat(), "messages": {"role": "user", "content": "x"}}),
        (
            "400 turns over the positions",
            "POST",
            CHAT,
            {**chat(), "messages": [{"role": "user", "content": "cell"}] * 400},
        ),
        ("top_logprobs 21", "POST", CHAT, chat(logprobs=True, top_logprobs=21)),
        (
            "stream_options.include_usage 'yes'",
            "POST",
            CHAT,
            chat(stream=True, stream_options={"include_usage": "yes"}),
        ),
        ("n 0", "POST", CHAT, chat(n=0)),
        ("user 123", "POST", CHAT, chat(user=123)),
        ("model ''", "POST", CHAT, chat(model="")),
        ("model 'tiny+'", "POST", CHAT, chat(model="tiny+")),
        ("model 'tiny+none+bio'", "POST", CHAT, chat(model="tiny+none+bio")),
        ("model of 10,000 characters", "POST", CHAT, chat(model="x" * 10_000)),
        ("guards [5]", "POST", CHAT, chat(guards=[5])),
        ("on_flag null-ish ''", "POST", CHAT, chat(on_flag="")),
        (
            "a lone surrogate in the content",
            "POST",
            CHAT,
            '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "cell \\ud800"}]}',
        ),
        ("body nested 100,000 levels", "POST", CHAT, deep),
        ("empty body", "POST", CHAT, b""),
        ("body 'null'", "POST", CHAT, b"null"),
        ("body of 100 kB (limit 64 kB)", "POST", CHAT, chat(content="cell " * 20_000)),
        ("text/plain body", "POST", CHAT, None),
        ("completions prompt []", "POST", COMPLETIONS, {"model": "tiny", "prompt": []}),
        ("completions prompt [[]]", "POST", COMPLETIONS, {"model": "tiny", "prompt": [[]]}),
        ("completions prompt [-1]", "POST", COMPLETIONS, {"model": "tiny", "prompt": [-1]}),
        ("completions prompt [true]", "POST", COMPLETIONS, {"model": "tiny", "prompt": [True]}),
        (
            "completions 33 prompts (limit 32)",
            "POST",
            COMPLETIONS,
            {"model": "tiny", "prompt": ["cell"] * 33, "max_tokens": 1},
        ),
        ("completions prompt [2**40]", "POST", COMPLETIONS, {"model": "tiny", "prompt": [2**40]}),
        ("completions logprobs -1", "POST", COMPLETIONS, {"model": "tiny", "prompt": "cell", "logprobs": -1}),
        ("trace without messages", "POST", TRACE, {"model": "tiny"}),
        ("trace messages []", "POST", TRACE, {"model": "tiny", "messages": []}),
        (
            "trace guards ['chem']",
            "POST",
            TRACE,
            {"messages": [{"role": "user", "content": "cell"}], "guards": ["chem"]},
        ),
        (
            "trace over the positions",
            "POST",
            TRACE,
            {"messages": [{"role": "user", "content": "cell " * 1100}]},
        ),
        ("trace no user turn", "POST", TRACE, {"messages": [{"role": "assistant", "content": "cell"}]}),
        ("GET /../../etc/passwd", "GET", "/../../etc/passwd", None),
        ("GET /v1/../../etc/passwd (encoded)", "GET", "/v1/%2e%2e/%2e%2e/etc/passwd", None),
        ("DELETE /v1/models", "DELETE", "/v1/models", None),
        ("PUT /saeguard/trace", "PUT", TRACE, {"messages": []}),
    ]
    for name, method, path, body in errors:
        headers = {"content-type": "text/plain"} if name == "text/plain body" else None
        payload = json.dumps(chat()) if name == "text/plain body" else body
        send(probe, url, name, "error", method, path, payload, headers=headers)
    successes: list[tuple[str, str, str, Any, HttpCheck | None]] = [
        ("temperature 0 (an integer)", "POST", CHAT, chat(temperature=0), _ok_status),
        ("top_p 1 (an integer)", "POST", CHAT, chat(top_p=1), _ok_status),
        ("seed -1", "POST", CHAT, chat(seed=-1, temperature=1.0), _ok_status),
        ("stop []", "POST", CHAT, chat(stop=[]), _ok_status),
        (
            "content of emoji, zalgo, RTL and NUL",
            "POST",
            CHAT,
            chat(content="\U0001f9ec c\u0334ell \u202e\x00 gene"),
            _ok_status,
        ),
        (
            "content as text parts",
            "POST",
            CHAT,
            chat(content=[{"type": "text", "text": FLAGGED}]),
            _flagged(True),
        ),
        ("model null (the default)", "POST", CHAT, chat(model=None), _ok_status),
        ("guards [] (unguarded)", "POST", CHAT, chat(content=FLAGGED, guards=[]), _no_guards),
        (
            "logprobs with top_logprobs 3",
            "POST",
            CHAT,
            chat(logprobs=True, top_logprobs=3),
            _chat_logprobs(3),
        ),
        (
            "duplicate keys: the last wins",
            "POST",
            CHAT,
            json.dumps(chat()).replace('"max_tokens": 2', '"max_tokens": 9, "max_tokens": 2'),
            _tokens(2),
        ),
        (
            "completions echo with max_tokens 0",
            "POST",
            COMPLETIONS,
            {"model": "tiny", "prompt": "cell gene", "echo": True, "max_tokens": 0, "logprobs": 0},
            _ok_status,
        ),
        (
            "completions token ids",
            "POST",
            COMPLETIONS,
            {"model": "tiny", "prompt": [[5, 6, 7], [8, 9]], "max_tokens": 1},
            _choices(2),
        ),
        ("streamed chat ends with [DONE]", "POST", CHAT, chat(stream=True), _streamed),
    ]
    for name, method, path, body, check in successes:
        send(probe, url, name, "success", method, path, body, check=check)
    either: list[tuple[str, Any, HttpCheck | None]] = [
        (
            "guards ['bio', 'bio'] (applied once or refused)",
            chat(content=FLAGGED, guards=["bio", "bio"]),
            _one_report,
        ),
        (
            "model 'tiny+bio+bio' (applied once or refused)",
            chat(content=FLAGGED, model="tiny+bio+bio"),
            _one_report,
        ),
        ("content '' (empty)", chat(content=""), _ok_status),
        (
            "response_format json_schema (honoured or refused)",
            chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
            _json_content,
        ),
        (
            "logit_bias (honoured or refused)",
            chat(logit_bias={"5": 100}, max_tokens=3),
            _biased(ws.tok.decode([5]).strip()),
        ),
    ]
    for name, body, check in either:
        send(probe, url, name, "either", "POST", CHAT, body, check=check)


def _flagged(expected: bool) -> HttpCheck:
    def check(response: httpx.Response) -> str | None:
        flagged = response.json()["saeguard"]["flagged"]
        return None if flagged is expected else f"flagged {flagged}, expected {expected}"

    return check


def _no_guards(response: httpx.Response) -> str | None:
    reports = response.json()["saeguard"]["choices"][0]["guards"]
    return None if reports == [] else f"guards [] still applied {reports}"


def _one_report(response: httpx.Response) -> str | None:
    reports = response.json()["saeguard"]["choices"][0]["guards"]
    return None if len(reports) == 1 else f"the guard was applied {len(reports)} times"


def _chat_logprobs(top: int) -> HttpCheck:
    def check(response: httpx.Response) -> str | None:
        body = response.json()
        content = body["choices"][0]["logprobs"]["content"]
        tokens = body["usage"]["completion_tokens"]
        if len(content) != tokens or any(len(t["top_logprobs"]) != top for t in content):
            return f"{len(content)} logprob entries for {tokens} tokens"
        return None

    return check


def _tokens(n: int) -> HttpCheck:
    def check(response: httpx.Response) -> str | None:
        got = response.json()["usage"]["completion_tokens"]
        return None if got == n else f"{got} completion tokens, expected {n}"

    return check


def _choices(n: int) -> HttpCheck:
    def check(response: httpx.Response) -> str | None:
        got = len(response.json()["choices"])
        return None if got == n else f"{got} choices, expected {n}"

    return check


def _streamed(response: httpx.Response) -> str | None:
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    return None if lines and lines[-1] == "data: [DONE]" else f"stream ends {lines[-1:]}"


def _json_content(response: httpx.Response) -> str | None:
    content = response.json()["choices"][0]["message"]["content"]
    try:
        json.loads(content)
    except ValueError:
        return f"response_format ignored: content {content!r} is not JSON"
    return None


def _biased(word: str) -> HttpCheck:
    def check(response: httpx.Response) -> str | None:
        content = response.json()["choices"][0]["message"]["content"]
        honoured = content.split() and all(w == word for w in content.split())
        return None if honoured else f"logit_bias ignored: {content!r} is not only {word!r}"

    return check


def _decisions(probe: Probe, ws: Workspace, url: str) -> None:
    """The server decides as the API does, and concurrent requests do not mix."""

    def api_rho(text: str) -> float:
        return float(ws.guard.generate(ws.model, ws.tok, [text], max_new_tokens=1)[1][0].rho)

    for text in (FLAGGED, BENIGN):
        expected = api_rho(text)

        def same(response: httpx.Response, expected: float = expected) -> str | None:
            rho = response.json()["saeguard"]["choices"][0]["guards"][0]["rho"]
            return None if abs(rho - expected) < 1e-5 else f"server rho {rho} != API rho {expected}"

        send(
            probe, url, f"rho equals the API's: {text[:24]}", "success", "POST", CHAT, chat(text), check=same
        )
        refused = ws.guard.generate(ws.model, ws.tok, [text], max_new_tokens=1)[1][0].flagged

        def policy(response: httpx.Response, refused: bool = refused) -> str | None:
            choice = response.json()["choices"][0]
            got = choice["message"]["refusal"] is not None
            return None if got == refused else f"refused {got}, API flagged {refused}"

        send(
            probe,
            url,
            f"on_flag refuse follows the gate: {text[:24]}",
            "success",
            "POST",
            CHAT,
            chat(text, on_flag="refuse"),
            check=policy,
        )
    name = "8 concurrent requests equal their serial answers"
    if probe._wanted(AREA, name):
        bodies = [
            chat(FLAGGED if i % 2 else BENIGN, max_tokens=4, guards=["bio"] if i % 3 else [])
            for i in range(8)
        ]

        def answer(body: dict) -> tuple[str, bool]:
            data = httpx.post(url + CHAT, json=body, timeout=120).json()
            return data["choices"][0]["message"]["content"], data["saeguard"]["flagged"]

        serial = [answer(b) for b in bodies]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(answer, bodies))
        probe.ok(
            AREA,
            name,
            "8 chat requests, mixed guards, 2 workers",
            lambda: together,
            lambda got: None if got == serial else f"concurrent {got} != serial {serial}",
        )


def _api_key(probe: Probe, url: str) -> None:
    area = "api:server-auth"
    key_cases = [
        ("no key", None, "error"),
        ("key in the query string", None, "error"),
        ("'Bearer' of another key", "Bearer open", "error"),
        ("Basic scheme with the key", "Basic sesame", "error"),
        ("non-ASCII key", "Bearer s\u00e9same".encode(), "error"),
        ("lower-case 'bearer' and the key", "bearer sesame", "success"),
    ]
    for name, header, expect in key_cases:
        path = "/v1/models?api_key=sesame" if "query" in name else "/v1/models"
        headers = {"authorization": header} if header else None
        send(probe, url, name, expect, "GET", path, headers=headers, area=area, check=_ok_status)
    send(probe, url, "/health stays open", "success", "GET", "/health", area=area, check=_ok_status)


def _non_ascii_key(probe: Probe, ws: Workspace) -> None:
    area = "api:server-auth"
    name = "server key 'clé': requests with it"
    if not probe._wanted(area, name):
        return
    app = create_app(ws.model, ws.tok, {"bio": ws.guard}, ServerSettings(model_id="tiny", api_key="cl\u00e9"))
    with serving(app) as url:
        header = "Bearer cl\u00e9".encode()  # a client's UTF-8 bytes
        send(probe, url, name, "either", "GET", "/v1/models", headers={"authorization": header}, area=area)
        send(
            probe,
            url,
            "server key 'clé': a wrong ASCII key",
            "error",
            "GET",
            "/v1/models",
            headers={"authorization": "Bearer cle"},
            area=area,
        )
