"""Sentence-rule guards through retune, save and load; hand edits to the artifact (issue 13).

Regression input: editing ``window_tokens`` 8 -> 9 or ``min_sentence_tokens`` 1 -> 5 in
guardrail.json kept the column count and loaded silently, the stored scales then dividing columns
they were not calibrated on; the artifact now records what each column reads.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch

from saeguard import Guardrail
from saeguard.core.fit import retune
from saeguard.errors import SaeguardError
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    eval_llama,
    eval_tokenizer,
    plant_forget_direction,
    random_sae,
    sentence_guard,
    tiny_llama,
)

pytestmark = pytest.mark.filterwarnings("ignore::saeguard.errors.CalibrationWarning")

PROMPTS = ["the king of the river", "the river is dna", "a poem about the ocean and the dna of a cell"]


@pytest.fixture(scope="module")
def planted():
    return sentence_guard()


def _steps(records) -> torch.Tensor:
    """(B, steps) flags of one generate call's records."""
    return torch.stack([r.flagged for r in records], 1)


def _punctuated_fit(percentile: float) -> Guardrail:
    """A fit whose tokenizer has a real sentence end (".") in its vocabulary and corpora."""
    tok = eval_tokenizer()
    model, sae = plant_forget_direction(eval_llama(), random_sae("jumprelu"))
    return Guardrail.fit(
        model,
        tok,
        sae,
        forget=corpus(FORGET_WORDS + ["."] * 3, 16, 40, 1),
        retain=corpus(RETAIN_WORDS + FORGET_WORDS[:1] + ["."] * 3, 16, 40, 2),
        layer=1,
        n_features=1,
        ratio_percentile=90,
        seq_len=32,
        gate_percentile=percentile,
        gate_rule="sentence",
        window_tokens=8,
        min_window_tokens=4,
        min_sentence_tokens=2,
        calibration_long_tokens=64,
        show_progress=False,
        seed=0,
    )


@pytest.fixture(scope="module")
def punctuated():
    torch.set_num_threads(1)
    return _punctuated_fit(90.0), _punctuated_fit(70.0)


def test_a_fit_records_the_tokenizers_sentence_ends(punctuated):
    guard, _ = punctuated
    assert guard.sentence_end_ids == tuple(eval_tokenizer().convert_tokens_to_ids(["."]))
    assert guard.rule.end_ids == guard.sentence_end_ids and guard.rule.min_sentence == 2


def test_retune_to_another_percentile_equals_a_fresh_fit(punctuated):
    at_90, at_70 = punctuated
    retuned = retune(at_90, gate_percentile=70.0)
    assert retuned.window_scales == pytest.approx(at_70.window_scales, rel=1e-9)
    assert retuned.tau == pytest.approx(at_70.tau, rel=1e-9)
    assert retuned.sentence_end_ids == at_70.sentence_end_ids
    for role, rho in at_70.distributions.items():
        torch.testing.assert_close(retuned.distributions[role], rho)
    assert retuned.window_scales != at_90.window_scales or retuned.tau != at_90.tau  # not vacuous


def test_a_saved_sentence_guard_decides_the_same_after_loading(planted, tmp_path):
    tok, model, _, guard = planted
    guard.save(tmp_path / "g")
    loaded = replace(Guardrail.load(tmp_path / "g"), tau=guard.tau)  # tau kept as saved anyway
    assert loaded.rule == guard.rule
    a = guard.generate(model, tok, PROMPTS, max_new_tokens=8)
    b = loaded.generate(model, tok, PROMPTS, max_new_tokens=8)
    assert a[0] == b[0] and torch.equal(_steps(a[1]), _steps(b[1]))


def test_a_sentence_guard_without_any_end_id_round_trips(planted, tmp_path):
    _, _, fitted, _ = planted
    assert fitted.sentence_end_ids == ()  # the tiny vocabulary has no punctuation
    fitted.save(tmp_path / "g")
    assert Guardrail.load(tmp_path / "g").sentence_end_ids == ()


@pytest.fixture(scope="module")
def multiscale(planted):
    tok, model, _, _ = planted
    sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))[1]
    return Guardrail.fit(
        model,
        tok,
        sae,
        forget=corpus(FORGET_WORDS, 16, 40, 1),
        retain=corpus(RETAIN_WORDS, 16, 40, 2),
        layer=1,
        n_features=1,
        ratio_percentile=90,
        seq_len=32,
        gate_percentile=90,
        gate_rule="multiscale",
        window_tokens=8,
        min_window_tokens=4,
        calibration_long_tokens=64,
        show_progress=False,
    )


def test_an_artifact_written_before_the_sentence_rule_still_loads_and_decides(planted, multiscale, tmp_path):
    """The config of an older artifact has no min_sentence_tokens and no sentence_end_ids tensor."""
    tok, model, _, _ = planted
    multiscale = replace(multiscale, tau=0.3)
    multiscale.save(tmp_path / "g")
    meta_path = tmp_path / "g" / "guardrail.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["min_sentence_tokens"]
    meta_path.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        loaded = Guardrail.load(tmp_path / "g")
    assert loaded.rule == multiscale.rule and loaded.sentence_end_ids == ()
    a = multiscale.generate(model, tok, PROMPTS, max_new_tokens=6)
    b = loaded.generate(model, tok, PROMPTS, max_new_tokens=6)
    assert a[0] == b[0] and torch.equal(_steps(a[1]), _steps(b[1]))


def _edited(guard, tmp_path, edit) -> None:
    guard.save(tmp_path / "g")
    meta_path = tmp_path / "g" / "guardrail.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


def _set(key, value):
    def edit(meta):
        meta["config"][key] = value

    return edit


@pytest.mark.parametrize(
    "source, edit",
    [
        ("multiscale", _set("gate_rule", "sentence")),
        ("sentence", _set("gate_rule", "multiscale")),
        ("sentence", _set("window_tokens", 16)),  # one more column
        ("sentence", _set("window_tokens", "8")),
        ("sentence", _set("min_sentence_tokens", 0)),
    ],
)
def test_hand_edits_that_break_the_columns_are_one_line_errors(planted, multiscale, tmp_path, source, edit):
    guard = multiscale if source == "multiscale" else planted[3]
    _edited(guard, tmp_path, edit)
    with pytest.raises(SaeguardError) as caught:
        Guardrail.load(tmp_path / "g")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "edit",
    [_set("window_tokens", 9), _set("min_sentence_tokens", 5), _set("min_window_tokens", 2)],
    ids=["window_tokens 8->9", "min_sentence_tokens 1->5", "min_window_tokens 4->2"],
)
def test_hand_edits_that_keep_the_column_count_are_refused(planted, tmp_path, edit):
    """FAILS if the loader accepts a config edit that changes what a column reads while keeping
    the column count: the stored scales (calibrated on 8-token windows, 1-token sentences) then
    divide columns they were not measured on, silently (only window_scales edits are checked)."""
    _edited(planted[3], tmp_path, edit)
    with pytest.raises(SaeguardError):
        Guardrail.load(tmp_path / "g")
