"""Gate rules (issue 13 §1): each rule's rho equals a direct recomputation; local rules resist dilution."""

from __future__ import annotations

import math

import pytest
import torch

from saeguard import Guardrail, token_scope
from saeguard.core.gate import GateRule
from saeguard.hf.prompts import encode_prompts
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

RULES = [
    GateRule("mean"),
    GateRule("window", window=4),
    GateRule("multiscale", window=8, min_window=2, scales=(0.5, 0.8, 1.1)),
    GateRule("min_evidence", k=3),
    GateRule("cusum", drift=0.5),
]


def _direct(rule: GateRule, evidence: list[float], counted: list[bool]) -> float:
    """The rule's definition, written out over the counted tokens in order."""
    values = [e for e, c in zip(evidence, counted, strict=True) if c]
    if not values:
        return 0.0
    if rule.kind == "mean":
        return sum(values) / len(values)
    if rule.kind == "window":
        return _direct_window(values, rule.window)
    if rule.kind == "multiscale":  # sizes the input reaches; the smallest always (mean while shorter)
        assert rule.windows == (2, 4, 8)
        return max(
            _direct_window(values, size) / scale
            for size, scale in zip((2, 4, 8), rule.scales, strict=True)
            if size == 2 or len(values) >= size
        )
    if rule.kind == "min_evidence":
        return sorted(values, reverse=True)[rule.k - 1] if len(values) >= rule.k else 0.0
    best = level = 0.0
    for value in values:
        level = max(0.0, level + value - rule.drift)
        best = max(best, level)
    return best


def _direct_window(values: list[float], window: int) -> float:
    if len(values) <= window:
        return sum(values) / len(values)
    return max(sum(values[i : i + window]) / window for i in range(len(values) - window + 1))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.kind)
def test_rho_equals_a_direct_recomputation_on_every_prefix(rule):
    generator = torch.Generator().manual_seed(0)
    evidence = torch.rand(5, 40, generator=generator, dtype=torch.float64) * 2
    counted = torch.rand(5, 40, generator=generator) > 0.3
    counted[4] = False  # a row with nothing counted
    cum_e = (evidence * counted).cumsum(-1)
    cum_n = counted.double().cumsum(-1)
    positions = torch.arange(40)
    prefix = rule.prefix_rho(cum_e, cum_n, positions)
    for row in range(5):
        for t in range(40):
            expected = _direct(rule, evidence[row, : t + 1].tolist(), counted[row, : t + 1].tolist())
            assert prefix[row, t].item() == pytest.approx(expected, abs=1e-9), (row, t)
    assert torch.allclose(rule.rho(evidence, counted), prefix[:, -1])


@pytest.mark.parametrize("length", [0, 50, 400, 2000])
def test_local_rules_are_not_diluted_by_benign_padding(length):
    burst = [1.0] * 6  # the question's evidence
    evidence = torch.tensor([[0.0] * length + burst + [0.0] * length], dtype=torch.float64)
    counted = torch.ones_like(evidence, dtype=torch.bool)
    rho = {rule.kind: float(rule.rho(evidence, counted)) for rule in RULES}
    assert rho["window"] == 1.0 and rho["min_evidence"] == 1.0
    assert rho["multiscale"] == pytest.approx(1.0 / 0.5)  # the 2-token window, scaled
    assert rho["cusum"] == pytest.approx(6 * 0.5)
    assert rho["mean"] == pytest.approx(6 / (6 + 2 * length))  # the paper's rule: diluted


@pytest.mark.parametrize("sentences", [1, 4, 15])
def test_multiscale_catches_a_question_shorter_than_the_window_after_benign_sentences(sentences):
    """Regression (new-user pass, 2026-12-01): "What is a mitochondrion?" after one benign sentence.

    A 16-token window over a 4-token question and its benign neighbours averaged the question's
    evidence down to under its retain level (rho 2.18 -> 0.56, tau 0.99 on the demo guard); the
    multiscale rule's 4-token window still sees the question at full strength.
    """
    question = [0.0, 2.0, 2.5, 1.5]  # "What is a mitochondrion?": the evidence sits on 3 tokens
    sentence = [0.0] * 25  # "The weather in the small town was pleasant ..."
    clean = torch.tensor([question], dtype=torch.float64)
    padded = torch.tensor([sentence * sentences + question], dtype=torch.float64)
    window = GateRule("window", window=16)
    multiscale = GateRule("multiscale", window=16, min_window=4, scales=(1.2, 0.8, 0.5))
    assert multiscale.windows == (4, 8, 16)
    assert float(window.rho(clean, clean >= 0)) == pytest.approx(1.5)
    assert float(window.rho(padded, padded >= 0)) == pytest.approx(6.0 / 16)  # diluted 4x
    clean_rho = float(multiscale.rho(clean, clean >= 0))
    assert float(multiscale.rho(padded, padded >= 0)) == pytest.approx(clean_rho)  # not diluted
    assert clean_rho == pytest.approx(1.5 / 1.2)


def test_multiscale_without_calibrated_scales_is_refused():
    from saeguard.errors import SaeguardError

    rule = GateRule("multiscale", window=16, min_window=4)
    with pytest.raises(SaeguardError, match="per-column scales from calibration"):
        rule.rho(torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(SaeguardError, match="3 positive numbers"):
        GateRule("multiscale", window=16, min_window=4, scales=(1.0, 0.0, 1.0))
    with pytest.raises(SaeguardError, match="3 positive numbers"):
        GateRule("multiscale", window=16, min_window=4, scales=(1.0, float("inf"), 1.0))
    per_window = rule.window_rho(
        torch.tensor([[0.0, 4.0, 0.0, 0.0, 0.0]]), torch.ones(1, 5, dtype=torch.bool)
    )
    assert per_window[0, 0].item() == 1.0 and per_window[0, 1:].isnan().all()  # 5 tokens: 8, 16 unread


@pytest.fixture(scope="module")
def planted():
    tok = make_tokenizer()
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    return tok, model, sae


@pytest.mark.parametrize("kind", ["window", "multiscale", "min_evidence", "cusum"])
@pytest.mark.filterwarnings("ignore::saeguard.errors.CalibrationWarning")
def test_each_rule_decides_the_same_alone_batched_and_with_or_without_cache(planted, kind):
    tok, model, sae = planted
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
        gate_rule=kind,
        window_tokens=3,
        min_window_tokens=1,
        min_evidence_tokens=2,
        calibration_long_tokens=64,
        show_progress=False,
    )
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
    assert records[0].prompt_flagged[0]  # the diluted forget question is still caught


def test_calibration_on_long_and_multi_turn_inputs_keeps_benign_padding_below_tau(planted):
    tok, model, sae = planted
    settings = dict(
        layer=1,
        n_features=2,
        ratio_percentile=90,
        seq_len=32,
        gate_percentile=95,
        gate_rule="cusum",
        show_progress=False,
    )
    forget, retain = corpus(FORGET_WORDS, 16, 40, 1), corpus(RETAIN_WORDS, 40, 60, 2)
    short = Guardrail.fit(model, tok, sae, forget=forget, retain=retain, **settings)
    long = Guardrail.fit(
        model, tok, sae, forget=forget, retain=retain, calibration_long_tokens=200, **settings
    )
    assert long.provenance.calibration["retain"].count > short.provenance.calibration["retain"].count
    benign = [" ".join(corpus(RETAIN_WORDS, 1, 150, seed)[0].split()) for seed in range(10, 20)]
    enc = encode_prompts(tok, benign)
    rates = {}
    for name, guard in (("short", short), ("long", long)):
        with guard.attached(model) as hook, token_scope(enc.content_mask):
            hook.recording = True
            model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        rates[name] = float(hook.records[-1].prompt_flagged.double().mean())
    assert rates["long"] <= 0.2 and rates["long"] <= rates["short"]


def test_old_artifacts_keep_the_paper_rule():
    from saeguard.config import FitConfig

    assert FitConfig.from_dict({"n_features": 4}).gate_rule == "mean"
    assert math.isclose(GateRule().rho(torch.tensor([[1.0, 0.0]]), torch.tensor([[True, True]])).item(), 0.5)
