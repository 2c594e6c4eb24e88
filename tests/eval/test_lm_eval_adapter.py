"""lm-eval through the guarded model, offline: a local task YAML over a local jsonl."""

from __future__ import annotations

import json

import pytest
import torch

from saeguard import SaeguardError, token_scope
from saeguard.eval.items import question_text
from saeguard.eval.lm_eval_adapter import guarded_lm
from saeguard.eval.mcq import McqConfig, evaluate_mcq
from saeguard.testing import EVAL_VOCAB, make_guard, make_items, make_tokenizer, tiny_llama

pytest.importorskip("lm_eval")

TASK = """task: saeguard_local_mcq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "The following are multiple choice questions (with answers) about {{{{subject}}}}.\\n\\
{{{{question}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\n\\
C. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    items = make_items(8)
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item.to_dict()) + "\n" for item in items))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(TASK.format(data=data))
    return items, tmp_path / "tasks"


@torch.no_grad()
def _direct_accuracy(model, tok, items):
    """lm-eval's semantics by hand: sum log-likelihood of ' choice', input = (ctx + cont)[:-1].

    The gate (if attached) decides on the context tokens and keeps that decision for the choice.
    """
    correct = 0
    for item in items:
        context = question_text(item) + "\nAnswer:"
        n_ctx = len(tok(context)["input_ids"])
        scores = []
        for choice in item.choices:
            ids = tok(context + " " + choice)["input_ids"]
            counted = torch.arange(len(ids) - 1).unsqueeze(0) < n_ctx
            with token_scope(counted, [n_ctx], freeze=True):
                logits = model(input_ids=torch.tensor([ids[:-1]])).logits
            log_probs = torch.log_softmax(logits[0].float(), -1)
            scores.append(sum(float(log_probs[t - 1, ids[t]]) for t in range(n_ctx, len(ids))))
        correct += int(max(range(4), key=lambda k: scores[k]) == item.answer)
    return correct / len(items)


def test_adapter_matches_our_harness_and_runs_the_guard(llama, tok, local_task, tmp_path):
    from saeguard.eval.lm_eval_adapter import run_lm_eval

    items, task_dir = local_task
    plain = run_lm_eval(
        llama,
        tok,
        ["saeguard_local_mcq"],
        include_path=task_dir,
        batch_size=4,
        output=tmp_path / "lm_eval.json",
    )
    ours = evaluate_mcq(
        llama,
        tok,
        items,
        show_progress=False,
        config=McqConfig(scorer="cloze", chat=False, normalization="none"),
    )
    assert plain.metric("saeguard_local_mcq", "acc") == pytest.approx(ours.accuracy)
    assert json.loads((tmp_path / "lm_eval.json").read_text())["kind"] == "saeguard-lm-eval"

    guard = make_guard(llama, tok, ids=(7,), tau=0.5, clamp_value=300.0)
    attached = []
    original = guard.attached
    guard.attached = lambda model, **kw: attached.append(1) or original(model, **kw)
    guarded = run_lm_eval(
        llama, tok, ["saeguard_local_mcq"], include_path=task_dir, guard=guard, batch_size=4
    )
    assert attached and guarded.guard["tau"] == 0.5
    with original(llama):
        expected = _direct_accuracy(llama, tok, items)
    assert guarded.metric("saeguard_local_mcq", "acc") == pytest.approx(expected)
    assert _direct_accuracy(llama, tok, items) == pytest.approx(ours.accuracy)  # guard detached again


def test_loglikelihood_and_gate_do_not_depend_on_the_batch_size(llama, tok):
    """Regression (issue 11 §2): B=1 vs B=4 gave rho 0.385 vs 0.5 and -9.619 vs -9.581 when padding counted.

    A GPT-2-style tokenizer: pad = eos, and id 0 is a real token that right-padding would repeat.
    """
    from saeguard.eval.lm_eval_adapter import score_requests

    gpt2_style = make_tokenizer(vocab=EVAL_VOCAB)
    gpt2_style.pad_token = gpt2_style.eos_token
    guard = make_guard(llama, gpt2_style, ids=(7,), tau=0.3, clamp_value=300.0)
    requests = [
        (gpt2_style(c)["input_ids"], gpt2_style(" " + a)["input_ids"])
        for c, a in [
            ("what is the cell virus gene", "protein"),
            ("the king of the city", "river mountain castle"),
            ("a poem about the dna in a cell membrane and the king of a river", "ocean"),
            ("what", "enzyme bacteria"),
        ]
    ]
    results = {}
    for size in (1, 4):
        with guard.attached(llama) as hook:
            hook.recording = True
            scores = score_requests(llama, requests, 256, size, gpt2_style.pad_token_id)
            rho = sorted(float(r) for record in hook.records for r in record.rho)
        results[size] = (scores, rho)
    assert [s for s, _ in results[1][0]] == pytest.approx([s for s, _ in results[4][0]], abs=1e-5)
    assert results[1][1] == pytest.approx(results[4][1], abs=1e-12)
    with guard.attached(llama):
        guarded = score_requests(llama, requests, 256, 4, gpt2_style.pad_token_id)
    plain = score_requests(llama, requests, 256, 4, gpt2_style.pad_token_id)
    assert guarded != plain  # the guard acted on some request


def test_judging_the_request_also_reads_the_continuation(llama, tok):
    """judge="request" (a server's view over HTTP) flags a request whose evidence is in the continuation."""
    from saeguard.eval.lm_eval_adapter import score_requests

    guard = make_guard(llama, tok, ids=(7,), tau=0.3, clamp_value=300.0)
    # latent 7 of this random guard fires on none of the context's words and on each of the continuation's
    context, continuation = (
        tok("cell virus gene protein")["input_ids"],
        tok(" poem novel ocean trade")["input_ids"],
    )
    scores = {}
    for judge in ("context", "request"):
        with guard.attached(llama) as hook:
            hook.recording = True
            scores[judge] = score_requests(llama, [(context, continuation)], 256, 1, 0, judge=judge)
            flagged = bool(hook.records[0].prompt_flagged[0])
        assert flagged == (judge == "request")
    assert scores["request"] != scores["context"]
    with pytest.raises(SaeguardError, match="unknown judge"):
        score_requests(llama, [(context, continuation)], 256, 1, 0, judge="answer")


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (lambda: tiny_llama(hidden_size=48), "hidden size 32, this model has 48"),
        (lambda: tiny_llama(layers=1), "this model has 1"),
    ],
)
def test_guarded_lm_refuses_a_guard_of_another_model_before_any_request(other, message):
    guard = make_guard(None, make_tokenizer(), layer=1)
    with pytest.raises(SaeguardError, match=message):
        guarded_lm(other(), make_tokenizer(), guard)
