"""The shipped default SAE is what its recorded recipe trains, and meets the quality bar (issue 17 §1).

The shipped folder (``src/saeguard/resources/default_sae/layer6-w4096-k32``, fp16) records its
training config and metrics in ``cfg.json``. These tests check that the recipe recorded there is the
one ``ensure_default_sae`` would run, that the shipped weights reproduce the recorded evaluation
metrics on the same held-out documents, and (opt-in, ~10 min: ``SAEGUARD_RETRAIN_TEST=1``, set by
``.ci/run``) that retraining with the recipe reproduces them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from saeguard.core.sae import load_sae
from saeguard.defaults import (
    DEFAULT_K,
    DEFAULT_WIDTH,
    SAE_TRAINING_MIX,
    default_sae_config,
    default_sae_dir,
    sae_training_documents,
    shipped_sae_dir,
)

pytestmark = pytest.mark.integration

LAYER = 6
EVAL_DOCS = 64  # what ensure_default_sae evaluates on: sae_training_documents("heldout")[:64]


@pytest.fixture(scope="module")
def shipped() -> tuple[Path, dict]:
    folder = shipped_sae_dir(LAYER, DEFAULT_WIDTH, DEFAULT_K)
    assert folder is not None, "the default SAE must ship inside the package"
    return folder, json.loads((folder / "cfg.json").read_text())["metadata"]["saeguard"]


def test_the_default_sae_is_the_shipped_one_and_small(shipped):
    folder, _ = shipped
    assert default_sae_dir(LAYER) == folder
    assert (folder / "sae_weights.safetensors").stat().st_size <= 10 * 2**20


def test_the_recorded_recipe_is_the_one_ensure_default_sae_runs(shipped):
    _, provenance = shipped
    assert provenance["config"] == asdict(default_sae_config(LAYER, DEFAULT_WIDTH))
    assert provenance["data_mix"] == "+".join(SAE_TRAINING_MIX)
    assert provenance["layer"] == LAYER


def test_the_shipped_metrics_meet_the_quality_bar(shipped):
    metrics = shipped[1]["metrics"]
    assert metrics["heldout_fraction_variance_unexplained"] <= 0.12
    assert metrics["dead_fraction"] <= 0.05
    assert metrics["lm_loss_increase"] <= 0.15


def test_the_fp16_weights_reproduce_the_recorded_metrics(shipped, default_model):
    from saeguard.sae_training import evaluate_sae

    folder, provenance = shipped
    model, tokenizer = default_model
    recorded = provenance["metrics"]
    measured = evaluate_sae(
        model, tokenizer, load_sae(str(folder)), LAYER, sae_training_documents("heldout")[:EVAL_DOCS]
    )
    assert measured["eval_tokens"] == recorded["eval_tokens"]
    assert measured["fraction_variance_unexplained"] == pytest.approx(
        recorded["fraction_variance_unexplained"], abs=2e-3
    )
    assert measured["lm_loss_increase"] == pytest.approx(recorded["lm_loss_increase"], abs=5e-3)


@pytest.mark.skipif(
    os.environ.get("SAEGUARD_RETRAIN_TEST") != "1", reason="retrains the default SAE (~10 min on 2 cores)"
)
def test_retraining_with_the_recorded_recipe_reproduces_the_metrics(shipped, default_model, tmp_path):
    import torch

    from saeguard.sae_training import train_and_save

    _, provenance = shipped
    model, tokenizer = default_model
    torch.set_num_threads(os.cpu_count() or 1)  # the autouse fixture's one thread would double the time
    [result] = train_and_save(
        model,
        tokenizer,
        sae_training_documents("train"),
        sae_training_documents("heldout")[:EVAL_DOCS],
        [default_sae_config(LAYER, DEFAULT_WIDTH)],
        [tmp_path / "sae"],
        show_progress=False,
    )
    recorded, measured = provenance["metrics"], result["metrics"]
    for name, tolerance in [
        ("heldout_fraction_variance_unexplained", 0.01),
        ("dead_fraction", 0.01),
        ("lm_loss_increase", 0.03),
        ("heldout_l0", 1.0),
    ]:
        assert measured[name] == pytest.approx(recorded[name], abs=tolerance), name


def test_the_default_saes_variable_takes_precedence_over_the_shipped_sae(monkeypatch, tmp_path):
    from saeguard.defaults import DEFAULT_SAES_ENV, default_sae_dir, shipped_sae_dir

    assert default_sae_dir() == shipped_sae_dir()
    monkeypatch.setenv(DEFAULT_SAES_ENV, str(tmp_path))
    assert default_sae_dir() == tmp_path / "layer6-w4096-k32"
    assert default_sae_dir(3, 1024) == tmp_path / "layer3-w1024-k32"
