"""Calibration inputs: their shapes, their length order, and rho that do not depend on that order."""

from __future__ import annotations

from dataclasses import replace

import torch

from saeguard.config import FitConfig, PromptShape
from saeguard.core.calibration import by_length, calibration_prompts, gate_rho, input_length, prompt_batches
from saeguard.core.fit import calibration_rho, gate_rule_for, prepare_fit
from saeguard.core.sae import SelectedLatents
from saeguard.testing import plant_forget_direction, random_sae, tiny_llama


def test_by_length_puts_short_inputs_first_and_keeps_ties_in_order():
    chat = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "Go on."}]
    texts = ["a long piece of text", "xy", chat, "zw", ""]
    assert input_length(chat) == 2 + 16 + 6 + 16
    assert by_length(texts) == ["", "xy", "zw", "a long piece of text", chat]


def test_without_long_runs_the_inputs_are_the_same_minus_the_long_runs(tokenizer, retain_corpus):
    shape = PromptShape(limit=16, long_tokens=48)
    full = calibration_prompts(retain_corpus, tokenizer, shape)
    short_only = calibration_prompts(retain_corpus, tokenizer, replace(shape, long_runs=False))
    plain = [t for t in full if isinstance(t, str)]
    turns = [t for t in full if not isinstance(t, str)]
    assert len(plain) == 16 + 4 and len(turns) == 4  # 16 short, a quarter more long runs, a quarter split
    assert short_only == plain[:16] + turns


def test_calibration_rho_are_the_unsorted_inputs_rho_in_length_order(tokenizer, forget_corpus, retain_corpus):
    model, sae = plant_forget_direction(tiny_llama(max_positions=256), random_sae("jumprelu"))
    config = FitConfig(layer=1, seq_len=32, batch_size=3, calibration_size=12, calibration_long_tokens=48)
    inputs = prepare_fit(model, tokenizer, sae, forget_corpus, retain_corpus, config)
    latents = SelectedLatents.from_sae(inputs.sae, [37, 4, 9])
    sorted_rho = calibration_rho(inputs, latents, "retain", config, show_progress=False)
    texts = calibration_prompts(retain_corpus, tokenizer, config.prompt_shape())
    one_by_one = torch.cat(
        [
            gate_rho(model, 1, latents, prompt_batches([text], tokenizer, 1), rule=gate_rule_for(config))
            for text in by_length(texts)
        ]
    )
    assert sorted_rho.numel() == len(texts) == 12 + 3 + 3
    torch.testing.assert_close(sorted_rho, one_by_one, rtol=0, atol=1e-6)
    forget_rho = calibration_rho(inputs, latents, "forget", config, show_progress=False)
    assert forget_rho.numel() == 12 + 3  # the forget side has no long runs (issue 17)


def test_gate_evidence_is_what_gate_rho_turns_into_rho_per_batch(tokenizer, retain_corpus):
    from saeguard.core.calibration import gate_evidence
    from saeguard.core.gate import GateRule

    model, sae = plant_forget_direction(tiny_llama(max_positions=256), random_sae("jumprelu"))
    latents = SelectedLatents.from_sae(sae, [37, 4, 9])
    texts = calibration_prompts(retain_corpus, tokenizer, PromptShape(limit=10))
    pairs = list(gate_evidence(model, 1, latents, prompt_batches(texts, tokenizer, 4)))
    assert [e.shape[0] for e, _ in pairs] == [4, 4, 2] and all(e.shape == c.shape for e, c in pairs)
    rule = GateRule("window", window=3)
    by_hand = torch.cat([rule.rho(e, c) for e, c in pairs])
    expected = gate_rho(
        model, 1, latents, prompt_batches(texts, tokenizer, 4), rule=rule, show_progress=False
    )
    torch.testing.assert_close(by_hand, expected, rtol=0, atol=0)


def test_window_scales_read_each_size_over_the_inputs_that_reach_it():
    from saeguard.core.calibration import scaled_rho, window_scales

    nan = float("nan")
    rho = torch.tensor(
        [[1.0, nan, nan], [2.0, 1.0, nan], [3.0, 2.0, nan], [4.0, 0.0, nan]], dtype=torch.float64
    )
    scales = window_scales(rho, 50.0)
    assert scales == (2.5, 1.0, 1.0)  # medians of [1,2,3,4] and [1,2,0]; no input reaches size 3: size 2's
    assert scaled_rho(rho, scales).tolist() == [0.4, 1.0, 2.0, 1.6]
    zero = torch.tensor([[0.0], [0.0], [0.5]], dtype=torch.float64)
    assert window_scales(zero, 50.0) == (0.5,)  # a level of 0: the smallest positive value
    assert window_scales(torch.zeros(3, 1, dtype=torch.float64), 50.0) == (1.0,)
