"""Loaded artifacts are checked, never trusted (issue 11 §3): one line naming the field, no traceback."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saeguard import Guardrail, SaeguardError, load_sae
from saeguard.core.artifact import META_FILE, TENSORS_FILE
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


def _fit(**settings) -> Guardrail:
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    return Guardrail.fit(
        model,
        make_tokenizer(),
        sae,
        forget=corpus(FORGET_WORDS, 8, 30, 1),
        retain=corpus(RETAIN_WORDS, 8, 30, 2),
        **(FIT | settings),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return _fit().save(tmp_path_factory.mktemp("g") / "guard")


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    out = tmp_path / "guard"
    out.mkdir()
    for name in (META_FILE, TENSORS_FILE):
        (out / name).write_bytes((saved / name).read_bytes())
    return out


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    result = change(meta)
    (folder / META_FILE).write_text(json.dumps(result if isinstance(result, list) else meta))


def _one_line_error(folder: Path) -> str:
    with pytest.raises(SaeguardError) as caught:
        Guardrail.load(folder)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.update(tau=float("nan")), "is not valid JSON (NaN is not a number)"),
        (lambda m: m.update(tau="0.5"), "tau must be a finite number"),
        (lambda m: m.update(clamp_value=-500), "clamp value must be positive"),
        (lambda m: m.update(format_version="1"), "format_version must be a positive integer"),
        (lambda m: m.update(format_version=99), "newer than this saeguard"),
        (lambda m: m.update(format="other"), "format must be 'saeguard-guardrail'"),
        (lambda m: m.pop("config"), "config is missing"),
        (lambda m: m["config"].update(n_features=2.5), "n_features must be an integer"),
        (lambda m: m["config"].update(gate="sometimes"), "gate must be one of"),
        (lambda m: m["config"].update(clamp="-3x"), "clamp must be a positive number"),
        (lambda m: [m], "must hold a JSON object"),
        (lambda m: m.update(layer=-1), "layer must be an integer >= 0"),
        (lambda m: m.update(layer=5), "outside the recorded model's 2 layers"),
        (lambda m: m.update(architecture="gated"), "architecture must be one of"),
        (lambda m: m.update(special_ids=["<pad>"]), "special_ids must be a list of non-negative integers"),
        (lambda m: m["provenance"]["model"].pop("fingerprint"), "provenance.model.fingerprint is missing"),
        (lambda m: m["provenance"]["selection"].update(ratio=[1.0, "x"]), "ratio must be a list of finite"),
        (lambda m: m["provenance"]["model"].update(hidden_size=64), "inconsistent"),
    ],
)
def test_invalid_metadata_is_refused_naming_the_field(copy, change, expected):
    _edit_meta(copy, change)
    assert expected in _one_line_error(copy)


def test_a_nan_in_the_json_text_is_refused(copy):
    text = (copy / META_FILE).read_text().replace('"tau": ', '"tau": NaN, "ignored": ', 1)
    (copy / META_FILE).write_text(text)
    assert "not valid JSON" in _one_line_error(copy)


def test_unknown_config_keys_load_with_a_warning(copy):
    _edit_meta(copy, lambda m: m["config"].update(future_setting=1))
    with pytest.warns(UserWarning, match="ignoring unknown settings future_setting"):
        Guardrail.load(copy)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable safetensors file"),
        (lambda p: p.write_bytes(b"\x00" * 100), "not a readable safetensors file"),
        (lambda p: p.write_bytes(pickle.dumps({"encoder": [1.0]})), "not a readable safetensors file"),
    ],
)
def test_damaged_tensor_files_are_refused(copy, damage, expected):
    damage(copy / TENSORS_FILE)
    assert expected in _one_line_error(copy)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.pop("decoder"), "tensors decoder are missing"),
        (lambda t: t.update(decoder=torch.zeros(3, 32)), "decoder must have shape (2, 32)"),
        (lambda t: t.update(encoder=t["encoder"].T.contiguous()), "encoder must have shape (d_in, 2)"),
        (lambda t: t.update(threshold=torch.full((2,), float("nan"))), "threshold holds NaN"),
        (lambda t: t.update(latent_ids=torch.tensor([0.5, 1.5])), "latent_ids must be non-negative integers"),
        (
            lambda t: t.update(latent_ids=torch.tensor([0, 10_000])),
            "latent ids exceed the recorded SAE width",
        ),
    ],
)
def test_tensors_that_disagree_with_the_json_are_refused(copy, edit, expected):
    tensors = load_file(str(copy / TENSORS_FILE))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(copy / TENSORS_FILE))
    assert expected in _one_line_error(copy)


def test_saved_files_are_readable_by_others_whatever_the_umask(tmp_path, saved):
    old = os.umask(0o077)
    try:
        guard = Guardrail.load(saved)
        out = guard.save(tmp_path / "g")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for name in (META_FILE, TENSORS_FILE):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "payload",
    [b"\x00" * 100, b"", pickle.dumps({"W_enc": [1.0]})],
)
def test_damaged_sae_weights_are_one_line_errors(tmp_path, payload):
    random_sae("standard").save_model(tmp_path / "sae")
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(payload)
    with pytest.raises(SaeguardError, match="cannot load the SAE in"):
        load_sae(tmp_path / "sae")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.update(window_scales=[1.0, -2.0]), "window_scales must be 2 positive numbers"),
        (lambda m: m.pop("window_scales") and None, "window_scales must be 2 positive numbers"),
        (lambda m: m["config"].update(min_window_tokens=9), "must not exceed window_tokens"),
    ],
)
def test_a_multiscale_artifact_with_bad_window_scales_is_refused(tmp_path, change, expected):
    folder = _fit(gate_rule="multiscale", window_tokens=4, min_window_tokens=2).save(tmp_path / "guard")
    _edit_meta(folder, change)
    assert expected in _one_line_error(folder)
