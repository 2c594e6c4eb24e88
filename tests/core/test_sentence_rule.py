"""The sentence gate rule (issue 13): the multiscale windows plus the largest sentence mean."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from saeguard import Guardrail
from saeguard.core.gate import GateRule
from saeguard.errors import SaeguardError
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

RULE = GateRule("sentence", window=8, min_window=2, scales=(0.5, 0.8, 1.1, 0.7), min_sentence=3)


def _direct_sentence(
    evidence: list[float], counted: list[bool], ends: list[bool], minimum: int, input_end: bool
) -> float:
    """The sentence column written out: sentences close at an end token or an uncounted token;
    a shorter one is read over the last ``minimum`` counted tokens up to its end."""
    seen: list[float] = []
    best, in_sentence = 0.0, 0
    for e, c, b in zip(evidence, counted, ends, strict=True):
        if c:
            seen.append(e)
            in_sentence += 1
        if (b or not c) and in_sentence:
            window = seen[-max(in_sentence, minimum) :]
            best = max(best, sum(window) / len(window))
        if b or not c:
            in_sentence = 0
    if input_end and in_sentence:
        window = seen[-max(in_sentence, minimum) :]
        best = max(best, sum(window) / len(window))
    return best


def _direct_windows(values: list[float], scales: tuple[float, ...]) -> float:
    """The multiscale columns (sizes 2, 4, 8), scaled: the windows part of ``RULE``."""
    best = 0.0
    for size, scale in zip((2, 4, 8), scales, strict=False):
        if size != 2 and len(values) < size:
            continue
        if len(values) <= size:
            value = sum(values) / len(values) if values else 0.0
        else:
            value = max(sum(values[i : i + size]) / size for i in range(len(values) - size + 1))
        best = max(best, value / scale)
    return best


@pytest.mark.parametrize("input_end", [True, False])
def test_sentence_rho_equals_a_direct_recomputation_on_every_prefix(input_end):
    generator = torch.Generator().manual_seed(0)
    evidence = torch.rand(5, 40, generator=generator, dtype=torch.float64) * 2
    counted = torch.rand(5, 40, generator=generator) > 0.2
    ends = torch.rand(5, 40, generator=generator) > 0.8
    counted[4] = False  # a row with nothing counted
    cum_e = (evidence * counted).cumsum(-1)
    cum_n = counted.double().cumsum(-1)
    prefix = RULE.prefix_rho(cum_e, cum_n, torch.arange(40), ends, input_end=input_end)
    for row in range(5):
        for t in range(40):
            e, c, b = (x[row, : t + 1].tolist() for x in (evidence, counted, ends))
            values = [v for v, keep in zip(e, c, strict=True) if keep]
            expected = max(
                _direct_windows(values, RULE.scales),
                _direct_sentence(e, c, b, 3, input_end) / RULE.scales[-1],
            )
            assert prefix[row, t].item() == pytest.approx(expected, abs=1e-9), (row, t)
    assert torch.allclose(RULE.rho(evidence, counted, ends, input_end=input_end), prefix[:, -1])
    per_column = RULE.window_rho(evidence, counted, ends, input_end=input_end)
    assert per_column.shape == (5, 4)
    sentence = [
        _direct_sentence(*(x[row].tolist() for x in (evidence, counted, ends)), 3, input_end)
        for row in range(5)
    ]
    assert per_column[:, -1].tolist() == pytest.approx(sentence, abs=1e-9)


@pytest.mark.parametrize("sentences", [1, 4, 15, 80])
def test_a_short_question_after_benign_sentences_is_read_at_full_strength(sentences):
    """Regression (issue 13, session 6): "What is a mitochondrion?" after one benign sentence
    passed the multiscale guard (rho 0.95 < tau 1.007): even its 8-token window held benign
    tokens. As a sentence of its own the question is not diluted by any number of sentences."""
    question = [0.0, 2.0, 2.5, 1.5]  # "What is a mitochondrion?", the "?" ends it
    sentence = [0.0] * 24 + [0.0]  # 25 benign tokens, the last a full stop
    evidence = torch.tensor([sentence * sentences + question], dtype=torch.float64)
    counted = torch.ones_like(evidence, dtype=torch.bool)
    ends = torch.zeros_like(counted)
    ends[0, 24 : 25 * sentences : 25] = True
    ends[0, -1] = True
    clean = torch.tensor([question], dtype=torch.float64)
    clean_ends = torch.tensor([[False, False, False, True]])
    multiscale = GateRule("multiscale", window=16, min_window=8, scales=(1.0, 1.0))
    sentence_rule = GateRule("sentence", window=16, min_window=8, scales=(1.0, 1.0, 1.0))
    assert float(sentence_rule.rho(evidence, counted, ends)) == pytest.approx(1.5)  # 6 / 4 tokens
    assert float(sentence_rule.rho(clean, clean >= 0, clean_ends)) == pytest.approx(1.5)
    assert float(multiscale.rho(evidence, counted)) == pytest.approx(6.0 / 8)  # diluted 2x


def test_text_without_punctuation_is_still_caught_by_the_windows():
    """Removing every full stop makes one long sentence (its mean is diluted); the windows
    still read the burst, so the sentence rule is never weaker than the multiscale rule."""
    evidence = torch.tensor([[0.0] * 400 + [2.0] * 8 + [0.0] * 400], dtype=torch.float64)
    counted = torch.ones_like(evidence, dtype=torch.bool)
    no_ends = torch.zeros_like(counted)
    sentence_rule = GateRule("sentence", window=16, min_window=8, scales=(1.0, 1.0, 1.0))
    per_column = sentence_rule.window_rho(evidence, counted, no_ends)
    assert per_column[0].tolist() == pytest.approx([2.0, 1.0, 16.0 / 808])
    assert float(sentence_rule.rho(evidence, counted, no_ends)) == pytest.approx(2.0)


def test_splitting_a_question_with_full_stops_does_not_lower_rho():
    """An attacker who ends a sentence after every word gets one-token sentences; each is read
    over the last min_sentence tokens, so rho can only rise (a finer scan)."""
    question = [2.0, 1.0, 2.0, 1.0, 2.0]
    evidence = torch.tensor([[0.0] * 30 + question], dtype=torch.float64)
    counted = torch.ones_like(evidence, dtype=torch.bool)
    whole = torch.zeros_like(counted)
    whole[0, 29] = True
    whole[0, -1] = True
    every_word = whole.clone()
    every_word[0, 30:] = True
    rule = GateRule("sentence", window=16, min_window=8, scales=(1.0, 1.0, 1.0), min_sentence=3)
    assert float(rule.rho(evidence, counted, whole)) == pytest.approx(8.0 / 5)
    assert float(rule.rho(evidence, counted, every_word)) == pytest.approx(5.0 / 3)


def test_a_running_generation_judges_a_sentence_once_it_is_closed():
    evidence = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 0.0]], dtype=torch.float64)
    counted = torch.ones_like(evidence, dtype=torch.bool)
    ends = torch.tensor([[False, False, True, False, False, False, True]])
    rule = GateRule("sentence", window=16, min_window=16, scales=(100.0, 1.0))
    cum_e, cum_n = evidence.cumsum(-1), counted.double().cumsum(-1)
    open_ = rule.prefix_rho(cum_e, cum_n, torch.arange(7), ends, input_end=True)[0]
    running = rule.prefix_rho(cum_e, cum_n, torch.arange(7), ends, input_end=False)[0]
    window = torch.tensor([0.0, 0.0, 0.0, 3.0, 6.0, 9.0, 9.0]) / torch.arange(1, 8) / 100.0  # mean so far
    # "the cell is." closes at position 6: only then does the sentence count (9 / 4 tokens)
    assert running.tolist() == pytest.approx(window[:6].tolist() + [9.0 / 4])
    assert open_[5].item() == pytest.approx(3.0) and open_[6].item() == pytest.approx(9.0 / 4)


def test_a_sentence_rule_without_end_ids_reads_turns_as_sentences():
    rule = GateRule("sentence", window=4, min_window=4, scales=(1.0, 1.0))
    assert rule.sentence_ends(torch.tensor([[1, 2, 3]])) is None
    with_ids = replace(rule, end_ids=(2,))
    assert with_ids.sentence_ends(torch.tensor([[1, 2, 3]])).tolist() == [[False, True, False]]
    with pytest.raises(SaeguardError, match=r"2 positive numbers, one per \('window 4', 'sentence'\)"):
        GateRule("sentence", window=4, min_window=4, scales=(1.0, 1.0, 1.0))
    with pytest.raises(SaeguardError, match="min_sentence must be at least 1"):
        GateRule("sentence", min_sentence=0)


@pytest.fixture(scope="module")
def sentence_guard():
    tok = make_tokenizer()
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    guard = Guardrail.fit(
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
        gate_rule="sentence",
        window_tokens=8,
        min_window_tokens=4,
        calibration_long_tokens=64,
        show_progress=False,
    )
    # the tiny vocabulary has no punctuation: "and" and "is" end sentences here
    ends = tuple(sorted(tok.convert_tokens_to_ids(["and", "is"])))
    return tok, model, replace(guard, sentence_end_ids=ends)


@pytest.mark.filterwarnings("ignore::saeguard.errors.CalibrationWarning")
def test_sentence_rule_decides_the_same_alone_batched_and_with_or_without_cache(sentence_guard):
    tok, model, guard = sentence_guard
    assert guard.rule.columns == 3 and len(guard.window_scales) == 3
    prompts = [
        "the king of the city and " * 6 + "what is the cell virus gene",
        "the king of the river",
        "dna",
    ]
    texts, records = guard.generate(model, tok, prompts, max_new_tokens=6)
    alone = [guard.generate(model, tok, [p], max_new_tokens=6) for p in prompts]
    assert texts == [a[0][0] for a in alone]
    assert records[0].rho.tolist() == pytest.approx([a[1][0].rho.item() for a in alone], abs=1e-9)
    assert guard.generate(model, tok, prompts, max_new_tokens=6, use_cache=False)[0] == texts
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert (
        guard.generate(model, tok, prompts, **beams)[0]
        == guard.generate(model, tok, prompts, use_cache=False, **beams)[0]
    )
    assert records[0].prompt_flagged[0]  # the forget question after six benign sentences


@pytest.mark.filterwarnings("ignore::saeguard.errors.CalibrationWarning")
def test_a_sentence_guardrail_round_trips_and_refuses_edits(sentence_guard, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    tok, model, guard = sentence_guard
    guard.save(tmp_path / "g")
    loaded = Guardrail.load(tmp_path / "g")
    assert loaded.sentence_end_ids == guard.sentence_end_ids
    assert loaded.window_scales == guard.window_scales and loaded.tau == guard.tau
    meta_path = tmp_path / "g" / "guardrail.json"
    meta = json.loads(meta_path.read_text())
    meta["window_scales"] = [v * 2 for v in meta["window_scales"]]  # positive, but not the calibrated
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SaeguardError, match="window_scales .* are not what the stored retain rho give"):
        Guardrail.load(tmp_path / "g")
    guard.save(tmp_path / "h")
    tensors = load_file(str(tmp_path / "h" / "guardrail.safetensors"))
    del tensors["sentence_end_ids"]
    save_file(
        tensors, str(tmp_path / "h" / "guardrail.safetensors"), metadata={"format": "saeguard-guardrail"}
    )
    with pytest.raises(SaeguardError, match="needs sentence_end_ids"):
        Guardrail.load(tmp_path / "h")
