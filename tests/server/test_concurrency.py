"""Concurrent requests never share gate state; the queue is bounded; a client may leave mid-stream."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx

from saeguard.testing import tiny_llama

from .helpers import BENIGN, FLAGGED, running

THREADS, PER_THREAD = 8, 10


def _request(index: int) -> tuple[str, dict]:
    """A mix of flagged and benign prompts, guard choices, policies, endpoints and streaming."""
    prompt = (FLAGGED + BENIGN)[index % 6]
    guards = [["bio"], ["lore"], ["bio", "lore"], []][index % 4]
    if index % 5 == 4:
        return "/v1/completions", {"prompt": prompt, "max_tokens": 4 + index % 3, "guards": guards}
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4 + index % 3,
        "guards": guards,
        "on_flag": "refuse" if index % 7 == 3 else "clamp",
        "stream": index % 3 == 1,
    }
    return "/v1/chat/completions", body


def _result(client: httpx.Client, index: int) -> tuple[str, object]:
    """(text, decisions) of request ``index``, read from the body or the stream's chunks."""
    path, body = _request(index)
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        data = response.json()
        choice = data["choices"][0]
        return choice.get("text", choice.get("message", {}).get("content")), data["saeguard"]
    parsed = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in parsed if c["choices"])
    return text, parsed[-1]["saeguard"]


def test_concurrent_requests_equal_their_serial_runs(live):
    count = THREADS * PER_THREAD
    with httpx.Client(base_url=live.url, timeout=120) as client:
        serial = [_result(client, i) for i in range(count)]
    results: list[tuple[str, object] | None] = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(offset: int) -> None:
        with httpx.Client(base_url=live.url, timeout=120) as client:
            barrier.wait()
            try:
                for index in range(offset, count, THREADS):
                    results[index] = _result(client, index)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert results == serial
    flagged = [s for _, s in serial if s["flagged"]]
    assert 0 < len(flagged) < count  # the mix really holds both


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _queue_empty(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health").json()["queue"] == 0:
            return True
        time.sleep(0.02)
    return False


def test_a_full_queue_answers_503_and_a_client_leaving_mid_stream_stops_its_generation(tiny):
    """A long generation (4,000 tokens, seconds) holds the only worker until its client leaves."""
    _, tokenizer, _ = tiny
    model = tiny_llama(max_positions=4096)
    long = {"messages": [{"role": "user", "content": BENIGN[0]}], "max_tokens": 4000, "stream": True}
    with running(model, tokenizer, {}, workers=1, queue_size=0, max_tokens=4000) as server:
        with (
            httpx.Client(base_url=server.url, timeout=60) as client,
            client.stream("POST", "/v1/chat/completions", json=long) as stream,
        ):
            lines = stream.iter_lines()  # kept: dropping a half-read iterator closes the connection
            assert next(lines).startswith("data: ")  # running: the only worker is taken
            busy = httpx.post(f"{server.url}/v1/chat/completions", json={**long, "stream": False})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "server_busy"
        # the client closed the stream after one chunk: the generation stops, the worker is free
        assert _queue_empty(server.url)
        assert _metric(server.url, "saeguard_generated_tokens_total") < 4000
        ok = httpx.post(f"{server.url}/v1/chat/completions", json={**long, "stream": False, "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_a_slow_reader_does_not_block_other_requests(tiny):
    model, tokenizer, guards = tiny
    long = {"messages": [{"role": "user", "content": FLAGGED[0]}], "max_tokens": 60, "stream": True}
    with (
        running(model, tokenizer, guards, workers=2) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=long) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)  # read one chunk, then stall while another request runs
        quick = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": BENIGN[0]}], "max_tokens": 3},
            timeout=60,
        )
        assert quick.status_code == 200
        assert [line for line in lines if line][-1] == "data: [DONE]"
        assert _queue_empty(server.url)
