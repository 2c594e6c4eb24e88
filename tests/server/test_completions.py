"""Completions: plain prompts as guard.generate(chat=False); echo + logprobs score as judge="request"."""

from __future__ import annotations

import pytest

from saeguard.eval.lm_eval_adapter import score_requests

from .helpers import BENIGN, FLAGGED

TOKENS = 5


@pytest.mark.parametrize("prompt", [FLAGGED[0], BENIGN[0]])
def test_completion_text_and_decision_equal_guard_generate_without_template(live, prompt):
    guard = live.guards["bio"]
    texts, records = guard.generate(live.model, live.tokenizer, [prompt], chat=False, max_new_tokens=TOKENS)
    response = live.client().completions.create(model="tiny+bio", prompt=prompt, max_tokens=TOKENS)
    assert response.choices[0].text == texts[0]
    [report] = response.saeguard["choices"][0]["guards"]
    assert report["flagged"] == bool(records[0].prompt_flagged[0]) == (prompt in FLAGGED)
    assert report["rho"] == pytest.approx(float(records[0].rho[0]), abs=1e-12)


def test_several_prompts_give_one_choice_each_as_if_alone(live):
    client = live.client()
    prompts = [FLAGGED[1], BENIGN[1], FLAGGED[2]]
    batch = client.completions.create(model="tiny+bio", prompt=prompts, max_tokens=TOKENS)
    for index, prompt in enumerate(prompts):
        alone = client.completions.create(model="tiny+bio", prompt=prompt, max_tokens=TOKENS)
        assert batch.choices[index].index == index
        assert batch.choices[index].text == alone.choices[0].text
        assert batch.saeguard["choices"][index]["guards"] == alone.saeguard["choices"][0]["guards"]


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


@pytest.mark.parametrize(
    ("context", "continuation"),
    [
        ("the king of the", " cell virus gene protein"),
        ("what is the cell virus", " gene"),
        ("a poem", " river"),
    ],
)
def test_echo_logprobs_equal_in_process_scoring_of_the_whole_request(live, context, continuation):
    """The server judges all of (context + continuation)[:-1], frozen: score_requests(judge="request")."""
    model, tokenizer, guard = live.model, live.tokenizer, live.guards["bio"]
    context_ids, continuation_ids = _ids(tokenizer, context), _ids(tokenizer, continuation)
    with guard.hook().session(model):
        [(expected, greedy)] = score_requests(
            model, [(context_ids, continuation_ids)], 256, 1, tokenizer.pad_token_id, judge="request"
        )
    response = live.client().completions.create(
        model="tiny+bio",
        prompt=[context_ids + continuation_ids],
        max_tokens=1,
        echo=True,
        logprobs=1,
        temperature=0,
    )
    logprobs = response.choices[0].logprobs
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert len(logprobs.token_logprobs) == len(context_ids) + len(continuation_ids) + 1
    scored = logprobs.token_logprobs[len(context_ids) : -1]
    assert sum(scored) == pytest.approx(expected, abs=1e-4)
    tops = logprobs.top_logprobs[len(context_ids) : -1]
    assert all(lp == pytest.approx(max(top.values())) for lp, top in zip(scored, tops, strict=True)) == greedy


def test_echo_with_max_tokens_zero_scores_only(live):
    ids = _ids(live.tokenizer, "what is the cell virus gene")
    response = live.client().completions.create(
        model="tiny+bio", prompt=[ids], max_tokens=0, echo=True, logprobs=0
    )
    assert len(response.choices[0].logprobs.token_logprobs) == len(ids)
    assert response.usage.completion_tokens == 0
    assert response.saeguard["choices"][0]["guards"][0]["flagged"]


def test_streamed_completion_equals_the_whole_one(live):
    client = live.client()
    whole = client.completions.create(model="tiny+bio", prompt=FLAGGED[0], max_tokens=TOKENS)
    stream = client.completions.create(model="tiny+bio", prompt=FLAGGED[0], max_tokens=TOKENS, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
