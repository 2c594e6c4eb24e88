"""Every bad request gets OpenAI's error JSON, a 4xx naming the field, and the server stays healthy."""

from __future__ import annotations

import httpx
import pytest

from .helpers import running

OK = {"model": "tiny", "messages": [{"role": "user", "content": "the king of the city"}], "max_tokens": 2}
LONG = " ".join(["cell"] * 300)  # 300 tokens: over the tiny model's 256 positions

CHAT_CASES = {
    "malformed json": (b'{"messages": [', 400, None, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, None, "body"),
    "missing messages": ({"model": "tiny"}, 400, "messages", "messages is required"),
    "empty messages": ({**OK, "messages": []}, 400, "messages", "non-empty"),
    "content of wrong type": (
        {**OK, "messages": [{"role": "user", "content": 5}]},
        400,
        "messages",
        "messages.0",
    ),
    "unknown role": ({**OK, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages", "role"),
    "no user turn": ({**OK, "messages": [{"role": "system", "content": "hi"}]}, 400, "messages", "user turn"),
    "max_tokens as a string": ({**OK, "max_tokens": "5"}, 400, "max_tokens", "integer"),
    "max_tokens zero": ({**OK, "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    "max_tokens negative": ({**OK, "max_tokens": -3}, 400, "max_tokens", "at least 1"),
    "max_tokens over the limit": ({**OK, "max_tokens": 100_000}, 400, "max_tokens", "limit"),
    "temperature out of range": ({**OK, "temperature": 7.0}, 400, "temperature", "temperature"),
    "stream not a bool": ({**OK, "stream": "yes"}, 400, "stream", "boolean"),
    "n above 1": ({**OK, "n": 2}, 400, "n", "n must be 1"),
    "unknown guard": ({**OK, "guards": ["chemistry"]}, 400, "guards", "unknown guard 'chemistry'"),
    "guards not a list": ({**OK, "guards": "bio"}, 400, "guards", "guards"),
    "unknown guard in the alias": ({**OK, "model": "tiny+chemistry"}, 404, "model", "unknown guard"),
    "guards twice": ({**OK, "model": "tiny+bio", "guards": ["bio"]}, 400, "guards", "not both"),
    "unknown model": ({**OK, "model": "gpt-4"}, 404, "model", "does not exist"),
    "unknown policy": ({**OK, "on_flag": "delete"}, 400, "on_flag", "on_flag"),
    "prompt over the positions": (
        {**OK, "messages": [{"role": "user", "content": LONG}], "max_tokens": None},
        400,
        "messages",
        "256 positions",
    ),
    "prompt plus max_tokens over the positions": (
        {**OK, "messages": [{"role": "user", "content": " ".join(["cell"] * 200)}], "max_tokens": 100},
        400,
        "messages",
        "256 positions",
    ),
    "tools": ({**OK, "tools": [{"type": "function"}]}, 400, "tools", "tools"),
    # found by the reliability probe (docs/reliability.md)
    "model empty": ({**OK, "model": ""}, 404, "model", "does not exist"),
    "model alias without a guard": ({**OK, "model": "tiny+"}, 404, "model", "does not exist"),
    "a lone surrogate in the content": (
        b'{"model": "tiny", "messages": [{"role": "user", "content": "cell \\ud800"}]}',
        400,
        "messages",
        "unpaired surrogate",
    ),
    "seed beyond torch's range": ({**OK, "seed": 2**64, "temperature": 1.0}, 400, "seed", "seed"),
    "response_format json": (
        {**OK, "response_format": {"type": "json_object"}},
        400,
        "response_format",
        "not supported",
    ),
    "logit_bias": ({**OK, "logit_bias": {"5": 100}}, 400, "logit_bias", "not supported"),
    "presence_penalty": ({**OK, "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    "functions": ({**OK, "functions": [{"name": "f"}]}, 400, "functions", "not supported"),
}
COMPLETION_CASES = {
    "empty prompt": ({"prompt": ""}, 400, "prompt", "non-empty"),
    "prompt of wrong type": ({"prompt": {"text": "a"}}, 400, "prompt", "prompt must be a string, a list"),
    "token id outside the vocabulary": ({"prompt": [5, 99999]}, 400, "prompt", "vocabulary"),
    "prompt over the positions": ({"prompt": LONG, "max_tokens": 2}, 400, "prompt", "256 positions"),
    "max_tokens zero without echo": ({"prompt": "a poem", "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    "stream with echo": ({"prompt": "a poem", "stream": True, "echo": True}, 400, "stream", "without echo"),
    "logprobs too many": ({"prompt": "a poem", "logprobs": 50}, 400, "logprobs", "logprobs"),
    "best_of above 1": ({"prompt": "a poem", "best_of": 2}, 400, "best_of", "not supported"),
}


def _check_error(response: httpx.Response, status: int, param: str | None, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words in error["message"]
    assert error["type"] in ("invalid_request_error", "authentication_error")


def _post(url: str, path: str, body: object) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(url + path, json={k: v for k, v in body.items() if v is not None}, timeout=60)


def _healthy(url: str) -> None:
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert _post(url, "/v1/chat/completions", OK).status_code == 200


@pytest.mark.parametrize("case", CHAT_CASES)
def test_a_bad_chat_request_gets_a_4xx_naming_the_field(live, case):
    body, status, param, words = CHAT_CASES[case]
    _check_error(_post(live.url, "/v1/chat/completions", body), status, param, words)
    _healthy(live.url)


@pytest.mark.parametrize("case", COMPLETION_CASES)
def test_a_bad_completion_request_gets_a_4xx_naming_the_field(live, case):
    body, status, param, words = COMPLETION_CASES[case]
    _check_error(_post(live.url, "/v1/completions", {"model": "tiny", **body}), status, param, words)
    _healthy(live.url)


def test_an_oversize_body_gets_413_declared_or_streamed(tiny):
    model, tokenizer, guards = tiny
    big = b'{"messages": [{"role": "user", "content": "' + b"a " * 3000 + b'"}]}'
    with running(model, tokenizer, guards, max_body_bytes=4096) as server:
        _check_error(_post(server.url, "/v1/chat/completions", big), 413, None, "4096 bytes")
        chunked = httpx.post(
            f"{server.url}/v1/chat/completions",
            content=iter([big[:3000], big[3000:]]),  # no content-length: read until over the limit
            headers={"content-type": "application/json"},
        )
        _check_error(chunked, 413, None, "4096 bytes")
        _healthy(server.url)


def test_paths_methods_and_the_api_key(tiny):
    model, tokenizer, guards = tiny
    with running(model, tokenizer, guards, api_key="sesame") as server:
        _check_error(httpx.get(f"{server.url}/v2/chat"), 404, None, "no such path")
        _check_error(httpx.get(f"{server.url}/v1/completions"), 405, None, "GET is not allowed")
        _check_error(_post(server.url, "/v1/chat/completions", OK), 401, None, "API key")
        wrong = httpx.get(f"{server.url}/v1/models", headers={"authorization": "Bearer open"})
        _check_error(wrong, 401, None, "API key")
        assert httpx.get(f"{server.url}/health").status_code == 200  # health and the page stay open
        assert httpx.get(f"{server.url}/").status_code == 200
        client = server.client(api_key="sesame")
        assert client.chat.completions.create(**OK).choices[0].finish_reason == "length"


def test_the_defaults_of_unsupported_fields_are_accepted(live):
    body = {**OK, "response_format": {"type": "text"}, "presence_penalty": 0.0, "logit_bias": {}, "seed": -1}
    assert _post(live.url, "/v1/chat/completions", body).status_code == 200
    completion = {"model": "tiny", "prompt": "a poem", "max_tokens": 1, "best_of": 1}
    assert _post(live.url, "/v1/completions", completion).status_code == 200


def test_a_trace_over_the_positions_gets_a_400_not_a_trace(live):
    body = {"model": "tiny", "messages": [{"role": "user", "content": LONG}]}
    response = _post(live.url, "/saeguard/trace", body)
    _check_error(response, 400, "messages", "256 positions")
    assert response.json()["error"]["code"] == "context_length_exceeded"
    _healthy(live.url)
