"""A guard fitted on the tiny Llama with a planted forget latent (shared by the explain tests)."""

from __future__ import annotations

import pytest

from saeguard import Guardrail
from saeguard.testing import plant_forget_direction, random_sae, tiny_llama

FIT = dict(layer=1, n_features=3, ratio_percentile=90, seq_len=32, show_progress=False)


@pytest.fixture
def fitted(tokenizer, forget_corpus, retain_corpus):
    """(model, guard) with the planted latent selected first."""
    model, sae = plant_forget_direction(tiny_llama(), random_sae("standard"))
    guard = Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **FIT)
    return model, guard
