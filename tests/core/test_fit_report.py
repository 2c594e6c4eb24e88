"""What a fit reports about itself, and the warning when its retain side cannot calibrate the gate."""

from __future__ import annotations

import warnings

import pytest

from saeguard import Guardrail
from saeguard.core.fit_report import MIN_CALIBRATION_INPUTS, FitReport, fit_report
from saeguard.core.provenance import (
    CorpusRecord,
    ModelRecord,
    Provenance,
    RhoSummary,
    SaeRecord,
    SelectionRecord,
    TauEstimate,
)
from saeguard.errors import CalibrationWarning
from saeguard.testing import RETAIN_WORDS, corpus, plant_forget_direction, random_sae, tiny_llama

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, show_progress=False)


def _provenance(retain_inputs: int, retain_frequency: list[float]) -> Provenance:
    n = len(retain_frequency)
    return Provenance(
        model=ModelRecord("m", "f", 32, 2),
        sae=SaeRecord("standard", 32, 64, "s"),
        selection=SelectionRecord(
            latent_ids=list(range(n)),
            forget_importance=[1.0] * n,
            retain_importance=[0.0] * n,
            ratio=[1.0] * n,
            ratio_cutoff=0.5,
            candidate_count=n,
            retain_frequency=retain_frequency,
        ),
        corpora={
            "forget": CorpusRecord("a", documents=30, tokens=1200, chunks=3),
            "retain": CorpusRecord("b", documents=40, tokens=1500, chunks=4),
        },
        tau_estimate=TauEstimate(0.04, 95.0, 0.03, 0.05, 0.04),
        calibration={"retain": RhoSummary(count=retain_inputs), "forget": RhoSummary(count=30)},
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
