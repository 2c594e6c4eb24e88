"""Chat completions through the official OpenAI client: text and decision equal guard.generate's."""

from __future__ import annotations

import json

import httpx
import pytest

from saeguard.server.responses import DECISION_HEADER

from .helpers import BENIGN, FLAGGED, running

TOKENS = 6


def _ask(client, prompt, **kwargs):
    return client.chat.completions.create(
        model=kwargs.pop("model", "tiny"),
        messages=[{"role": "user", "content": prompt}],
        max_tokens=TOKENS,
        **kwargs,
    )


@pytest.mark.parametrize("prompt", FLAGGED[:2] + BENIGN[:2])
def test_chat_text_and_decision_equal_guard_generate(live, prompt):
    guard = live.guards["bio"]
    texts, records = guard.generate(live.model, live.tokenizer, [prompt], max_new_tokens=TOKENS)
    response = _ask(live.client(), prompt, extra_body={"guards": ["bio"]})
    assert response.choices[0].message.content == texts[0]
    [report] = response.saeguard["choices"][0]["guards"]
    assert report["name"] == "bio"
    assert report["flagged"] == bool(records[0].prompt_flagged[0]) == (prompt in FLAGGED)
    assert report["rho"] == pytest.approx(float(records[0].rho[0]), abs=1e-12)
    assert report["tau"] == guard.tau
    assert response.saeguard["flagged"] == (prompt in FLAGGED)
    assert response.usage.completion_tokens == TOKENS
    # clamped: the prompt's decision, or a flip while the answer was generated (new-user pass finding)
    assert report["clamped"] == (report["flagged"] or report["flipped_at"] is not None)
    assert report["clamped"] == bool(records[-1].flagged[0])  # the last forward: sticky decision


def test_a_passed_prompt_clamped_while_generating_reports_clamped():
    from saeguard.server.schemas import GuardReport

    report = GuardReport(name="bio", rho=0.1, tau=0.5, flagged=False, flipped_at=6)
    assert report.model_dump()["clamped"] is True
    assert GuardReport(name="bio", rho=0.1, tau=0.5, flagged=False).model_dump()["clamped"] is False


def test_the_clamp_changes_the_answer_of_a_flagged_prompt_only(live):
    client = live.client()
    for prompt in (FLAGGED[0], BENIGN[0]):
        guarded = _ask(client, prompt, model="tiny+bio").choices[0].message.content
        plain = _ask(client, prompt, model="tiny+none").choices[0].message.content
        expected = live.guards["bio"].generate(
            live.model, live.tokenizer, [prompt], max_new_tokens=TOKENS, guarded=False
        )[0]
        assert plain == expected[0]
        assert (guarded != plain) == (prompt in FLAGGED)


def test_a_whole_conversation_is_judged_every_user_turn_counts(live):
    conversation = [
        {"role": "user", "content": "the king of the city"},
        {"role": "assistant", "content": "a poem"},
        {"role": "user", "content": "the cell virus gene protein dna"},
    ]
    guard = live.guards["bio"]
    texts, records = guard.generate(live.model, live.tokenizer, [conversation], max_new_tokens=TOKENS)
    response = live.client().chat.completions.create(
        model="tiny+bio", messages=conversation, max_tokens=TOKENS
    )
    [report] = response.saeguard["choices"][0]["guards"]
    assert response.choices[0].message.content == texts[0]
    assert report["rho"] == pytest.approx(float(records[0].rho[0]), abs=1e-12)
    assert report["flagged"]


def test_guards_are_chosen_by_alias_or_body_and_default_to_all(live):
    client = live.client()
    cases = {
        "default": ({}, ["bio", "lore"]),
        "alias": ({"model": "tiny+lore"}, ["lore"]),
        "alias pair": ({"model": "tiny+lore+bio"}, ["lore", "bio"]),
        "body": ({"extra_body": {"guards": ["bio"]}}, ["bio"]),
        "none": ({"extra_body": {"guards": []}}, []),
        "alias none": ({"model": "tiny+none"}, []),
    }
    for name, (kwargs, expected) in cases.items():
        response = _ask(client, FLAGGED[0], **kwargs)
        assert [g["name"] for g in response.saeguard["choices"][0]["guards"]] == expected, name
    # guards apply in order: lore first reads the unclamped states, so each decides as if alone
    reports = _ask(client, FLAGGED[2], model="tiny+lore+bio").saeguard["choices"][0]["guards"]
    assert [(r["name"], r["flagged"]) for r in reports] == [("lore", False), ("bio", True)]
    [alone] = _ask(client, FLAGGED[2], model="tiny+lore").saeguard["choices"][0]["guards"]
    assert alone["rho"] == reports[0]["rho"]
    models = [m.id for m in client.models.list().data]
    assert models == ["tiny", "tiny+bio", "tiny+lore", "tiny+none"]


def test_refuse_policy_returns_the_refusal_without_generating(live, tiny):
    model, tokenizer, guards = tiny
    client = live.client()
    refused = _ask(client, FLAGGED[0], model="tiny+bio", extra_body={"on_flag": "refuse"})
    assert refused.choices[0].finish_reason == "content_filter"
    assert refused.choices[0].message.content == refused.choices[0].message.refusal
    assert refused.usage.completion_tokens == 0 and refused.saeguard["choices"][0]["refused"]
    passed = _ask(client, BENIGN[0], model="tiny+bio", extra_body={"on_flag": "refuse"})
    assert passed.choices[0].finish_reason == "length" and not passed.saeguard["choices"][0]["refused"]
    with running(model, tokenizer, guards, on_flag="refuse", refusal="No.") as server:
        strict = server.client()
        assert _ask(strict, FLAGGED[0]).choices[0].message.content == "No."
        clamped = _ask(strict, FLAGGED[0], extra_body={"on_flag": "clamp"})
        assert clamped.choices[0].message.content == _ask(client, FLAGGED[0]).choices[0].message.content


def test_streaming_equals_the_whole_answer_and_reports_the_decision(live):
    client = live.client()
    for prompt in (FLAGGED[0], BENIGN[0]):
        whole = _ask(client, prompt, model="tiny+bio")
        with client.chat.completions.with_streaming_response.create(
            model="tiny+bio",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        ) as raw:
            header = raw.headers[DECISION_HEADER]
            chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert header.startswith(f"bio;flagged={int(prompt in FLAGGED)};rho=")
        assert chunks[0].saeguard == chunks[-2].saeguard == whole.saeguard
        assert chunks[-2].choices[0].finish_reason == "length"
        assert chunks[-1].usage.completion_tokens == TOKENS


def test_a_refused_stream_sends_only_the_refusal(live):
    stream = live.client().chat.completions.create(
        model="tiny+bio",
        messages=[{"role": "user", "content": FLAGGED[1]}],
        max_tokens=TOKENS,
        stream=True,
        extra_body={"on_flag": "refuse"},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "I can't help with that request."
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_stop_strings_cut_the_answer_streamed_or_not(live):
    client = live.client()
    full = _ask(client, BENIGN[0], model="tiny+none").choices[0].message.content
    word = full.split()[2]
    cut = _ask(client, BENIGN[0], model="tiny+none", stop=[word])
    assert cut.choices[0].message.content == full[: full.index(word)]
    assert cut.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="tiny+none",
        messages=[{"role": "user", "content": BENIGN[0]}],
        max_tokens=TOKENS,
        stop=word,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == full[: full.index(word)]


def test_logprobs_of_the_answer(live):
    response = _ask(live.client(), BENIGN[1], model="tiny+bio", logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert len(content) == TOKENS
    for entry in content:  # greedy: the chosen token is the most likely one
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    assert "".join(e.token for e in content).replace(" ", "") == response.choices[0].message.content.replace(
        " ", ""
    )


def test_decision_header_health_and_metrics(live):
    body = {"model": "tiny", "messages": [{"role": "user", "content": FLAGGED[0]}], "max_tokens": 2}
    response = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=60)
    entries = response.headers[DECISION_HEADER].split(", ")
    reports = response.json()["saeguard"]["choices"][0]["guards"]
    assert [e.split(";")[0] for e in entries] == ["bio", "lore"]
    assert entries[0] == f"bio;flagged=1;rho={reports[0]['rho']:.4f};tau={reports[0]['tau']:.4f}"
    health = httpx.get(f"{live.url}/health").json()
    assert health["status"] == "ok" and health["guards"] == ["bio", "lore"]
    metrics = httpx.get(f"{live.url}/metrics").text
    assert 'saeguard_requests_total{route="/v1/chat/completions",status="200"}' in metrics
    fraction = next(
        line
        for line in metrics.splitlines()
        if line.startswith('saeguard_guard_flagged_fraction{guard="bio"}')
    )
    assert 0.0 < float(fraction.split()[-1]) < 1.0
    assert "saeguard_request_seconds_bucket" in metrics
    assert json.loads(response.text)["model"] == "tiny"
