"""Speed sections: guard overhead, generation, evaluation, and a profile (fit throughput: ``throughput``).

Each returns a JSON-ready dict whose ``ratio`` is measured against a baseline
timed in the same run (see ``timing.interleave``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

import torch

from saeguard.bench.config import BenchSizes
from saeguard.bench.fixtures import Subject, tiny_mcq
from saeguard.bench.timing import (
    clock,
    interleave,
    median,
    native_stderr_silenced,
    timed_guard,
    timer,
)
from saeguard.core.hooks import dispatcher_for
from saeguard.hf.corpus import pad_token_id
from saeguard.hf.layers import decoder_blocks, residual_at

_LABEL = "saeguard.guard"


class _GuardedRun:
    """One guard variant: attaches, times one run of ``fn``, records the hook's own seconds."""

    def __init__(self, subject: Subject, arch: str, forced: bool | None, fn) -> None:
        self.subject, self.arch, self.forced, self.fn = subject, arch, forced, fn
        self.guard = subject.guard(arch)
        self.hook_seconds: list[float] = []

    def __call__(self) -> float:
        with timed_guard(self.guard, self.subject.model, forced=self.forced) as (_hook, hook_clock):
            seconds = clock(self.fn, self.subject.device)
        self.hook_seconds.append(hook_clock.seconds)
        return seconds


@torch.no_grad()
def guard_overhead(subject: Subject, sizes: BenchSizes) -> dict[str, Any]:
    """Guarded / unguarded forward latency per (seq, batch), SAE architecture, gate forced on/off.

    ``ratio_hook`` = 1 + (seconds inside the guard's hooks) / (unguarded forward
    seconds): the hook time is measured inside the same forwards and is far less
    noisy than the end-to-end ``ratio_e2e``. Shapes whose end-to-end rounds would
    exceed ``shape_budget_s`` get the hook timed on a captured residual instead.
    """
    model = subject.model
    variants = [(arch, forced) for arch in sizes.overhead_archs for forced in (True, False)]
    _warm_guards(subject, variants)
    rows: list[dict[str, Any]] = []
    for seq_len, batch in sizes.overhead_shapes:
        ids, mask = subject.ids(seq_len, batch)

        def forward(ids=ids, mask=mask) -> None:
            model(input_ids=ids, attention_mask=mask, use_cache=False)

        first = clock(forward, subject.device)
        base = [clock(forward, subject.device)] if first < sizes.shape_budget_s / 20 else [first]
        rounds = min(sizes.rounds, int(sizes.shape_budget_s // (base[-1] * (1 + len(variants)))))
        runs = {f"{a}/{'on' if f else 'off'}": _GuardedRun(subject, a, f, forward) for a, f in variants}
        timed = interleave(timer(forward, subject.device), runs, rounds) if rounds >= 1 else None
        base_s = median(timed.baseline if timed else base)
        for name, run in runs.items():
            if timed is not None:
                hook_s, method = median(run.hook_seconds), "interleaved forwards"
            else:
                hook_s, method = (
                    _hook_only(subject, run, ids, mask, sizes.hook_repeats),
                    "hook on captured residual",
                )
            row = {
                "arch": run.arch,
                "forced": "on" if run.forced else "off",
                "seq_len": seq_len,
                "batch": batch,
                "method": method,
                "baseline_ms": 1e3 * base_s,
                "hook_ms": 1e3 * hook_s,
                "ratio_hook": 1.0 + hook_s / base_s,
                "ratio_e2e": timed.ratio(name) if timed else None,
                "rounds": rounds,
            }
            if timed is not None:
                summary = timed.summary(name)
                row.update(ratio_e2e_q1=summary["ratio_q1"], ratio_e2e_q3=summary["ratio_q3"])
            row["ratio"] = row["ratio_hook"]
            rows.append(row)
    cheap = [r["ratio"] for r in rows if r["arch"] in ("standard", "jumprelu")]
    return {
        "rows": rows,
        "ratio": max(cheap) if cheap else max(r["ratio"] for r in rows),
        "ratio_of": "worst guarded/unguarded forward time over ReLU/JumpReLU rows (hook-timed)",
        "topk_worst": max((r["ratio"] for r in rows if r["arch"] == "topk"), default=None),
    }


def _warm_guards(subject: Subject, variants: list[tuple[str, bool]]) -> None:
    ids, mask = subject.ids(16, 1)
    for arch, forced in variants:
        with timed_guard(subject.guard(arch), subject.model, forced=forced):
            subject.model(input_ids=ids, attention_mask=mask, use_cache=False)


def _hook_only(subject: Subject, run: _GuardedRun, ids, mask, repeats: int) -> float:
    """Median seconds of the guard's two hooks called on the real residual of this input."""
    hidden = residual_at(subject.model, subject.layer, ids, mask)
    block = decoder_blocks(subject.model)[subject.layer]
    dispatcher = dispatcher_for(subject.model)  # the model's hooks route each forward to its gates
    block_hook = dispatcher._block_hook(subject.layer)  # noqa: SLF001
    seconds = []
    with timed_guard(run.guard, subject.model, forced=run.forced) as (_hook, hook_clock):
        for _ in range(repeats + 1):
            hook_clock.reset()
            dispatcher._read_call(subject.model, (), {"input_ids": ids, "attention_mask": mask})  # noqa: SLF001
            block_hook(block, (), hidden)
            seconds.append(hook_clock.seconds)
    return median(seconds[1:])


@torch.no_grad()
def generation(subject: Subject, sizes: BenchSizes) -> dict[str, Any]:
    """Greedy generation with KV cache, exactly ``gen_new_tokens`` new tokens, guarded vs not.

    The gate is forced on (every step reads and clamps the latents): the upper bound.
    """
    model, tokenizer = subject.model, subject.tokenizer
    new = sizes.gen_new_tokens
    rows: list[dict[str, Any]] = []
    for batch in sizes.gen_batches:
        ids, mask = subject.ids(sizes.gen_prompt_tokens, batch, offset=3)

        def generate(ids=ids, mask=mask) -> torch.Tensor:
            # Looked up per call (an attached guard wraps generate). nn.Module types attributes
            # as Tensor | Module; a transformers generate returns token ids (B, T).
            model_generate = cast(Callable[..., torch.Tensor], model.generate)
            return model_generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad_token_id(tokenizer),
            )

        produced = int(generate().shape[1]) - ids.shape[1]  # also the warm-up
        runs = {f"{arch}/on": _GuardedRun(subject, arch, True, generate) for arch in ("jumprelu", "topk")}
        for run in runs.values():
            run()
        timed = interleave(timer(generate, subject.device), runs, sizes.rounds)
        base_s = median(timed.baseline)
        for name, run in runs.items():
            run_s = median(timed.variants[name])
            rows.append(
                {
                    "arch": run.arch,
                    "batch": batch,
                    "new_tokens": produced,
                    "tokens_per_s_unguarded": batch * produced / base_s,
                    "tokens_per_s_guarded": batch * produced / run_s,
                    "ratio": 1.0 / timed.ratio(name),
                    "ratio_hook": 1.0 / (1.0 + median(run.hook_seconds[1:]) / base_s),
                    "rounds": sizes.rounds,
                }
            )
    cheap = [r["ratio_hook"] for r in rows if r["arch"] == "jumprelu"]
    return {
        "rows": rows,
        "ratio": min(cheap),
        "ratio_of": "worst guarded/unguarded tokens per second, JumpReLU, gate on (hook-timed)",
    }


def evaluation(subject: Subject, sizes: BenchSizes) -> dict[str, Any]:
    """MCQ items per second for the letter and cloze scorers, guarded (gate on every item) vs not."""
    try:
        from saeguard.eval import McqConfig, evaluate_mcq
    except ImportError as error:
        return {"status": "not measured", "note": f"saeguard.eval is not importable: {error}"}
    if subject.name == "tiny":
        items = tiny_mcq(sizes.eval_items)
    else:
        from saeguard.data.mcq import build_mcq

        items = build_mcq("wiki:biology", "heldout", limit=sizes.eval_items)
    guard = subject.guard("jumprelu", tau=-1.0)  # rho > -1 always: every item is clamped
    rows = []
    for scorer in ("letter", "cloze"):
        config = McqConfig(scorer=scorer, batch_size=sizes.eval_batch_size)

        def run(guarded: bool, config=config) -> None:
            evaluate_mcq(
                subject.model,
                subject.tokenizer,
                items,
                guard=guard if guarded else None,
                config=config,
                show_progress=False,
            )

        run(False)
        run(True)
        timed = interleave(
            timer(lambda: run(False), subject.device),
            {"guarded": timer(lambda: run(True), subject.device)},
            sizes.rounds,
        )
        rows.append(
            {
                "scorer": scorer,
                "items": len(items),
                "items_per_s_unguarded": len(items) / median(timed.baseline),
                "items_per_s_guarded": len(items) / median(timed.variants["guarded"]),
                "ratio": 1.0 / timed.ratio("guarded"),
                "rounds": sizes.rounds,
            }
        )
    return {
        "rows": rows,
        "ratio": min(r["ratio"] for r in rows),
        "ratio_of": "guarded/unguarded items per second (worst scorer)",
    }


@torch.no_grad()
def profile(subject: Subject, sizes: BenchSizes) -> dict[str, Any]:
    """torch.profiler over guarded forwards: the guard's share and its most expensive ops."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    seq_len, batch = sizes.profile_shape
    ids, mask = subject.ids(seq_len, batch)
    result: dict[str, Any] = {"shape": [batch, seq_len], "guards": {}}
    for arch in ("jumprelu", "topk"):
        with timed_guard(subject.guard(arch), subject.model, forced=True, label=_LABEL):
            subject.model(input_ids=ids, attention_mask=mask, use_cache=False)
            with native_stderr_silenced(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(sizes.profile_repeats):
                    with record_function("forward"):
                        subject.model(input_ids=ids, attention_mask=mask, use_cache=False)
        events = prof.events()
        forward_us = sum(e.cpu_time_total for e in events if e.name == "forward")
        guard_events = [e for e in events if e.name == _LABEL]
        guard_us = sum(e.cpu_time_total for e in guard_events)
        calls: dict[str, list[float]] = defaultdict(list)
        for event in guard_events:
            _collect_self_time(event, calls)
        # median call x calls: one call preempted by another process does not top the list
        robust = {name: median(times) * len(times) for name, times in calls.items()}
        python_us = guard_us - sum(sum(times) for times in calls.values())
        top = sorted(robust.items(), key=lambda kv: -kv[1])[:10]
        repeats = sizes.profile_repeats
        result["guards"][arch] = {
            "forward_ms": forward_us / 1e3 / repeats,
            "guard_ms": guard_us / 1e3 / repeats,
            "guard_share": guard_us / forward_us,
            "python_ms": python_us / 1e3 / repeats,
            "ops": [
                {
                    "op": name,
                    "calls_per_forward": len(calls[name]) / repeats,
                    "ms": us / 1e3 / repeats,
                    "share_of_guard": us / max(guard_us, 1e-9),
                }
                for name, us in top
            ],
        }
    result["ratio"] = 1.0 + result["guards"]["jumprelu"]["guard_share"]
    result["ratio_of"] = "1 + profiled guard time / guarded forward time (JumpReLU, gate on)"
    return result


def _collect_self_time(event, calls: dict[str, list[float]]) -> None:
    for child in event.cpu_children:
        calls[child.name].append(child.self_cpu_time_total)
        _collect_self_time(child, calls)
