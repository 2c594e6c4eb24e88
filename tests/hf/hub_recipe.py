"""The README's GPU recipe, run offline against a cache from ``saeguard.testing_hub``.

Run as ``python tests/hf/hub_recipe.py HF_HOME WORK_DIR`` (writes ``WORK_DIR/recipe.json``) with
``HubCache.environ()`` exported (huggingface_hub and datasets read it at import).
Every step goes through the hub-backed loader a user would hit; the result is a
JSON record that ``test_hub_offline.py`` checks. Steps are independent: a failing
step records its error and the others still run.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

WMDP_SPEC = "hf:cais/wmdp/wmdp-bio:test"
MMLU_SPEC = "hf:cais/mmlu/college_biology:test"
WIKITEXT_SPEC = "hf:Salesforce/wikitext/wikitext-2-raw-v1:train"
#: Inputs that must fail offline with one line: name -> (loader, input, a fragment of the message).
BAD_INPUTS = {
    "model_not_cached": ("model", "google/gemma-2-9b-it", "could not load model 'google/gemma-2-9b-it'"),
    "sae_release_wrong_width": (
        "sae",
        "gemma-scope-2b-pt-res:layer_3/width_16k/average_l0_142",
        "size mismatch for b_dec",
    ),
    "sae_id_not_in_release": ("sae", "gemma-scope-2b-pt-res:layer_3/width_16k/nope", "not found in release"),
    "sae_not_cached": ("sae", "gemma-scope-2b-pt-res:layer_4/width_16k/average_l0_125", "local cache"),
    "corpus_config_not_cached": (
        "corpus",
        "hf:Salesforce/wikitext/wikitext-103-raw-v1:train",
        "Available configs in the cache: ['wikitext-2-raw-v1']",
    ),
    "corpus_split_missing": ("corpus", "hf:Salesforce/wikitext/wikitext-2-raw-v1:validation", "Bad split"),
    "corpus_field_missing": (
        "corpus",
        "hf:Salesforce/wikitext/wikitext-2-raw-v1:train:body",
        "column 'body'",
    ),
    "mcq_config_not_cached": ("mcq", "hf:cais/wmdp/wmdp-cyber:test", "config 'wmdp-cyber'"),
    "mcq_split_missing": ("mcq", "hf:cais/wmdp/wmdp-bio:train", 'Unknown split "train"'),
    "mcq_repo_not_cached": ("mcq", "hf:nobody/nothing/x:test", "Couldn't reach 'nobody/nothing'"),
    "lm_eval_config_not_cached": ("lm_eval", "wmdp_cyber", "config 'wmdp-cyber'"),
    "lm_eval_repo_not_cached": ("lm_eval", "saeguard_missing_repo", "Couldn't reach 'nobody/nothing'"),
}
MISSING_REPO_TASK = """task: saeguard_missing_repo
dataset_path: nobody/nothing
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
"""


def _step(record: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        value = fn()
    except BaseException as error:  # noqa: BLE001 - recorded for the test to show
        record[name] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc(limit=-4)}
        return None
    record[name] = {"value": value, "seconds": round(time.perf_counter() - started, 2)}
    return value


def _cli(args: list[str]) -> dict[str, Any]:
    """``saeguard ARGS`` in this process (so the Gemma Scope override applies); exit code and output."""
    from saeguard.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["saeguard", *args]
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run(home: Path, work: Path) -> dict[str, Any]:
    """Every hub-backed path of the recipe over the cache in ``home``; outputs go to ``work``."""
    import lm_eval
    import torch
    from lm_eval.api.instance import Instance

    from saeguard import Guardrail
    from saeguard.core.sae import load_sae, sae_fingerprint, sae_hook_name
    from saeguard.errors import SaeguardError
    from saeguard.eval.items import load_mcq
    from saeguard.eval.lm_eval_adapter import guarded_lm, run_lm_eval
    from saeguard.eval.mcq import evaluate_mcq
    from saeguard.hf.corpus import iter_documents
    from saeguard.hf.fingerprint import tensors_fingerprint
    from saeguard.hf.models import load_model
    from saeguard.testing_hub import (
        GEMMA_SCOPE_RELEASE,
        LAYER,
        MODEL_REPO,
        SAE_ID,
        SAELENS_REPO,
        tiny_gemma_scope,
    )

    record: dict[str, Any] = {}
    loaded = load_model(MODEL_REPO)
    model, tok = loaded
    record["model"] = {
        "class": type(model).__name__,
        "fingerprint": tensors_fingerprint(model.state_dict()),
        "chat": tok.apply_chat_template([{"role": "user", "content": "the cell "}], tokenize=False),
    }
    model_bf16, _ = load_model(MODEL_REPO, dtype=torch.bfloat16)

    def sae_facts(spec: str) -> dict[str, Any]:
        sae = load_sae(spec)
        return {
            "architecture": str(sae.cfg.architecture()),
            "d_in": int(sae.cfg.d_in),
            "d_sae": int(sae.cfg.d_sae),
            "hook_name": sae_hook_name(sae),
            "fingerprint": sae_fingerprint(sae),
        }

    gemma_scope = f"{GEMMA_SCOPE_RELEASE}:{SAE_ID}"
    with tiny_gemma_scope():
        _step(record, "sae_gemma_scope", lambda: sae_facts(gemma_scope))
    _step(record, "sae_saelens_repo", lambda: sae_facts(f"{SAELENS_REPO}:{SAE_ID}"))
    _step(record, "wikitext", lambda: list(iter_documents(WIKITEXT_SPEC)))
    wmdp = _step(record, "wmdp", lambda: [i.to_dict() for i in load_mcq(WMDP_SPEC)])
    _step(record, "mmlu", lambda: [i.to_dict() for i in load_mcq(MMLU_SPEC)])

    guards: dict[str, Any] = {}

    def fit(name: str, lm: Any) -> dict[str, Any]:
        with tiny_gemma_scope():  # the README's call, verbatim but for n_features (d_sae is 64)
            guard = Guardrail.fit(
                lm,
                tok,
                gemma_scope,
                forget=str(home / "bio_forget.jsonl"),
                retain=WIKITEXT_SPEC,
                layer=LAYER,
                n_features=1,
                ratio_percentile=95,
                clamp=500,
                seq_len=1024,
                show_progress=False,
            )
        guard.save(work / name)
        guards[name] = Guardrail.load(work / name, lm)
        return {"latent_ids": guards[name].latents.ids.tolist(), "tau": float(guards[name].tau)}

    _step(record, "fit", lambda: fit("guard", model))
    _step(record, "fit_bf16", lambda: fit("guard_bf16", model_bf16))

    def evaluate(spec: str, lm: Any, guard: Any) -> dict[str, Any]:
        items = load_mcq(spec)
        base = evaluate_mcq(lm, tok, items, show_progress=False)
        guarded = evaluate_mcq(lm, tok, items, guard=guard, show_progress=False)
        return {
            "base_accuracy": base.accuracy,
            "guarded_accuracy": guarded.accuracy,
            "flagged": [p.flagged for p in guarded.predictions],
            "scores_changed": [
                p.scores != q.scores for p, q in zip(base.predictions, guarded.predictions, strict=True)
            ],
        }

    for name, lm, guard_name in (("", model, "guard"), ("_bf16", model_bf16, "guard_bf16")):
        for set_name, spec in (("wmdp", WMDP_SPEC), ("mmlu", MMLU_SPEC)):
            _step(
                record, f"eval_{set_name}{name}", lambda s=spec, m=lm, g=guard_name: evaluate(s, m, guards[g])
            )

    tasks = Path(lm_eval.__file__).parent / "tasks"
    include = [tasks / "wmdp", tasks / "mmlu" / "default", home / "lm_eval_tasks"]
    names = ["wmdp_bio", "mmlu_college_biology", "saeguard_local_wmdp"]
    _step(
        record,
        "lm_eval",
        lambda: (
            run_lm_eval(model, tok, names, guard=guards["guard"], include_path=include, batch_size=4).results
        ),
    )

    def loglikelihoods(guard: Any) -> list[float]:
        contexts = [
            f"{row['question']}\n"
            + "".join(f"{k}. {c}\n" for k, c in zip("ABCD", row["choices"], strict=True))
            + "Answer:"
            for row in (wmdp or [])[:2]
        ] + ["the king of the city and the river\nAnswer:"]
        lm = guarded_lm(model, tok, guard, batch_size=2)
        requests = [Instance("loglikelihood", {}, (ctx, " A"), idx) for idx, ctx in enumerate(contexts)]
        return [float(ll) for ll, _ in lm.loglikelihood(requests)]

    _step(record, "lm_eval_loglikelihood_plain", lambda: loglikelihoods(None))
    _step(record, "lm_eval_loglikelihood_guarded", lambda: loglikelihoods(guards["guard"]))

    def cli() -> dict[str, Any]:
        sae = f"{SAELENS_REPO}:{SAE_ID}"
        fitted = _cli(
            ["fit", "--model", MODEL_REPO, "--sae", sae, "--forget", str(home / "bio_forget.jsonl")]
            + ["--retain", WIKITEXT_SPEC, "--layer", str(LAYER), "-n", "1", "-o", str(work / "cli_guard")]
        )
        evaluated = _cli(
            ["eval", "--model", MODEL_REPO, "--guard", str(work / "cli_guard"), "--no-known"]
            + ["--mcq", WMDP_SPEC, "--mcq", MMLU_SPEC]
        )
        return {"fit": fitted, "eval": evaluated}

    _step(record, "cli", cli)

    (work / "bad_tasks").mkdir()
    (work / "bad_tasks" / "missing_repo.yaml").write_text(MISSING_REPO_TASK)
    loaders = {
        "model": load_model,
        "sae": load_sae,
        "corpus": lambda spec: list(iter_documents(spec)),
        "mcq": load_mcq,
        "lm_eval": lambda task: run_lm_eval(
            model, tok, [task], include_path=[tasks / "wmdp", work / "bad_tasks"], batch_size=4
        ),
    }

    def bad(kind: str, spec: str) -> str:
        try:
            loaders[kind](spec)
        except SaeguardError as error:
            return f"SaeguardError: {error}"
        return "no error"

    for name, (kind, spec, _) in BAD_INPUTS.items():
        _step(record, f"bad_{name}", lambda k=kind, s=spec: bad(k, s))
    return record


if __name__ == "__main__":
    started = time.perf_counter()
    home, work = Path(sys.argv[1]), Path(sys.argv[2])
    result = run(home, work)
    result["seconds"] = round(time.perf_counter() - started, 1)
    (work / "recipe.json").write_text(json.dumps(result, indent=1, default=str))
