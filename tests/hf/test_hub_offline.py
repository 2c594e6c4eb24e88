"""The README's hub recipe, offline: a tiny Gemma-2, Gemma Scope, WMDP/MMLU/wikitext, lm-eval (issue 11 §7).

``saeguard.testing_hub`` lays the resources out as huggingface_hub and datasets
cache them; ``hub_recipe.py`` runs fit, eval, lm-eval and the CLI on them in a
subprocess with ``HF_HUB_OFFLINE=1`` (the libraries read it at import), once per
module. The layout itself is checked in-process against huggingface_hub's own
cache scanner.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saeguard.core.sae import sae_fingerprint
from saeguard.errors import SaeguardError
from saeguard.hf.fingerprint import tensors_fingerprint
from saeguard.testing import COMMON_WORDS, FORGET_WORDS, PLANTED_LATENT, RETAIN_WORDS, corpus
from saeguard.testing_hub import (
    GEMMA_SCOPE_REPO,
    MODEL_REPO,
    SAE_ID,
    SAELENS_REPO,
    HubCache,
    build_hub_cache,
    gemma_tokenizer,
    mcq_rows,
    planted_pair,
    write_snapshot,
)

pytest.importorskip("lm_eval")
pytest.importorskip("datasets")

RECIPE = Path(__file__).with_name("hub_recipe.py")


def _bad_inputs() -> dict[str, tuple[str, str, str]]:
    """``hub_recipe.BAD_INPUTS``, read by path (tests/hf may or may not be a package)."""
    spec = importlib.util.spec_from_file_location("hub_recipe", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BAD_INPUTS


BAD_INPUTS = _bad_inputs()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> HubCache:
    return build_hub_cache(tmp_path_factory.mktemp("hf") / "home")


@pytest.fixture(scope="module")
def recipe(hub: HubCache, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("recipe")
    env = {**os.environ, **hub.environ(), "OMP_NUM_THREADS": "1", "SAEGUARD_CACHE": str(work / "cache")}
    proc = subprocess.run(
        [sys.executable, str(RECIPE), str(hub.root), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((work / "recipe.json").read_text())


def step(recipe: dict[str, Any], name: str) -> Any:
    """A recipe step's value; a failed step fails the test with the step's traceback."""
    entry = recipe[name]
    assert "error" not in entry, f"{name}: {entry.get('error')}\n{entry.get('trace')}"
    return entry["value"]


# -- the cache layout, in-process --------------------------------------------------------------------
def test_snapshot_names_blobs_as_the_hub_does(tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path, "org/name", {"a/notes.txt": b"hello\n", "w.safetensors": b"xyz"})
    repo = tmp_path / "models--org--name"
    assert (repo / "refs" / "main").read_text() == snapshot.name
    # git's blob id of "hello\n" (git hash-object), and sha256 for LFS files
    assert (
        os.readlink(snapshot / "a" / "notes.txt") == "../../../blobs/ce013625030ba8dba906f756967f9e9ca394464a"
    )
    assert (snapshot / "w.safetensors").resolve().name == hashlib.sha256(b"xyz").hexdigest()
    assert (snapshot / "a" / "notes.txt").read_bytes() == b"hello\n"


def test_snapshot_refuses_an_unknown_repo_type(tmp_path: Path) -> None:
    with pytest.raises(SaeguardError, match="repo_type must be 'model' or 'dataset'"):
        write_snapshot(tmp_path, "org/name", {}, repo_type="space")


def test_huggingface_hub_scans_and_reads_the_cache(hub: HubCache) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    info = scan_cache_dir(hub.hub_cache)
    assert not info.warnings
    assert {(r.repo_id, r.repo_type) for r in info.repos} == {
        (MODEL_REPO, "model"),
        (GEMMA_SCOPE_REPO, "model"),
        (SAELENS_REPO, "model"),
        ("cais/wmdp", "dataset"),
        ("cais/mmlu", "dataset"),
        ("Salesforce/wikitext", "dataset"),
    }
    assert all(set(r.refs) == {"main"} for r in info.repos)
    params = hf_hub_download(
        GEMMA_SCOPE_REPO, "params.npz", subfolder=SAE_ID, cache_dir=hub.hub_cache, local_files_only=True
    )
    with np.load(params) as data:
        assert {k: data[k].shape for k in data} == {
            "W_enc": (32, 64),
            "W_dec": (64, 32),
            "b_enc": (64,),
            "b_dec": (32,),
            "threshold": (64,),
        }


def test_build_refuses_a_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "mine.txt").write_text("keep me")
    with pytest.raises(SaeguardError, match="exists and is not an output of this kind"):
        build_hub_cache(tmp_path / "home")
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["mine.txt"]


def test_tokenizer_keeps_the_forget_word_ids_planting_relies_on() -> None:
    from saeguard.testing import make_tokenizer

    assert gemma_tokenizer().convert_tokens_to_ids(FORGET_WORDS) == make_tokenizer().convert_tokens_to_ids(
        FORGET_WORDS
    )


# -- the recipe, offline, in a subprocess ------------------------------------------------------------
def test_model_loads_by_repo_id_with_a_gemma_chat_template(recipe: dict[str, Any]) -> None:
    model, _ = planted_pair()
    assert recipe["model"]["class"] == "Gemma2ForCausalLM"
    assert recipe["model"]["fingerprint"] == tensors_fingerprint(model.state_dict())
    assert recipe["model"]["chat"] == "<bos><start_of_turn>user\nthe cell<end_of_turn>\n"  # trimmed


def test_gemma_scope_release_and_saelens_repo_load_the_same_sae(recipe: dict[str, Any]) -> None:
    _, sae = planted_pair()
    expected = {
        "architecture": "jumprelu",
        "d_in": 32,
        "d_sae": 64,
        "hook_name": "blocks.3.hook_resid_post",
        "fingerprint": sae_fingerprint(sae),
    }
    assert step(recipe, "sae_gemma_scope") == expected  # SAELens's gemma_2 converter, params.npz
    assert step(recipe, "sae_saelens_repo") == expected  # SAELens's own format, repo id as release


def test_hf_specs_read_the_datasets_cache(recipe: dict[str, Any]) -> None:
    assert step(recipe, "wikitext") == corpus(RETAIN_WORDS, 24, 40, 7)  # the empty row is skipped
    wmdp = step(recipe, "wmdp")
    assert [{k: r[k] for k in ("question", "choices", "answer")} for r in wmdp] == mcq_rows(
        FORGET_WORDS + COMMON_WORDS, 8, 0
    )
    assert {r["subject"] for r in wmdp} == {"biology"}
    assert [r["id"] for r in wmdp][:2] == ["wmdp-bio:test:0", "wmdp-bio:test:1"]
    mmlu = step(recipe, "mmlu")
    assert [r["answer"] for r in mmlu] == [i % 4 for i in range(8)]  # ClassLabel decoded to 0-3
    assert {r["subject"] for r in mmlu} == {"college biology"}


def test_fit_selects_the_planted_latent_in_fp32_and_bf16(recipe: dict[str, Any]) -> None:
    assert step(recipe, "fit") == {"latent_ids": [PLANTED_LATENT], "tau": 0.0}
    assert step(recipe, "fit_bf16") == {"latent_ids": [PLANTED_LATENT], "tau": 0.0}


@pytest.mark.parametrize("suffix", ["", "_bf16"])
def test_eval_clamps_wmdp_and_leaves_mmlu_alone(recipe: dict[str, Any], suffix: str) -> None:
    wmdp, mmlu = step(recipe, f"eval_wmdp{suffix}"), step(recipe, f"eval_mmlu{suffix}")
    assert wmdp["flagged"] == [True] * 8 and wmdp["scores_changed"] == [True] * 8
    assert mmlu["flagged"] == [False] * 8 and mmlu["scores_changed"] == [False] * 8
    assert mmlu["guarded_accuracy"] == mmlu["base_accuracy"]


def test_lm_eval_runs_hub_and_local_tasks_through_the_guard(recipe: dict[str, Any]) -> None:
    results = step(recipe, "lm_eval")
    assert set(results) == {"wmdp_bio", "mmlu_college_biology", "saeguard_local_wmdp"}
    assert all(r["sample_len"] == 8 and 0.0 <= r["acc,none"] <= 1.0 for r in results.values())
    plain = step(recipe, "lm_eval_loglikelihood_plain")
    guarded = step(recipe, "lm_eval_loglikelihood_guarded")
    assert [g != p for g, p in zip(guarded, plain, strict=True)] == [True, True, False]  # wmdp, wmdp, retain


def test_cli_fits_and_evaluates_from_the_hub(recipe: dict[str, Any]) -> None:
    cli = step(recipe, "cli")
    assert cli["fit"]["code"] == 0, cli["fit"]["stderr"]
    assert cli["eval"]["code"] == 0, cli["eval"]["stderr"]
    fitted, evaluated = (" ".join(cli[k]["stdout"].split()) for k in ("fit", "eval"))
    assert "features 1" in fitted and "forget calibration: 24 inputs" in fitted
    # the eval table's "gate fired" column: every WMDP question flagged, no MMLU question
    assert "8/8 = 100.0%" in evaluated and "0/8 = 0.0%" in evaluated


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_offline_miss_is_one_line(recipe: dict[str, Any], name: str) -> None:
    message = step(recipe, f"bad_{name}")
    assert message.startswith("SaeguardError: ") and "\n" not in message
    assert BAD_INPUTS[name][2] in message


def test_tiny_gemma_scope_overrides_the_release_and_restores_it() -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from saeguard.testing_hub import GEMMA_SCOPE_RELEASE, tiny_gemma_scope

    directory = get_pretrained_saes_directory()
    original = directory[GEMMA_SCOPE_RELEASE]
    with pytest.raises(RuntimeError, match="inside"), tiny_gemma_scope(d_in=32, d_sae=64):
        entry = directory[GEMMA_SCOPE_RELEASE]
        assert (entry.repo_id, entry.conversion_func) == (GEMMA_SCOPE_REPO, "gemma_2")
        assert {k: entry.config_overrides[k] for k in ("d_in", "d_sae")} == {"d_in": 32, "d_sae": 64}
        raise RuntimeError("inside")
    assert directory[GEMMA_SCOPE_RELEASE] is original
