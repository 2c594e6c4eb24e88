"""Calibration on the model's own answers (issue 13): the rho is the running gate's after generation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from saeguard import Guardrail
from saeguard.config import FitConfig
from saeguard.core.answers import answered_batches
from saeguard.core.calibration import gate_rho
from saeguard.core.fit import calibration_rho, prepare_fit
from saeguard.testing import plant_forget_direction, random_sae, tiny_llama

PROMPTS = ["the king of the city and the river", "what is the cell", "the virus"]


@pytest.fixture(scope="module")
def planted():
    return plant_forget_direction(tiny_llama(max_positions=256), random_sae("jumprelu"))


@pytest.mark.parametrize("rule", ["mean", "window", "sentence"])
@pytest.mark.filterwarnings("ignore::saeguard.errors.CalibrationWarning")
def test_an_answered_input_has_the_running_gates_rho_after_the_answer(
    planted, tokenizer, forget_corpus, retain_corpus, rule
):
    model, sae = planted
    guard = Guardrail.fit(
        model,
        tokenizer,
        sae,
        forget=forget_corpus,
        retain=retain_corpus,
        layer=1,
        n_features=2,
        seq_len=32,
        gate_rule=rule,
        window_tokens=4,
        show_progress=False,
    )
    if rule == "sentence":  # the tiny vocabulary has no punctuation: "the" ends sentences here
        guard = replace(guard, sentence_end_ids=(int(tokenizer.convert_tokens_to_ids("the")),))
    never = replace(guard, tau=1e9)  # the gate runs but never clamps: the answer is the unguarded one
    answer_tokens = 6
    batch = next(
        answered_batches(model, tokenizer, PROMPTS, answer_tokens=answer_tokens, show_progress=False)
    )
    rho = gate_rho(  # read as the running gate reads a generation (prompt_rho does the same)
        model, 1, guard.latents, [batch], statistic=guard.statistic, rule=guard.rule, input_end=False
    )
    # generate forwards the prompt and every generated token but the last: one more token, same rho
    _, records = never.generate(model, tokenizer, PROMPTS, max_new_tokens=answer_tokens + 1)
    assert rho.tolist() == pytest.approx(records[-1].rho.tolist(), abs=1e-9)
    # what counts: the user's words and the answer's non-special tokens, never the template or padding
    real = batch.attention_mask[1].bool()
    ids, counted = batch.input_ids[1][real], batch.counted[1][real]
    answer = ids[-answer_tokens:]
    special = torch.tensor(guard.special_ids)
    assert int(counted[:-answer_tokens].sum()) == len(PROMPTS[1].split())
    assert counted[-answer_tokens:].tolist() == (~torch.isin(answer, special)).tolist()
    assert not batch.counted[1][~real].any()


def test_answers_add_a_quarter_of_the_retain_inputs_and_only_there(
    planted, tokenizer, forget_corpus, retain_corpus
):
    model, sae = planted
    config = FitConfig(layer=1, seq_len=32, batch_size=4, calibration_size=16)
    inputs = prepare_fit(model, tokenizer, sae, forget_corpus, retain_corpus, config)
    from saeguard.core.sae import SelectedLatents

    latents = SelectedLatents.from_sae(inputs.sae, [37, 4])
    answered = replace(config, calibration_answer_tokens=5)
    plain = calibration_rho(inputs, latents, "retain", config, show_progress=False)
    retain = calibration_rho(inputs, latents, "retain", answered, show_progress=False)
    forget = calibration_rho(inputs, latents, "forget", answered, show_progress=False)
    assert retain.shape[0] == plain.shape[0] + 4 and torch.equal(retain[: plain.shape[0]], plain)
    assert forget.shape[0] == calibration_rho(inputs, latents, "forget", config, show_progress=False).shape[0]
