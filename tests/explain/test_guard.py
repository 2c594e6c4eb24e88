"""explain_guard checks the model as the command does: a guard explains only the model it fits."""

from __future__ import annotations

import pytest

from saeguard.core.fit import FitResult
from saeguard.errors import SaeguardError
from saeguard.explain.guard import explain_guard
from saeguard.testing import tiny_llama


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (
            lambda: tiny_llama(layers=1),
            "fitted on a model with 2 layers \\(hook layer 1\\), this model has 1",
        ),
        (lambda: tiny_llama(hidden_size=48), "fitted on a model with hidden size 32, this model has 48"),
    ],
)
def test_explain_guard_refuses_a_model_the_guard_was_not_fitted_on(fitted, tokenizer, other, message):
    _, guard = fitted
    with pytest.raises(SaeguardError, match=message):
        explain_guard(other(), tokenizer, guard)


def test_explain_guard_refuses_what_is_not_a_language_model(fitted, tokenizer):
    _, guard = fitted
    with pytest.raises(SaeguardError, match="model"):
        explain_guard("model", tokenizer, guard)


def test_explain_guard_takes_a_bare_fit_result_and_explains_the_fitted_model(fitted, tokenizer):
    model, guard = fitted
    result = FitResult(**{name: getattr(guard, name) for name in FitResult.__dataclass_fields__})
    explanation = explain_guard(model, tokenizer, result)
    assert explanation.layer == 1 and [e.latent for e in explanation.latents] == guard.latents.ids.tolist()
