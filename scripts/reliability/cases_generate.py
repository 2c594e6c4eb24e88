"""Guardrail.generate options, attach/detach misuse, threads: parity with no-cache recomputation."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import torch

from saeguard import Guardrail
from saeguard.testing import tiny_gpt2, tiny_llama
from scripts.reliability.fixtures import Workspace
from scripts.reliability.framework import Probe

PROMPTS = [
    "what is the cell virus gene protein",
    "the king of the city and the river",
    "a poem about the ocean and the dna of a cell",
]


def generate(ws: Workspace, guard: Guardrail | None = None, model: Any = None, **kw: Any) -> list[str]:
    torch.manual_seed(0)
    kw.setdefault("max_new_tokens", 6)
    return (guard or ws.guard).generate(model or ws.model, ws.tok, kw.pop("prompts", PROMPTS), **kw)[0]


def parity(ws: Workspace, **options: Any) -> str | None:
    """None when cached guarded generation equals the same call without cache."""
    cached = generate(ws, **options)
    full = generate(ws, **options, use_cache=False)
    return None if cached == full else f"cached {cached} != no-cache {full}"


def run(probe: Probe, ws: Workspace) -> None:
    _arguments(probe, ws)
    _strategies(probe, ws)
    _attach(probe, ws)
    _threads(probe, ws)


def _arguments(probe: Probe, ws: Workspace) -> None:
    area = "api:generate-args"
    g, m, t = ws.guard, ws.model, ws.tok
    bad: dict[str, Any] = {
        "prompts=[]": lambda: g.generate(m, t, []),
        "prompts='a string'": lambda: g.generate(m, t, "what is a cell"),
        "prompts=[123]": lambda: g.generate(m, t, [123]),
        "prompts=[None]": lambda: g.generate(m, t, [None]),
        "prompts=[b'bytes']": lambda: g.generate(m, t, [b"cell"]),
        "prompts=[[]] (empty conversation)": lambda: g.generate(m, t, [[]]),
        "prompts=[[{'role': 'user'}]] (no content)": lambda: g.generate(m, t, [[{"role": "user"}]]),
        "prompts=[[{'role': 'system', ...}]] (no user turn)": lambda: g.generate(
            m, t, [[{"role": "system", "content": "be nice"}]]
        ),
        "content as a list of parts": lambda: g.generate(
            m, t, [[{"role": "user", "content": [{"type": "text", "text": "cell"}]}]]
        ),
        "tokenizer=None": lambda: g.generate(m, None, ["cell"]),
        "tokenizer='tok'": lambda: g.generate(m, "tok", ["cell"]),
        "model=None": lambda: g.generate(None, t, ["cell"]),
        "model='llama'": lambda: g.generate("llama", t, ["cell"]),
        "model of hidden size 64": lambda: g.generate(tiny_llama(hidden_size=64), t, ["cell"]),
        "model with 1 layer (guard on layer 1)": lambda: g.generate(tiny_llama(layers=1), t, ["cell"]),
        "max_new_tokens=0": lambda: g.generate(m, t, ["cell"], max_new_tokens=0),
        "max_new_tokens=-1": lambda: g.generate(m, t, ["cell"], max_new_tokens=-1),
        "max_new_tokens=2.5": lambda: g.generate(m, t, ["cell"], max_new_tokens=2.5),
        "max_new_tokens='5'": lambda: g.generate(m, t, ["cell"], max_new_tokens="5"),
        "max_new_tokens=True": lambda: g.generate(m, t, ["cell"], max_new_tokens=True),
        "320-token prompt on 256-position gpt2": lambda: g.generate(
            tiny_gpt2(max_positions=256), t, [" ".join(["cell"] * 320)]
        ),
        "prompt + max_new_tokens over positions": lambda: g.generate(
            tiny_gpt2(max_positions=256), t, [" ".join(["cell"] * 200)], max_new_tokens=100
        ),
        "attention_mask in generate_kwargs": lambda: g.generate(m, t, ["cell"], attention_mask=None),
        "input_ids in generate_kwargs": lambda: g.generate(m, t, ["cell"], input_ids=None),
        "unknown generate option foo=1": lambda: g.generate(m, t, ["cell"], foo=1),
        "num_beams=0": lambda: g.generate(m, t, ["cell"], num_beams=0),
        "greedy num_return_sequences=3": lambda: g.generate(m, t, ["cell"], num_return_sequences=3),
        "streamer='x'": lambda: g.generate(m, t, ["cell"], streamer="x"),
    }
    for name, fn in bad.items():
        probe.error(area, name, f"guard.generate(..., {name})", fn)
    probe.ok(
        area,
        "empty string prompt",
        "guard.generate(prompts=['']): not flagged",
        lambda: g.generate(m, t, [""], max_new_tokens=2)[1][0].prompt_flagged.tolist(),
        lambda f: None if f == [False] else f"flags {f}",
    )
    probe.ok(
        area,
        "whitespace prompt",
        "guard.generate(prompts=['   \\n\\t']): not flagged",
        lambda: g.generate(m, t, ["   \n\t"], max_new_tokens=2)[1][0].prompt_flagged.tolist(),
        lambda f: None if f == [False] else f"flags {f}",
    )
    alone = [float(g.generate(m, t, [p], max_new_tokens=1)[1][0].rho[0]) for p in PROMPTS]
    probe.ok(
        area,
        "rho independent of batch padding",
        "prompt rho alone == rho in a left-padded batch",
        lambda: [float(r) for r in g.generate(m, t, PROMPTS, max_new_tokens=1)[1][0].rho],
        lambda rho: (
            None
            if all(abs(a - b) < 1e-9 for a, b in zip(rho, alone, strict=True))
            else f"batched {rho} vs alone {alone}"
        ),
    )


def _strategies(probe: Probe, ws: Workspace) -> None:
    area = "api:generate-parity"
    assistant = tiny_llama(seed=3)
    strategies: dict[str, dict[str, Any]] = {
        "greedy": {},
        "sampling": {"do_sample": True, "top_k": 5},
        "sampling num_return_sequences=2": {"do_sample": True, "num_return_sequences": 2},
        "beam 4 x 4": {"num_beams": 4, "num_return_sequences": 4},
        "beam 3": {"num_beams": 3},
        "beam sampling": {"do_sample": True, "num_beams": 2},
        "repetition_penalty": {"repetition_penalty": 1.5},
        "min_new_tokens": {"min_new_tokens": 4},
        "static cache": {"cache_implementation": "static"},
        "no_repeat_ngram_size": {"no_repeat_ngram_size": 2},
        "output_scores + return_dict": {"return_dict_in_generate": True, "output_scores": True},
    }
    for name, options in strategies.items():
        probe.ok(
            area,
            name,
            f"guard.generate(..., {options}) == the same with use_cache=False",
            partial(parity, ws, **options),
            lambda problem: problem,
        )
    for name, options in {  # need a cache: compared with greedy, which they must reproduce exactly
        "prompt lookup, one prompt": {"prompt_lookup_num_tokens": 2},
        "assisted decoding, one prompt": {"assistant_model": assistant},
    }.items():
        for prompt in (PROMPTS[0], PROMPTS[2]):
            probe.ok(
                area,
                f"{name}: {prompt[:12]}",
                f"guard.generate([{prompt!r}], {options}) == greedy",
                partial(_with_and_without, ws, prompt, options),
                lambda pair: None if pair[0] == pair[1] else f"{pair[0]} != greedy {pair[1]}",
            )
    refused = {
        "assisted decoding, batch of 3": {"assistant_model": assistant},
        "prompt lookup, batch of 3": {"prompt_lookup_num_tokens": 2},
        "contrastive search": {"penalty_alpha": 0.6, "top_k": 4},
        "group beam search": {"num_beams": 2, "num_beam_groups": 2, "diversity_penalty": 1.0},
    }
    for name, options in refused.items():  # either equal to the no-cache run or refused in one line
        probe.ok(
            area,
            name,
            f"guard.generate(..., {options}): equal to no-cache, or a one-line refusal",
            partial(_parity_or_refusal, ws, options),
            lambda problem: problem,
        )


def _with_and_without(ws: Workspace, prompt: str, options: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(texts with ``options``, greedy texts) for one prompt."""
    return generate(ws, prompts=[prompt], **options), generate(ws, prompts=[prompt])


def _parity_or_refusal(ws: Workspace, options: dict[str, Any]) -> str | None:
    from saeguard.errors import SaeguardError

    try:
        return parity(ws, **options)
    except SaeguardError as error:
        return None if "\n" not in str(error) else "multi-line refusal"


def _attach(probe: Probe, ws: Workspace) -> None:
    area = "api:attach"
    g, m, t = ws.guard, ws.model, ws.tok
    ids = t(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = m(ids).logits
    forced = Guardrail.from_result(g)
    forced.config = type(g.config)(**{**g.config.__dict__, "gate": "always"})
    with torch.no_grad(), forced.attached(m):
        once = m(ids).logits

    def logits_with(*guards: Guardrail) -> torch.Tensor:
        hooks = []
        try:
            for guard in guards:
                hooks.append(guard.attach(m))
            with torch.no_grad():
                return m(ids).logits
        finally:
            for hook in hooks:
                hook.detach()

    probe.error(
        area,
        "same guard attached twice",
        "guard.attach(model); guard.attach(model)",
        lambda: logits_with(forced, forced),
    )

    def nested() -> torch.Tensor:
        with forced.attached(m), forced.attached(m), torch.no_grad():
            return m(ids).logits

    probe.error(
        area, "nested attached, same guard", "with guard.attached(m): with guard.attached(m): ...", nested
    )

    def hook_twice() -> None:
        hook = forced.hook()
        hook.attach(m)
        try:
            hook.attach(m)
        finally:
            hook.detach()

    probe.error(area, "GateHook.attach twice", "hook.attach(m); hook.attach(m)", hook_twice)

    def detach_twice() -> bool:
        hook = forced.attach(m)
        hook.detach()
        hook.detach()
        return "generate" in m.__dict__

    probe.ok(
        area,
        "detach twice",
        "hook.detach(); hook.detach(): no error, hooks gone",
        detach_twice,
        lambda left: "generate wrapper left on the model" if left else None,
    )

    def two_models() -> tuple[bool, bool]:
        other = tiny_llama(seed=0, max_positions=1024)
        other.load_state_dict(m.state_dict())
        hook = forced.hook()
        hook.attach(m)
        hook.attach(other)
        try:
            with torch.no_grad():
                return bool(torch.allclose(m(ids).logits, once)), bool(
                    torch.allclose(other(ids).logits, once)
                )
        finally:
            hook.detach()

    probe.ok(
        area,
        "one hook on two models",
        "hook.attach(m1); hook.attach(m2): both guarded",
        two_models,
        lambda both: None if both == (True, True) else f"guarded: {both}",
    )

    def after_exception() -> bool:
        try:
            with forced.attached(m):
                raise KeyError("boom")
        except KeyError:
            pass
        with torch.no_grad():
            return bool(torch.equal(m(ids).logits, plain))

    probe.ok(
        area,
        "exception inside attached",
        "after an exception in the block the model is unguarded",
        after_exception,
        lambda same: None if same else "the guard stayed attached",
    )

    def attached_and_generate() -> list[str]:
        with g.attached(m):
            return generate(ws)

    probe.error(
        area,
        "attached + guard.generate",
        "guard.generate inside guard.attached(m) (would gate twice)",
        attached_and_generate,
    )
    probe.error(area, "attach('llama')", "guard.attach('llama')", lambda: g.attach("llama"))  # type: ignore[arg-type]
    probe.error(area, "attach(None)", "guard.attach(None)", lambda: g.attach(None))  # type: ignore[arg-type]
    probe.error(
        area,
        "attach(width 64)",
        "guard.attach(tiny_llama(hidden_size=64))",
        lambda: g.attach(tiny_llama(hidden_size=64)),
    )

    def chat_ids_decision() -> tuple[bool, bool]:
        ids = t.apply_chat_template(
            [{"role": "user", "content": PROMPTS[1]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        hook = g.attach(m, tokenizer=t)
        hook.recording = True
        try:
            m.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
            raw = bool(hook.records[0].prompt_flagged[0])
        finally:
            hook.detach()
        own = bool(g.generate(m, t, [PROMPTS[1]], max_new_tokens=2)[1][0].prompt_flagged[0])
        return raw, own

    probe.ok(
        area,
        "attached(tokenizer) on chat ids",
        "model.generate(chat ids) under attached(m, tokenizer=t) decides as guard.generate",
        chat_ids_decision,
        lambda p: None if p[0] == p[1] else f"{p}",
    )


def _threads(probe: Probe, ws: Workspace) -> None:
    area = "api:threads"
    prompts = [[p] for p in PROMPTS] * 2
    serial = [ws.guard.generate(ws.model, ws.tok, p, max_new_tokens=5)[0] for p in prompts]

    def concurrent() -> list[Any]:
        results: list[Any] = [None] * len(prompts)

        def work(index: int) -> None:
            try:
                results[index] = ws.guard.generate(ws.model, ws.tok, prompts[index], max_new_tokens=5)[0]
            except Exception as error:  # noqa: BLE001 - reported as the value
                results[index] = error

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    probe.ok(
        area,
        "6 concurrent generate calls",
        "6 threads x guard.generate on one model == serial",
        concurrent,
        lambda r: None if r == serial else f"{sum(a != b for a, b in zip(r, serial, strict=False))} differ",
    )

    def attached_in_thread() -> bool:
        out: list[Any] = []
        forced = Guardrail.from_result(ws.guard)
        forced.config = type(ws.guard.config)(**{**ws.guard.config.__dict__, "gate": "always"})
        ids = ws.tok(PROMPTS[0], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            plain = ws.model(ids).logits
        with forced.attached(ws.model):
            thread = threading.Thread(target=lambda: out.append(ws.model(ids).logits.detach()))
            thread.start()
            thread.join()
        return not torch.equal(out[0], plain)

    probe.ok(
        area,
        "attached guards other threads",
        "guard.attached(m) clamps a forward made in another thread",
        attached_in_thread,
        lambda guarded: None if guarded else "the worker thread was not guarded",
    )
