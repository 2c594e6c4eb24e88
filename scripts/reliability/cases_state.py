"""State: guards used with a model they were not fitted on, or without what they need.

A guard fitted on the 2-layer, width-32 Llama must be refused, in one line, wherever it meets a
model of width 48 or with one layer (load, generate, attach, MCQ, lm-eval, explain, the server);
another model of the same width is refused by the strict weight check and accepted without it. A
TopK guard read without its SAE must be refused wherever its gate would run.
"""

from __future__ import annotations

from typing import Any

from saeguard import Guardrail
from saeguard.core.guardrail import row_decisions
from saeguard.errors import SaeguardError
from saeguard.eval.lm_eval_adapter import guarded_lm
from saeguard.eval.mcq import evaluate_mcq
from saeguard.explain.guard import explain_guard
from saeguard.explain.trace import trace_prompt
from saeguard.server import ServerSettings, create_app
from scripts.reliability.fixtures import Workspace, mcq_rows
from scripts.reliability.framework import Probe

AREA = "api:state"


def run(probe: Probe, ws: Workspace) -> None:
    _other_models(probe, ws)
    _topk_without_sae(probe, ws)
    _create_app(probe, ws)
    _prompts_and_rows(probe, ws)


def attach_and_detach(guard: Guardrail, model: Any, *, block: bool = False) -> str:
    """Attach ``guard`` (as ``attached`` when ``block``); detach at once so a wrong success leaves no hook."""
    if block:
        with guard.attached(model):
            return "attached"
    guard.attach(model).detach()
    return "attached"


def _other_models(probe: Probe, ws: Workspace) -> None:
    guard, tok = ws.guard, ws.tok
    for label, key in (("width 48", "wide"), ("one layer", "shallow")):
        other = ws.extra[key]
        uses: dict[str, Any] = {
            "Guardrail.load": lambda o=other: Guardrail.load(ws.path("guard"), o, strict=False),
            "generate": lambda o=other: guard.generate(o, tok, ["what is the cell"], max_new_tokens=1),
            "attach": lambda o=other: attach_and_detach(guard, o),
            "attached": lambda o=other: attach_and_detach(guard, o, block=True),
            "evaluate_mcq": lambda o=other: evaluate_mcq(o, tok, mcq_rows(2), guard=guard),
            "guarded_lm": lambda o=other: guarded_lm(o, tok, guard),
            "explain_guard": lambda o=other: explain_guard(o, tok, guard),
            "trace_prompt": lambda o=other: trace_prompt(o, tok, guard, "what is the cell"),
        }
        for use, call in uses.items():
            probe.error(
                AREA,
                f"{use} on a model of {label}",
                f"{use}(model of {label}, guard of the 32-wide Llama)",
                call,
            )
    qwen2 = ws.extra["qwen2"]
    probe.error(
        AREA,
        "Guardrail.load on qwen2 of the same width (strict)",
        "Guardrail.load(guard, qwen2)",
        lambda: Guardrail.load(ws.path("guard"), qwen2),
    )
    probe.error(
        AREA,
        "Guardrail.load a gpt2 guard on llama (strict)",
        "Guardrail.load(gpt2_guard, llama)",
        lambda: Guardrail.load(ws.path("gpt2_guard"), ws.model),
    )

    def no_strict() -> str | None:
        loaded = Guardrail.load(ws.path("guard"), qwen2, strict=False)
        texts, reports = loaded.generate(qwen2, tok, ["what is the cell"], max_new_tokens=2)
        same = len(texts) == 1 and loaded.tau == ws.guard.tau and bool(reports[0].rho.isfinite().all())
        return None if same else f"{texts} {reports} tau {loaded.tau}"

    probe.ok(
        AREA,
        "qwen2 of the same width with strict=False",
        "Guardrail.load(guard, qwen2, strict=False).generate(...)",
        no_strict,
        lambda problem: problem,
    )


def _topk_without_sae(probe: Probe, ws: Workspace) -> None:
    topk = Guardrail.load(ws.path("topk_guard"), need_sae=False)
    uses: dict[str, Any] = {
        "generate": lambda: topk.generate(ws.model, ws.tok, ["what is the cell"], max_new_tokens=1),
        "attach": lambda: attach_and_detach(topk, ws.model),
        "evaluate_mcq": lambda: evaluate_mcq(ws.model, ws.tok, mcq_rows(2), guard=topk),
        "Guardrail.load with another SAE": lambda: Guardrail.load(ws.path("topk_guard"), sae=ws.path("sae")),
    }
    for use, call in uses.items():
        probe.error(
            AREA,
            f"TopK guard without its SAE: {use}",
            f"Guardrail.load(topk, need_sae=False) then {use}",
            call,
        )


def _create_app(probe: Probe, ws: Workspace) -> None:
    """Guards the app cannot apply are refused by ``create_app``, not by every request."""
    topk = Guardrail.load(ws.path("topk_guard"), need_sae=False)
    bio = {"bio": ws.guard}
    state: dict[str, Any] = {
        "a guard of another width (48)": lambda: create_app(ws.extra["wide"], ws.tok, bio),
        "a layer-1 guard on a 1-layer model": lambda: create_app(ws.extra["shallow"], ws.tok, bio),
        "a TopK guard loaded without its SAE": lambda: create_app(ws.model, ws.tok, {"topk": topk}),
        "a guard that is not a Guardrail": lambda: create_app(
            ws.model, ws.tok, {"bio": str(ws.path("guard"))}
        ),
        "a guard name holding '+'": lambda: create_app(ws.model, ws.tok, {"a+b": ws.guard}),
        "a guard named 'none'": lambda: create_app(ws.model, ws.tok, {"none": ws.guard}),
        "a model id holding '+'": lambda: create_app(ws.model, ws.tok, bio, ServerSettings(model_id="m+x")),
        "workers=0": lambda: create_app(ws.model, ws.tok, bio, ServerSettings(workers=0)),
        "default_guards naming no guard": lambda: create_app(
            ws.model, ws.tok, bio, ServerSettings(default_guards=("chem",))
        ),
    }
    for name, make in state.items():
        probe.error(AREA, f"create_app with {name}", f"create_app(..., {name})", make)


def _prompts_and_rows(probe: Probe, ws: Workspace) -> None:
    """A trace beyond the model's positions says to shorten the prompt; decisions line up with prompts."""

    def long_trace() -> str:
        try:
            trace_prompt(ws.model, ws.tok, ws.guard, "cell " * 1100)
        except SaeguardError as error:
            return str(error)
        return "no error"

    probe.ok(
        AREA,
        "trace_prompt of 1,100 tokens (1,024 positions) says to shorten the prompt",
        "trace_prompt(model, tok, guard, 'cell ' * 1100)",
        long_trace,
        lambda m: None if "shorten the prompt" in m and "seq_len" not in m else m,
    )
    prompts = ["what is the cell virus gene", "the king of the city"]

    def per_prompt() -> str | None:
        _, greedy = ws.guard.generate(ws.model, ws.tok, prompts, max_new_tokens=2)
        texts, beams = ws.guard.generate(ws.model, ws.tok, prompts, max_new_tokens=2, num_beams=3)
        want = [(d.prompt_flagged, round(d.prompt_rho, 9)) for d in row_decisions(greedy, len(prompts))]
        got = [(d.prompt_flagged, round(d.prompt_rho, 9)) for d in row_decisions(beams, len(prompts))]
        return (
            None if got == want and len(texts) == len(got) == 2 else f"{got} != {want} ({len(texts)} texts)"
        )

    probe.ok(
        AREA,
        "row_decisions(records, len(prompts)) under beam search: one per prompt, as greedy",
        "row_decisions(guard.generate(..., num_beams=3)[1], 2)",
        per_prompt,
        lambda problem: problem,
    )
