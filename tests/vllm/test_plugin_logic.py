"""The vLLM plugin's per-request logic on CPU, with a fake model runner and forward context.

The oracle is the guard's own gate over each request's whole sequence in one forward
(prompt judged once, running sticky decision after it): what ``Guardrail.generate``
gives. The router sees the same rows split as vLLM schedules them (chunked prefill,
one-token decodes, requests interleaved in one flattened batch) and must give the same
clamped rows and decisions.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from saeguard.core.hooks import GateHook
from saeguard.core.state import ForwardCall, RowHistory
from saeguard.errors import SaeguardError
from saeguard.hf.chat import user_token_mask
from saeguard.testing import make_guard, make_tokenizer
from saeguard.vllm import GuardRouter, RequestStep
from saeguard.vllm.plugin import install, parse_guard_spec, request_steps, router_from_env

D = 32


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def guards(tokenizer) -> dict[str, GateHook]:
    return {
        "bio": make_guard(None, tokenizer, tau=0.3, seed=0).hook(),
        "other": make_guard(None, tokenizer, ids=(5, 6), tau=0.3, seed=1).hook(),
    }


def _direction(gate: GateHook) -> torch.Tensor:
    """A residual direction on which every selected latent of ``gate`` fires (minus: none does)."""
    columns = gate.latents.encoder
    return columns.sum(1) / columns.sum(1).norm()


def _rows(gate: GateHook, firing: list[bool], seed: int) -> torch.Tensor:
    """(T, d) residual rows: firing rows along the gate's latents, the others against them."""
    noise = torch.randn(len(firing), D, generator=torch.Generator().manual_seed(seed)) * 0.05
    sign = torch.tensor([4.0 if f else -4.0 for f in firing]).unsqueeze(1)
    return sign * _direction(gate) + noise


def _ids(length: int, seed: int, tokenizer) -> torch.Tensor:
    words = torch.randint(8, 30, (length,), generator=torch.Generator().manual_seed(seed))
    words[0] = tokenizer.bos_token_id  # a special token the gate never counts
    return words


def _oracle(gate: GateHook, hidden: torch.Tensor, ids: torch.Tensor, prompt: int, mask=None):
    """The gate over the whole sequence in one forward: (clamped rows, per-position flags)."""
    history = RowHistory.empty(torch.tensor([prompt]))
    call = ForwardCall(1, hidden.shape[0], 0, ids.unsqueeze(0), mask)
    out = gate.intervene(hidden.unsqueeze(0), call, history)
    return out[0], history.flag[0]


class Request:
    """One request's whole sequence and how far vLLM has run it."""

    def __init__(self, rid: str, hidden: torch.Tensor, ids: torch.Tensor, prompt: int, extra=None) -> None:
        self.rid, self.hidden, self.ids, self.prompt, self.extra = rid, hidden, ids, prompt, extra
        self.computed = 0
        self.out = torch.zeros_like(hidden)

    def schedule(self, count: int) -> int:
        return min(count, self.hidden.shape[0] - self.computed)


def _run(
    router: GuardRouter, schedule: list[list[tuple[Request, int]]], layers: tuple[int, ...] = (0,)
) -> None:
    """Feed ``router`` one flattened batch per step: (request, tokens) pairs, as vLLM would.

    With several ``layers`` every hooked block sees the same rows; a request keeps the output
    of its own guard's block.
    """
    for step in schedule:
        rows, ids, steps, start = [], [], [], 0
        for request, count in step:
            count = request.schedule(count)
            lo, hi = request.computed, request.computed + count
            rows.append(request.hidden[lo:hi])
            ids.append(request.ids[lo:hi])
            steps.append(
                RequestStep(
                    request.rid,
                    start,
                    start + count,
                    lo,
                    request.ids[: request.prompt].tolist(),
                    request.extra,
                )
            )
            start += count
        hidden = torch.cat(rows)
        outs = {layer: router.apply(layer, hidden, torch.cat(ids), steps) for layer in layers}
        for request, item in zip([r for r, _ in step], steps, strict=True):
            name = router.guard_for(request.extra)
            out = outs.get(router.guards[name].layer) if name is not None else None
            out = hidden if out is None else out
            request.out[item.computed : item.computed + item.length] = out[item.start : item.stop]
            request.computed += item.length
        router.retire([r.rid for r, _ in step if r.computed < r.hidden.shape[0]])


def test_chunked_prefill_and_interleaved_decodes_match_one_full_forward(guards, tokenizer):
    bio, other = guards["bio"], guards["other"]
    # a: benign prompt (1 of 10 fires), every decoded token fires: flagged from the 3rd decoded on
    a = Request("a", _rows(bio, [False] * 9 + [True] + [True] * 6, 1), _ids(16, 1, tokenizer), 10)
    # b: a forget prompt, flagged on its prefill; decoded tokens mix
    b = Request(
        "b", _rows(other, [True] * 5 + [False] * 2 + [True, False, True], 2), _ids(10, 2, tokenizer), 7
    )
    b.extra = {"saeguard": "other", "saeguard_tag": "b-tag"}
    c = Request("c", _rows(bio, [True] * 8, 3), _ids(8, 3, tokenizer), 5, {"saeguard": "none"})
    router = GuardRouter(guards, default="bio")
    schedule = [[(a, 4), (b, 7)], [(a, 6), (b, 1), (c, 5)]] + [[(a, 1), (b, 1), (c, 1)]] * 6
    _run(router, schedule)

    for request, gate in ((a, bio), (b, other)):
        expected, flags = _oracle(gate, request.hidden, request.ids, request.prompt)
        torch.testing.assert_close(request.out, expected, rtol=0, atol=1e-6)
        assert not torch.equal(expected, request.hidden)  # the guard did clamp something
    assert torch.equal(c.out, c.hidden)  # an unguarded request is untouched
    decided = router.decisions()
    assert decided["a"]["prompt_flagged"] is False and decided["a"]["flagged"] is True
    assert decided["b-tag"]["prompt_flagged"] is True and decided["b-tag"]["guard"] == "other"
    assert "c" not in decided


def test_prompt_decision_is_kept_for_every_decoded_token(guards, tokenizer):
    bio = guards["bio"]
    request = Request("r", _rows(bio, [True] * 6 + [False] * 6 + [True] * 4, 4), _ids(16, 4, tokenizer), 6)
    router = GuardRouter(guards, default="bio")
    _run(router, [[(request, 6)]] + [[(request, 1)]] * 10)
    _, flags = _oracle(bio, request.hidden, request.ids, request.prompt)
    assert bool(flags.all())  # sticky: benign decoded rows stay flagged
    decoded = slice(12, 16)  # firing decoded rows are clamped
    assert not torch.allclose(request.out[decoded], request.hidden[decoded])
    assert router.decisions()["r"]["flagged"] is True


def test_request_recomputed_after_preemption_starts_a_fresh_history(guards, tokenizer):
    bio = guards["bio"]
    request = Request("p", _rows(bio, [False] * 9 + [True] * 7, 5), _ids(16, 5, tokenizer), 10)
    router = GuardRouter(guards, default="bio")
    _run(router, [[(request, 10)], [(request, 1)], [(request, 1)]])
    request.computed = 0  # preempted: vLLM recomputes prompt and decoded tokens in one prefill
    _run(router, [[(request, 12)]] + [[(request, 1)]] * 4)
    expected, _ = _oracle(bio, request.hidden, request.ids, request.prompt)
    torch.testing.assert_close(request.out, expected, rtol=0, atol=1e-6)


def test_guards_on_different_blocks_each_keep_their_requests_state(tokenizer):
    guards = {
        "early": make_guard(None, tokenizer, layer=0, tau=0.3, seed=0).hook(),
        "late": make_guard(None, tokenizer, layer=1, ids=(5, 6), tau=0.3, seed=1).hook(),
    }
    early = Request("e", _rows(guards["early"], [False] * 7 + [True] * 7, 9), _ids(14, 9, tokenizer), 7)
    late = Request("l", _rows(guards["late"], [True] * 6 + [False] * 6, 10), _ids(12, 10, tokenizer), 6)
    late.extra = {"saeguard": "late"}
    router = GuardRouter(guards, default="early")
    _run(
        router,
        [[(early, 3), (late, 6)], [(early, 4), (late, 1)]] + [[(early, 1), (late, 1)]] * 7,
        layers=(0, 1),
    )
    for request, gate in ((early, guards["early"]), (late, guards["late"])):
        expected, _ = _oracle(gate, request.hidden, request.ids, request.prompt)
        torch.testing.assert_close(request.out, expected, rtol=0, atol=1e-6)
    assert router.decisions()["e"]["fail_closed"] is False and router.decisions()["e"]["flagged"] is True


def test_unknown_guard_names_fall_back_to_the_default(guards):
    router = GuardRouter(guards, default="bio")
    assert router.guard_for({"saeguard": "cyber"}) == "bio"
    assert router.guard_for({"saeguard": "OFF"}) is None
    assert router.guard_for({"saeguard": "other"}) == "other"
    assert GuardRouter(guards).guard_for(None) is None  # no default: unguarded unless asked


def test_cached_tokens_the_guard_never_saw_fail_closed(guards, tokenizer):
    bio = guards["bio"]
    request = Request("k", _rows(bio, [False] * 6 + [True] * 4, 6), _ids(10, 6, tokenizer), 8)
    request.computed = 6  # a prefix-cache hit: six prompt tokens were never run through the model
    router = GuardRouter(guards, default="bio")
    _run(router, [[(request, 2)], [(request, 1)], [(request, 1)]])
    assert router.decisions()["k"]["fail_closed"] is True
    assert not torch.allclose(request.out[6:], request.hidden[6:])  # firing rows clamped


def test_user_turns_of_a_chat_prompt_are_the_counted_tokens(guards, tokenizer):
    bio = guards["bio"]
    messages = [{"role": "user", "content": "cell virus gene protein"}]
    prompt_ids = torch.tensor(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    )
    prompt = int(prompt_ids.shape[0])
    ids = torch.cat([prompt_ids, torch.tensor([10, 11, 12])])
    user = user_token_mask(tokenizer, prompt_ids.tolist())
    assert 0 < sum(user) < prompt
    firing = [not counts for counts in user] + [False] * 3  # the template fires, the user's text does not
    request = Request("u", _rows(bio, firing, 7), ids, prompt)
    router = GuardRouter(guards, default="bio", tokenizer=tokenizer)
    _run(router, [[(request, 3)], [(request, prompt - 3)]] + [[(request, 1)]] * 3)
    counted = torch.tensor(user + [True] * 3)
    expected, _ = _oracle(bio, request.hidden, request.ids, prompt, counted.unsqueeze(0))
    torch.testing.assert_close(request.out, expected, rtol=0, atol=1e-6)
    assert router.decisions()["u"]["prompt_flagged"] is False  # only template tokens fired


def test_router_refuses_guards_with_their_own_tokenizer(tokenizer):
    with pytest.raises(SaeguardError, match="without a tokenizer"):
        GuardRouter({"bio": make_guard(None, tokenizer).hook(tokenizer=tokenizer)})
    with pytest.raises(SaeguardError, match="default guard"):
        GuardRouter({"bio": make_guard(None, tokenizer).hook()}, default="cyber")


# -- the vLLM adapter against a fake runner and forward context -----------------------------------
class _Block(nn.Module):
    """A decoder layer shaped like vLLM's: returns (hidden, residual), the add deferred."""

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden * 0.5, residual + hidden * 0.5


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        hidden, residual = embeddings, torch.zeros_like(embeddings)
        for block in self.layers:
            hidden, residual = block(hidden, residual)
            self.seen.append(hidden + residual)
        return hidden + residual


def _runner(requests: dict[str, tuple[int, list[int], dict | None]]) -> SimpleNamespace:
    states = {
        rid: SimpleNamespace(
            num_computed_tokens=computed,
            prompt_token_ids=prompt,
            sampling_params=SimpleNamespace(extra_args=extra),
        )
        for rid, (computed, prompt, extra) in requests.items()
    }
    return SimpleNamespace(input_batch=SimpleNamespace(req_ids=list(requests)), requests=states)


def test_request_steps_read_rows_from_the_forward_context():
    runner = _runner({"x": (0, [1, 2, 3], None), "y": (7, [4] * 7, {"saeguard": "bio"})})
    metadata = {"layer.0": SimpleNamespace(query_start_loc=torch.tensor([0, 3, 4]))}
    steps = request_steps(runner, metadata)
    assert [(s.request_id, s.start, s.stop, s.computed) for s in steps] == [("x", 0, 3, 0), ("y", 3, 4, 7)]
    assert steps[1].extra_args == {"saeguard": "bio"}
    assert request_steps(runner, None) == [] and request_steps(SimpleNamespace(), metadata) == []
    runner.query_start_loc = SimpleNamespace(np=[0, 2, 4, 0, 0])  # the runner's host buffer wins
    assert [(s.start, s.stop) for s in request_steps(runner, metadata)] == [(0, 2), (2, 4)]


def test_installed_hooks_clamp_the_residual_stream_of_guarded_requests(guards, tokenizer):
    bio = guards["bio"]
    model = _Model()
    router = GuardRouter({"bio": bio}, default="bio")
    runner = _runner({"g": (0, [1] * 4, None), "n": (0, [1] * 3, {"saeguard": "none"})})
    metadata = [{"layer.0": SimpleNamespace(query_start_loc=torch.tensor([0, 4, 7]))}]
    handles = install(runner, model, router, lambda: metadata)
    embeddings = _rows(bio, [True] * 7, 8)
    ids = torch.tensor([1, 9, 10, 11, 1, 9, 10])
    model(ids, embeddings)
    for handle in handles:
        handle.remove()
    plain = _Model()
    plain(ids, embeddings)
    expected, _ = _oracle(bio, plain.seen[0][:4], ids[:4], 4)
    torch.testing.assert_close(model.seen[0][:4], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.seen[0][4:], plain.seen[0][4:], rtol=0, atol=0)  # unguarded
    assert router.decisions()["g"]["prompt_flagged"] is True


def test_guard_spec_and_environment(tmp_path, tokenizer):
    assert parse_guard_spec(" bio=/a , cyber=/b,") == {"bio": "/a", "cyber": "/b"}
    for bad in ("bio", "=x", "bio=/a,bio=/b", ""):
        with pytest.raises(SaeguardError):
            parse_guard_spec(bad)
    make_guard(None, tokenizer).save(tmp_path / "bio")
    assert router_from_env(environ={}) is None
    router = router_from_env(environ={"SAEGUARD_VLLM_GUARDS": f"bio={tmp_path / 'bio'}"})
    assert router is not None and router.default == "bio" and router.layers == {0}
    env = {"SAEGUARD_VLLM_GUARDS": f"bio={tmp_path / 'bio'}", "SAEGUARD_VLLM_DEFAULT": "none"}
    assert router_from_env(environ=env).default is None
