"""More kinds of untrusted artifact (issue 11 §3), from the reliability probe: checked at load, one line.

Before: JSON nested 100,000 deep gave a RecursionError; special ids of 2**70 loaded and crashed
at the first forward; a provenance disagreeing with the tensors (other latent ids, one mean
activation for two latents, -5 tokens) loaded silently; NaN calibration rho gave a NaN tau on
retune; float16 tensors crashed at generate time; a TopK guardrail could not be inspected
without its SAE; the same weights in bf16 were refused as "other weights".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saeguard import Guardrail, SaeguardError
from saeguard.core.artifact import META_FILE, TENSORS_FILE
from saeguard.core.fit import retune
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, calibration_size=16, show_progress=False)
PROMPTS = ["what is the cell virus gene protein", "the king of the city and the river"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    tok = make_tokenizer()
    guard = Guardrail.fit(
        model, tok, sae, forget=corpus(FORGET_WORDS, 8, 30, 1), retain=corpus(RETAIN_WORDS, 8, 30, 2), **FIT
    )
    return model, tok, guard, guard.save(tmp_path_factory.mktemp("g") / "guard")


@pytest.fixture
def copy(fitted, tmp_path) -> Path:
    out = tmp_path / "guard"
    out.mkdir()
    for name in (META_FILE, TENSORS_FILE):
        (out / name).write_bytes((fitted[3] / name).read_bytes())
    return out


def _meta(folder: Path, change) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    change(meta)
    (folder / META_FILE).write_text(json.dumps(meta))


def _refused(folder: Path, model=None) -> str:
    with pytest.raises(SaeguardError) as caught:
        Guardrail.load(folder, model)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_json_nested_too_deep_is_refused(copy):
    (copy / META_FILE).write_text(
        '{"format": "saeguard-guardrail", "config": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    assert "nested too deeply" in _refused(copy)


def test_special_ids_beyond_any_vocabulary_are_refused(copy):
    _meta(copy, lambda m: m.__setitem__("special_ids", [2**70]))
    assert "special_ids must be a list of non-negative integers below 2**31" in _refused(copy)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda s: s.__setitem__("latent_ids", [1, 2]), "provenance.selection.latent_ids [1, 2] differ"),
        (lambda s: s.__setitem__("forget_mean_nonzero", [1.0]), "forget_mean_nonzero has 1 values for 2"),
        (lambda s: s.__setitem__("ratio", [1.0, 2.0, 3.0]), "ratio has 3 values for 2 latents"),
    ],
)
def test_a_selection_record_that_disagrees_with_the_tensors_is_refused(copy, change, named):
    _meta(copy, lambda m: change(m["provenance"]["selection"]))
    assert named in _refused(copy)


def test_negative_corpus_counts_are_refused_naming_the_file(copy):
    _meta(copy, lambda m: m["provenance"]["corpora"]["forget"].__setitem__("tokens", -5))
    message = _refused(copy)
    assert message.startswith(str(copy / META_FILE)) and "corpora.forget.tokens must be at least 0" in message


def test_nan_calibration_rho_is_refused_at_load(copy):
    tensors = load_file(str(copy / TENSORS_FILE))
    tensors["distribution.retain_rho"] = torch.full((8,), float("nan"), dtype=torch.float64)
    save_file(tensors, str(copy / TENSORS_FILE))
    assert "distribution.retain_rho holds NaN" in _refused(copy)


def test_retune_refuses_nan_rho(fitted):
    guard = Guardrail.from_result(fitted[2])
    guard.distributions = {**guard.distributions, "retain_rho": torch.tensor([0.1, float("nan")])}
    with pytest.raises(SaeguardError, match="NaN or infinite"):
        retune(guard, gate_percentile=90)


def test_float16_tensors_load_as_float32_and_decide_the_same(fitted, copy):
    model, tok, guard, _ = fitted
    tensors = load_file(str(copy / TENSORS_FILE))
    for key in ("encoder", "encoder_bias", "decoder", "decoder_bias", "threshold"):
        tensors[key] = tensors[key].half()
    save_file(tensors, str(copy / TENSORS_FILE))
    loaded = Guardrail.load(copy, model)
    assert loaded.latents.encoder.dtype == torch.float32
    flags = loaded.generate(model, tok, PROMPTS, max_new_tokens=1)[1][0].prompt_flagged.tolist()
    assert flags == guard.generate(model, tok, PROMPTS, max_new_tokens=1)[1][0].prompt_flagged.tolist()
    assert flags == [True, False]


@pytest.mark.parametrize("directory", [None, 123])
def test_a_folder_of_another_type_is_refused(directory):
    with pytest.raises(SaeguardError, match="the guardrail folder must be a path"):
        Guardrail.load(directory)


def test_saving_under_a_file_is_refused_and_leaves_nothing(fitted, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SaeguardError, match="cannot write"):
        fitted[2].save(blocker / "guard")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_the_same_weights_in_bf16_pass_the_strict_check(fitted):
    model, _, guard, folder = fitted
    bf16 = tiny_llama()
    bf16.load_state_dict(model.state_dict())
    loaded = Guardrail.load(folder, bf16.to(torch.bfloat16))
    assert loaded.tau == guard.tau


def test_other_weights_in_bf16_are_still_refused(fitted):
    with pytest.raises(SaeguardError, match="model weights differ"):
        Guardrail.load(fitted[3], tiny_llama(seed=9).to(torch.bfloat16))


def test_a_topk_guardrail_is_inspected_without_its_sae_but_not_run(tmp_path):
    model = tiny_llama()
    sae = random_sae("topk")
    sae.save_model(tmp_path / "sae")
    guard = Guardrail.fit(
        model,
        make_tokenizer(),
        tmp_path / "sae",
        forget=corpus(FORGET_WORDS, 8, 30, 1),
        retain=corpus(RETAIN_WORDS, 8, 30, 2),
        **FIT,
    )
    folder = guard.save(tmp_path / "guard")
    inspected = Guardrail.load(folder, need_sae=False)
    assert inspected.summary()["latent_ids"] == guard.summary()["latent_ids"]
    with pytest.raises(SaeguardError, match="loaded without its SAE"):
        inspected.generate(model, make_tokenizer(), PROMPTS, max_new_tokens=1)
    with pytest.raises(SaeguardError, match="loaded without its SAE"):  # at attach, not at a forward
        inspected.attach(model)
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, model.config.vocab_size)  # no hook left
