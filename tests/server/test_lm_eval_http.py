"""lm-eval's local-completions against the server equals the in-process guarded_lm(judge="request")."""

from __future__ import annotations

import json

import pytest

from saeguard.testing import eval_llama, eval_tokenizer, make_guard, make_items

from .helpers import running

lm_eval = pytest.importorskip("lm_eval")

TASK = """task: saeguard_http_mcq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\n\\
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
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item.to_dict()) + "\n" for item in make_items(6)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "http.yaml").write_text(TASK.format(data=data))
    return tmp_path / "tasks"


def _evaluate(lm, task_dir):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(task_dir)], include_defaults=False)
    raw = lm_eval.simple_evaluate(
        model=lm, tasks=["saeguard_http_mcq"], task_manager=manager, log_samples=True
    )
    samples = raw["samples"]["saeguard_http_mcq"]
    # resps: per answer option [[loglikelihood, is_greedy]] (or [loglikelihood] when unpacked)
    scores = [resp[0] for sample in sorted(samples, key=lambda s: s["doc_id"]) for resp in sample["resps"]]
    scores = [s[0] if isinstance(s, (list, tuple)) else s for s in scores]
    return raw["results"]["saeguard_http_mcq"]["acc,none"], [float(s) for s in scores]


def test_local_completions_over_http_matches_in_process_guarded_lm(local_task, tmp_path):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from saeguard.eval.lm_eval_adapter import guarded_lm

    model, tokenizer = eval_llama(), eval_tokenizer()
    guard = make_guard(model, tokenizer, ids=(7,), tau=0.3, clamp_value=300.0)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    local_acc, local = _evaluate(
        guarded_lm(model, tokenizer, guard, batch_size=4, judge="request"), local_task
    )
    _, unguarded = _evaluate(guarded_lm(model, tokenizer, None, batch_size=4), local_task)
    with running(model, tokenizer, {"g": guard}) as server:
        remote = LocalCompletionsAPI(
            base_url=f"{server.url}/v1/completions",
            model="tiny+g",
            tokenizer_backend="huggingface",
            tokenizer=str(folder),
            max_retries=1,
        )
        remote_acc, scores = _evaluate(remote, local_task)
    assert len(scores) == len(local) == 6 * 4  # items x answer options
    assert scores == pytest.approx(local, abs=1e-4)
    assert remote_acc == pytest.approx(local_acc)
    assert scores != pytest.approx(unguarded, abs=1e-4)  # the guard acted on some requests
