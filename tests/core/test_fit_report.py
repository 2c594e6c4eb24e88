"""What a fit reports about itself, and the warning when its retain side cannot calibrate the gate."""

from __future__ import annotations

import warnings

import pytest

from saeguard import Guardrail
from saeguard.core.fit_report import MIN_CALIBRATION_INPUTS, FitReport, fit_report, shared_documents
from saeguard.core.provenance import (
    CorpusRecord,
    ModelRecord,
    Provenance,
    RhoSummary,
    SaeRecord,
    SelectionRecord,
    TauEstimate,
)
from saeguard.errors import CalibrationWarning, SaeguardError
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, show_progress=False)


def _provenance(
    retain_inputs: int,
    retain_frequency: list[float],
    *,
    ratio: float = 40.0,
    flagged: tuple[float, float] = (0.8, 0.05),
    fingerprints: tuple[str, str] = ("a", "b"),
    forget_tokens: int = 1200,
) -> Provenance:
    n = len(retain_frequency)
    return Provenance(
        model=ModelRecord("m", "f", 32, 2),
        sae=SaeRecord("standard", 32, 64, "s"),
        selection=SelectionRecord(
            latent_ids=list(range(n)),
            forget_importance=[1.0] * n,
            retain_importance=[0.0] * n,
            ratio=[ratio] * n,
            ratio_cutoff=0.5,
            candidate_count=n,
            retain_frequency=retain_frequency,
        ),
        corpora={
            "forget": CorpusRecord(fingerprints[0], documents=30, tokens=forget_tokens, chunks=3),
            "retain": CorpusRecord(fingerprints[1], documents=40, tokens=1500, chunks=4),
        },
        tau_estimate=TauEstimate(0.04, 95.0, 0.03, 0.05, 0.04),
        calibration={
            "retain": RhoSummary(count=retain_inputs, flagged_fraction=flagged[1]),
            "forget": RhoSummary(count=30, flagged_fraction=flagged[0]),
        },
    )


def test_report_lines_give_sizes_calibration_inputs_tau_interval_and_silent_latents():
    report = FitReport.of(_provenance(512, [0.0, 0.2, 0.1]), tau=0.04)
    assert report.lines() == [
        "forget: 30 documents, 1,200 tokens, 3 chunks; 30 calibration inputs",
        "retain: 40 documents, 1,500 tokens, 4 chunks; 512 calibration inputs",
        "tau 0.04 (the 95th percentile of retain rho; bootstrap 95% interval 0.03-0.05)",
        "3 latents selected; 1 never fire on retain text",
    ]
    assert report.problems == () and report.warning is None


@pytest.mark.parametrize(
    ("inputs", "frequency", "tau", "problem"),
    [
        (MIN_CALIBRATION_INPUTS - 1, [0.1, 0.1], 0.04, "only 49 retain calibration inputs"),
        (512, [0.1, 0.1], 0.0, "tau = 0"),
        (512, [0.0, 0.0, 0.1], 0.04, "2 of 3 selected latents never fire on the 1,500 retain tokens"),
    ],
)
def test_each_degenerate_retain_side_is_named_with_the_fix(inputs, frequency, tau, problem):
    report = FitReport.of(_provenance(inputs, frequency), tau=tau)
    assert report.problems and problem in report.problems[0]
    assert (
        report.warning is not None
        and "add more retain text, e.g. --retain wiki:not-biology" in report.warning
    )


def test_fit_on_a_small_retain_corpus_warns_api_users(tokenizer, forget_corpus):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    with pytest.warns(CalibrationWarning, match="retain calibration inputs"):
        guard = Guardrail.fit(
            model, tokenizer, sae, forget=forget_corpus, retain=corpus(RETAIN_WORDS, 12, 40, seed=2), **FIT
        )
    report = fit_report(guard)
    assert report is not None and report.calibration_inputs["retain"] == 12


def test_fit_with_enough_retain_text_does_not_warn(tokenizer, forget_corpus):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        guard = Guardrail.fit(
            model, tokenizer, sae, forget=forget_corpus, retain=corpus(RETAIN_WORDS, 80, 40, seed=2), **FIT
        )
    assert fit_report(guard).calibration_inputs["retain"] >= MIN_CALIBRATION_INPUTS


SEPARATION_FIX = "use a retain corpus without the forget topic"


@pytest.mark.parametrize(
    ("changes", "shared", "problem"),
    [
        ({"fingerprints": ("a", "a")}, None, "the forget and retain corpora are the same text"),
        ({}, 0.5, "50% of the forget documents are also retain documents"),
        ({"ratio": 1.0}, None, "no selected latent is even 2x as important on forget as on retain text"),
        ({"flagged": (0.1, 0.05)}, None, "the gate flags 10% of forget calibration inputs and 5% of retain"),
    ],
)
def test_corpora_the_gate_cannot_tell_apart_are_named_with_the_fix(changes, shared, problem):
    report = FitReport.of(_provenance(512, [0.1, 0.1], **changes), tau=0.04, shared=shared)
    assert report.problems == () and any(problem in p for p in report.separation_problems)
    assert report.warning is not None and report.warning.startswith("the guard cannot tell the forget text")
    assert SEPARATION_FIX in report.warning and "\n" not in report.warning


def test_an_always_gate_is_not_blamed_for_flagging_everything():
    report = FitReport.of(_provenance(512, [0.1, 0.1], flagged=(1.0, 1.0)), tau=0.04, dynamic=False)
    assert report.separation_problems == () and report.warning is None


def test_a_tiny_forget_side_says_to_add_forget_text():
    report = FitReport.of(_provenance(512, [0.1, 0.1], forget_tokens=120), tau=0.04)
    assert report.forget_problems == ("only 120 forget tokens (fewer than 300)",)
    assert report.warning is not None and "add more forget text on the topic" in report.warning


def test_shared_documents_is_the_share_of_forget_documents_found_in_retain():
    assert shared_documents(["a", "b", "c", "d"], ["x", "b", "d"]) == 0.5
    assert shared_documents([], ["a"]) == 0.0 and shared_documents(["a"], []) == 0.0


def _fit(tokenizer, forget, retain):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    return Guardrail.fit(model, tokenizer, sae, forget=forget, retain=retain, **FIT)


def test_the_same_corpus_on_both_sides_is_refused_before_any_forward_pass(tokenizer, forget_corpus):
    with pytest.raises(SaeguardError, match="the forget and retain corpora are the same text"):
        _fit(tokenizer, forget_corpus, list(reversed(forget_corpus)))


def test_a_retain_corpus_holding_the_forget_documents_warns(tokenizer, forget_corpus):
    retain = corpus(RETAIN_WORDS, 80, 40, seed=2) + forget_corpus
    with pytest.warns(CalibrationWarning, match="100% of the forget documents are also retain documents"):
        _fit(tokenizer, forget_corpus, retain)


def test_a_tiny_forget_corpus_warns_what_to_add(tokenizer):
    with pytest.warns(CalibrationWarning, match="add more forget text on the topic"):
        _fit(tokenizer, corpus(FORGET_WORDS, 2, 30, seed=1), corpus(RETAIN_WORDS, 80, 40, seed=2))


def test_a_tiny_retain_corpus_warns_what_to_add(tokenizer, forget_corpus):
    with pytest.warns(CalibrationWarning, match="add more retain text"):
        _fit(tokenizer, forget_corpus, corpus(RETAIN_WORDS, 3, 30, seed=2))
