"""``create_app`` refuses, when it is made, a model id or guards no request could use (reliability probe).

Before: a guard fitted on a model of another width or with more layers, a TopK guard read
without its SAE, a value that is not a guard, a guard name holding ``+`` or ``default_guards``
naming no guard all made an app whose requests then failed one by one (400s or 500s).
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from saeguard import Guardrail, SaeguardError
from saeguard.core.sae import SelectedLatents
from saeguard.server import ServerSettings, create_app
from saeguard.testing import make_tokenizer, random_sae, tiny_llama

from .helpers import running


def _topk_without_sae(bio: Guardrail) -> Guardrail:
    latents = dataclasses.replace(SelectedLatents.from_sae(random_sae("topk"), [0, 1]), full_sae=None)
    return dataclasses.replace(bio, latents=latents)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "wide model",
            r"^guard 'bio': guardrail was fitted on a model with hidden size 32, this model has 48",
        ),
        ("one-layer model", r"^guard 'bio': guardrail was fitted on a model with 2 layers \(hook layer 1\)"),
        ("topk without its SAE", r"^guard 'bio': this TopK guardrail was loaded without its SAE"),
        ("a path, not a guard", r"^guard 'bio' is a str, not a Guardrail"),
        ("a name with '+'", r"^guard name 'bio\+lore'"),
        ("a guard named none", r"^guard name 'none'"),
        ("default guard not given", r"^default_guards names 'chem'"),
        ("model id with '+'", r"^model_id 'tiny\+x'"),
    ],
)
def test_create_app_refuses_what_no_request_could_use(tiny, case, message):
    model, tokenizer, guards = tiny
    bio = guards["bio"]
    made = {
        "wide model": (tiny_llama(hidden_size=48), {"bio": bio}, {}),
        "one-layer model": (tiny_llama(layers=1), {"bio": bio}, {}),
        "topk without its SAE": (model, {"bio": _topk_without_sae(bio)}, {}),
        "a path, not a guard": (model, {"bio": "guards/bio"}, {}),
        "a name with '+'": (model, {"bio+lore": bio}, {}),
        "a guard named none": (model, {"none": bio}, {}),
        "default guard not given": (model, {"bio": bio}, {"default_guards": ("chem",)}),
        "model id with '+'": (model, {"bio": bio}, {"model_id": "tiny+x"}),
    }
    lm, chosen, settings = made[case]
    with pytest.raises(SaeguardError, match=message):
        create_app(lm, tokenizer, chosen, ServerSettings(**{"model_id": "tiny", **settings}))


def test_create_app_accepts_the_same_width_with_other_weights(tiny):
    _, tokenizer, guards = tiny
    other = tiny_llama(seed=7)  # weights are not compared: a server may serve a fine-tuned copy
    assert create_app(other, make_tokenizer(), {"bio": guards["bio"]}) is not None
    assert tokenizer is not None


def test_a_non_ascii_api_key_is_compared_as_bytes_not_a_500(tiny):
    model, tokenizer, guards = tiny
    with running(model, tokenizer, guards, api_key="cl\u00e9") as server:
        url = f"{server.url}/v1/models"
        right = httpx.get(url, headers={"authorization": "Bearer cl\u00e9".encode()})
        wrong = httpx.get(url, headers={"authorization": "Bearer cle"})
        odd = httpx.get(url, headers={"authorization": "Bearer s\u00e9same".encode()})
    assert right.status_code == 200 and right.json()["data"][0]["id"] == "tiny"
    assert wrong.status_code == 401 and odd.status_code == 401
    assert "API key" in odd.json()["error"]["message"]
