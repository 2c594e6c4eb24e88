"""Fit throughput: the statistics pass against a bare forward truncated at the hook layer.

The ratio is measured against a baseline timed in the same run (``timing.interleave``);
on the CPU, of process CPU seconds (``timing.CpuTimer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from saeguard.bench.config import BenchSizes
from saeguard.bench.fixtures import Subject
from saeguard.bench.timing import CpuTimer, bracketed_ratio, interleave, median, timer
from saeguard.core.statistics import (
    FeatureStatistics,
    SaeEncoder,
    collect_statistics,
    fold_tokens,
    token_batches,
)
from saeguard.hf.layers import residual_at


def fit_arch(subject: Subject) -> str:
    """The SAE a default fit uses: the trained default SAE when cached, else the random JumpReLU.

    The default SAE is trained as BatchTopK and stored in SAELens's JumpReLU inference form
    (``saeguard.sae_training``), so a random JumpReLU of the same width stands in for it.
    """
    return "trained" if "trained" in subject.saes else "jumprelu"


@torch.no_grad()
def fit_throughput(subject: Subject, sizes: BenchSizes) -> dict[str, Any]:
    """Statistics pass vs a bare forward truncated at the hook layer, on the same batches.

    Each SAE's pass is timed as the core runs it (``SaeEncoder``: fused sums) and, for the
    fit's SAE, through SAELens's ``encode`` (``fused=False``: the path before issue 17).
    On the CPU the ratio is of process CPU seconds (one torch thread: the work done, not
    the share of the cores other jobs left); wall-clock ratios are kept beside it.
    """
    model, layer, device = subject.model, subject.layer, subject.device
    chunks = subject.chunks(subject.forget, sizes.fit_seq_len, sizes.fit_batches * sizes.fit_batch_size)
    batches = [
        type(b)(b.input_ids.to(device), b.attention_mask.to(device), b.counted.to(device))
        for b in token_batches(chunks, subject.tokenizer, sizes.fit_batch_size)
    ]
    tokens = sum(int(b.attention_mask.sum()) for b in batches)

    def truncated() -> None:
        for b in batches:
            residual_at(model, layer, b.input_ids, b.attention_mask)

    def full() -> None:
        for b in batches:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def stats(arch: str, fused: bool = True) -> Callable[[], object]:
        sae = subject.saes[arch]
        return lambda: collect_statistics(model, sae, layer, batches, show_progress=False, fused=fused)

    primary = fit_arch(subject)
    archs = ("jumprelu", "topk", *(("trained",) if "trained" in subject.saes else ()))
    passes = {f"statistics ({arch})": stats(arch) for arch in archs}
    passes[f"statistics ({primary}, SAELens encode)"] = stats(primary, fused=False)
    for fn in (truncated, *passes.values()):
        fn()  # warm-up
    baseline = CpuTimer(truncated, device)
    variants = {name: CpuTimer(fn, device) for name, fn in passes.items()}
    timed = interleave(baseline, variants, sizes.rounds)
    context = interleave(timer(truncated, device), {"full": timer(full, device)}, sizes.full_forward_rounds)
    cpu = device.type == "cpu"
    rows: list[dict[str, Any]] = []
    for name, variant in variants.items():
        summary = timed.summary(name)
        ratio_cpu = bracketed_ratio(baseline.cpu, variant.cpu) if cpu else None
        rows.append(
            {"pass": name, "tokens_per_s": tokens / median(timed.variants[name]), **summary}
            | {"ratio_wall": summary["ratio"], "ratio_cpu": ratio_cpu}
            | {"ratio": ratio_cpu if ratio_cpu is not None else summary["ratio"]}
        )
    rows.append(
        {"pass": "full model forward", "tokens_per_s": tokens / median(context.variants["full"])}
        | context.summary("full")
    )
    main = next(row for row in rows if row["pass"] == f"statistics ({primary})")
    clock_name = "process CPU" if cpu else "wall"
    return {
        "tokens": tokens,
        "shape": [sizes.fit_batch_size, sizes.fit_seq_len],
        "batches": len(batches),
        "truncated_tokens_per_s": tokens / median(timed.baseline),
        "truncated_cpu_s": median(baseline.cpu),
        "rows": rows,
        "ratio": main["ratio"],
        "ratio_of": f"{main['pass']} / truncated forward, {clock_name} time",
        "breakdown": _statistics_breakdown(subject, batches, sizes, median(baseline.cpu)),
    }


@torch.no_grad()
def _statistics_breakdown(
    subject: Subject, batches: list, sizes: BenchSizes, forward_s: float
) -> dict[str, Any]:
    """Where the statistics pass spends its time beyond the forward (process CPU seconds).

    ``matmul_s`` is the encoder's bare (tokens, d_in) x (d_in, F) product, the floor of any
    exact statistics pass; ``fused_s`` the core's sums (:class:`SaeEncoder`); ``saelens_s``
    SAELens's ``encode`` plus :meth:`FeatureStatistics.update` (the path before issue 17).
    Each ``*_share`` is over the truncated forward's ``forward_s``.
    """
    sae = subject.saes[fit_arch(subject)]
    residuals = [
        residual_at(subject.model, subject.layer, b.input_ids, b.attention_mask)[b.counted] for b in batches
    ]
    width = int(sae.cfg.d_sae)
    weight = sae.W_enc.detach()
    encoder = SaeEncoder.from_sae(sae)

    def matmul() -> None:
        for r in residuals:
            torch.mm(r.to(weight.dtype), weight)

    def fused() -> None:
        stats = FeatureStatistics.empty(width)
        for r in residuals:
            fold_tokens(stats, sae, encoder, r)

    def saelens() -> None:
        stats = FeatureStatistics.empty(width)
        for r in residuals:
            fold_tokens(stats, sae, None, r)

    clocks = {name: CpuTimer(fn, subject.device) for name, fn in (("fused", fused), ("saelens", saelens))}
    floor = CpuTimer(matmul, subject.device)
    for fn in (matmul, fused, saelens):
        fn()
    interleave(floor, clocks, sizes.rounds)
    seconds = {"matmul_s": median(floor.cpu)} | {f"{n}_s": median(c.cpu) for n, c in clocks.items()}
    return seconds | {
        "fused_encoder": encoder is not None,
        **{name.replace("_s", "_share"): value / forward_s for name, value in seconds.items()},
    }
