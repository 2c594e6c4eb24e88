"""A guard fitted on the tiny Llama with a planted forget latent (shared by the explain tests)."""

from __future__ import annotations

import warnings

import pytest

from saeguard import Guardrail
from saeguard.errors import CalibrationWarning
from saeguard.testing import RETAIN_WORDS, corpus, plant_forget_direction, random_sae, tiny_llama

FIT = dict(layer=1, n_features=3, ratio_percentile=90, seq_len=32, show_progress=False)


@pytest.fixture
def fitted(tokenizer, forget_corpus):
    """(model, guard) with the planted latent selected first; 64 retain documents calibrate tau.

    The tiny corpora are too small for a trustworthy tau (CalibrationWarning); these tests
    check the explanation against the gate, not the calibration, so the warning is silenced.
    """
    model, sae = plant_forget_direction(tiny_llama(), random_sae("standard"))
    retain = corpus(RETAIN_WORDS, 64, 40, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        guard = Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain, **FIT)
    return model, guard
