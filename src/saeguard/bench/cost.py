"""Cost sections: fit memory, DSG vs RMU setup time, bf16 statistics, batch-size estimates.

Peak memory is read in fresh processes (``python -m saeguard.bench memory-child``)
so one measurement's high-water mark never carries into the next.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any

import torch

from saeguard.baselines import DEFAULT_MODEL_RMU
from saeguard.bench.config import BenchConfig, BenchSizes
from saeguard.bench.fixtures import Subject, attach_saes, load_subject
from saeguard.bench.throughput import fit_arch
from saeguard.bench.timing import clock, interleave, median, timer
from saeguard.core.guardrail import Guardrail
from saeguard.core.selection import select_features
from saeguard.core.statistics import collect_statistics, token_batches
from saeguard.errors import SaeguardError
from saeguard.hf.batching import (
    current_rss,
    estimate_activation_memory,
    peak_rss,
    reset_peak_rss,
    suggest_batch_size,
)
from saeguard.hf.corpus import iter_chunks
from saeguard.hf.layers import residual_at

_MiB = 2**20


# -- fit memory ---------------------------------------------------------------------------
def child_spec(config: BenchConfig, subject: Subject, sizes: BenchSizes, **fields: Any) -> dict[str, Any]:
    """The JSON a ``memory-child`` process rebuilds the subject and the measurement from."""
    return {
        "model": config.model,
        "layer": subject.layer,
        "d_sae": int(subject.saes["jumprelu"].cfg.d_sae),
        "rate": config.firing_rate,
        "seed": config.seed,
        "threads": torch.get_num_threads(),
        "seq_len": sizes.fit_seq_len,
        "batch_size": sizes.fit_batch_size,
        **fields,
    }


def run_child(
    spec: dict[str, Any], subprocess_mode: bool, *, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One measurement in a fresh interpreter (or in this one, for tests: peaks then mix)."""
    if not subprocess_mode:
        return memory_child(spec)
    command = [sys.executable, "-m", "saeguard.bench", "memory-child", json.dumps(spec)]
    environment = os.environ | (env or {})
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SaeguardError(f"memory child failed ({done.returncode}): {tail}")
    return json.loads(lines[-1])


@torch.no_grad()
def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one statistics pass (kind=statistics) or one truncated forward (kind=forward)."""
    torch.set_num_threads(int(spec["threads"]))
    subject = load_subject(spec["model"], layer=spec["layer"], with_saes=False)
    model, tokenizer = subject.model, subject.tokenizer
    seq_len, batch = int(spec["seq_len"]), int(spec["batch_size"])
    # Weights loaded from safetensors are file-backed mmaps: RSS grows as pages are first
    # touched (embedding rows of new tokens), which is not activation memory. Touch them all now.
    for parameter in model.parameters():
        parameter.detach().sum()
    warm_ids, warm_mask = subject.ids(8, 1)
    residual_at(model, subject.layer, warm_ids, warm_mask)
    run: Callable[[], object]
    if spec.get("kind", "statistics") == "forward":
        ids, mask = subject.ids(seq_len, batch)
        mask[0, seq_len // 2 :] = 0  # padding present, as in real batches
        run = lambda: residual_at(model, subject.layer, ids, mask)  # noqa: E731
        estimate = estimate_activation_memory(model, seq_len)
        tokens = int(mask.sum())
    else:
        attach_saes(
            subject,
            d_sae=spec["d_sae"],
            k=32,
            n_features=1,
            rate=spec["rate"],
            seed=spec["seed"],
            archs=("jumprelu",),
            select=False,
        )
        sae = subject.saes["jumprelu"]
        docs = (doc for _ in range(1000) for doc in subject.forget)  # streamed, recycled if short
        chunks = iter_chunks(docs, tokenizer, seq_len, max_chunks=int(spec["chunks"]))
        batches = token_batches(chunks, tokenizer, batch)
        run = lambda: collect_statistics(model, sae, subject.layer, batches, show_progress=False)  # noqa: E731
        estimate = estimate_activation_memory(model, seq_len, d_sae=int(sae.cfg.d_sae))
        tokens = 0
    gc.collect()
    reset_ok = reset_peak_rss()
    baseline = current_rss()
    seconds = clock(run)
    peak = peak_rss()
    return {
        "baseline_rss_mb": baseline / _MiB,
        "peak_rss_mb": peak / _MiB,
        "delta_mb": (peak - baseline) / _MiB,
        "estimate_mb": estimate.total(batch) / _MiB,
        "seconds": seconds,
        "peak_reset": reset_ok,
        **_rss_parts(),
        **({"tokens": tokens} if tokens else {}),
    }


def _rss_parts() -> dict[str, float]:
    """Anonymous vs file-backed resident memory (Linux), to tell allocations from paged-in weights."""
    parts: dict[str, float] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("RssAnon:", "RssFile:")):
                    key, value = line.split(":")
                    parts[f"{key.lower().replace('rss', 'rss_')}_mb"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return parts


def fit_memory(config: BenchConfig, subject: Subject, sizes: BenchSizes) -> dict[str, Any]:
    """Peak RSS of the statistics pass at 1x, 4x, 16x corpus size, each in a fresh process.

    The smallest and largest scales are repeated with ``MALLOC_ARENA_MAX=1``: growth that
    disappears there is glibc's per-thread arenas fragmenting, not data kept by the pass.
    """
    rows = []
    scales = list(sizes.memory_scales)
    runs: list[tuple[int, str | None]] = [(scale, None) for scale in scales]
    if config.memory_subprocess:  # an allocator setting only takes effect in a fresh process
        runs += [(scale, "1") for scale in (scales[0], scales[-1])]
    for scale, arenas in runs:
        chunks = sizes.memory_chunks * scale
        spec = child_spec(config, subject, sizes, kind="statistics", chunks=chunks)
        env = {"MALLOC_ARENA_MAX": arenas} if arenas else None
        measured = run_child(spec, config.memory_subprocess, env=env)
        rows.append({"scale": scale, "chunks": chunks, "malloc_arena_max": arenas, **measured})
    default = [r for r in rows if r["malloc_arena_max"] is None]
    single = [r for r in rows if r["malloc_arena_max"] is not None]
    return {
        "rows": rows,
        "ratio": default[-1]["peak_rss_mb"] / default[0]["peak_rss_mb"],
        "ratio_of": f"peak RSS at {default[-1]['scale']}x / at {default[0]['scale']}x corpus",
        "delta_ratio": default[-1]["delta_mb"] / max(default[0]["delta_mb"], 1e-9),
        "single_arena_ratio": single[-1]["peak_rss_mb"] / single[0]["peak_rss_mb"] if single else None,
        "subprocess": config.memory_subprocess,
    }


# -- DSG vs RMU ---------------------------------------------------------------------------
#: The paper's DSG grid (docs/method.md §6.2): p_ratio x N need a new selection and calibration,
#: c (8 values) and p_dyn only a retune; one statistics pass serves all of them.
DSG_GRID_SELECTIONS = 2 * 3
DSG_GRID_CONFIGS = DSG_GRID_SELECTIONS * 8
#: RMU's best forget/utility trade-off in the comparison grid on the default model
#: (``baselines.DEFAULT_MODEL_RMU``, docs/compare.md), with BenchSizes.rmu_steps = 150 steps of
#: 4 x 128 tokens at full and quick sizes.
RMU_BEST: dict[str, float] = {
    name: float(DEFAULT_MODEL_RMU[name]) for name in ("steering_coeff", "alpha", "learning_rate")
}


def setup_cost(subject: Subject, sizes: BenchSizes, n_features: int) -> dict[str, Any]:
    """Wall time of one DSG fit vs RMU trained to its best trade-off, on the same forget/retain chunks.

    RMU runs the configuration the comparison grid chose as its best forget/utility
    trade-off on the default model (:data:`RMU_BEST`, docs/compare.md): the fair
    comparison of issue 17, not a short RMU run that forgets nothing.

    Also the unit costs of a sweep: a DSG config that reuses cached statistics (new
    selection: calibration forwards only) and one that only retunes tau/clamp.
    """
    from saeguard.baselines import RMUConfig, TrainConfig, unlearn
    from saeguard.core.fit import retune

    chunks = sizes.rmu_steps * sizes.rmu_batch_size
    sae = subject.saes[fit_arch(subject)]
    fitted: list[Guardrail] = []

    def dsg(cache: str) -> None:
        fitted.append(
            Guardrail.fit(
                subject.model,
                subject.tokenizer,
                sae,
                forget=subject.forget,
                retain=subject.retain,
                layer=subject.layer,
                n_features=n_features,
                seq_len=sizes.rmu_seq_len,
                max_forget_chunks=chunks,
                max_retain_chunks=chunks,
                calibration_size=sizes.dsg_calibration,
                statistics_cache=cache,
                show_progress=False,
            )
        )

    train = TrainConfig(
        learning_rate=RMU_BEST["learning_rate"],
        steps=sizes.rmu_steps,
        batch_size=sizes.rmu_batch_size,
        seq_len=sizes.rmu_seq_len,
        device=str(subject.device),
    )
    rmu_config = RMUConfig(
        train=train, layer=subject.layer, steering_coeff=RMU_BEST["steering_coeff"], alpha=RMU_BEST["alpha"]
    )
    with tempfile.TemporaryDirectory(prefix="saeguard-bench-") as cache:
        dsg_cold = clock(lambda: dsg(cache), subject.device)
        victim = copy.deepcopy(subject.model)
        rmu_seconds = clock(
            partial(unlearn, victim, subject.tokenizer, "rmu", subject.forget, subject.retain, rmu_config),
            subject.device,
        )
        del victim  # free the unlearned copy before the warm timing
        gc.collect()
        dsg_warm = clock(lambda: dsg(cache), subject.device)  # statistics cached: a new selection
    retune_s = median(
        [clock(lambda: retune(fitted[-1], gate_percentile=90.0, clamp=100.0)) for _ in range(5)]
    )
    statistics_s = max(dsg_cold - dsg_warm, 0.0)
    dsg_sweep = statistics_s + DSG_GRID_SELECTIONS * dsg_warm + DSG_GRID_CONFIGS * retune_s
    return {
        "dsg_seconds": dsg_cold,
        "dsg_cached_statistics_seconds": dsg_warm,
        "dsg_statistics_seconds": statistics_s,
        "dsg_retune_seconds": retune_s,
        "rmu_seconds": rmu_seconds,
        "chunks_per_corpus": chunks,
        "seq_len": sizes.rmu_seq_len,
        "dsg_calibration_prompts": sizes.dsg_calibration,
        "rmu": {
            **RMU_BEST,
            "steps": sizes.rmu_steps,
            "batch_size": sizes.rmu_batch_size,
            "layer": subject.layer,
        },
        "ratio": rmu_seconds / dsg_cold,
        "ratio_of": "RMU at its best trade-off (docs/compare.md) seconds / one DSG fit seconds (same chunks)",
        "sweep_configs": DSG_GRID_CONFIGS,
        "sweep_ratio": DSG_GRID_CONFIGS * rmu_seconds / dsg_sweep,
        "sweep_ratio_of": (
            f"{DSG_GRID_CONFIGS} RMU runs / a {DSG_GRID_CONFIGS}-config DSG sweep (1 statistics pass, "
            f"{DSG_GRID_SELECTIONS} calibrations, retunes), from the unit costs measured here"
        ),
    }


# -- bf16 ---------------------------------------------------------------------------------
@torch.no_grad()
def bf16(subject: Subject, sizes: BenchSizes, n_features: int) -> dict[str, Any]:
    """Statistics with the model in bf16 vs fp32: selected-latent overlap and speed.

    The core runs the model in whatever dtype it was loaded in, so the bf16 side
    is the same weights cast to bf16 (what ``load_model(dtype=torch.bfloat16)`` gives).
    """
    model16 = copy.deepcopy(subject.model).to(torch.bfloat16)
    sae = subject.saes[fit_arch(subject)]
    count = sizes.bf16_batches * sizes.fit_batch_size
    data = {
        name: list(
            token_batches(
                subject.chunks(docs, sizes.fit_seq_len, count), subject.tokenizer, sizes.fit_batch_size
            )
        )
        for name, docs in (("forget", subject.forget), ("retain", subject.retain))
    }

    def stats(model, name):
        return collect_statistics(model, sae, subject.layer, data[name], show_progress=False)

    def forward(model):
        return lambda: [
            residual_at(model, subject.layer, b.input_ids, b.attention_mask) for b in data["forget"]
        ]

    selections = {}
    for label, model in (("fp32", subject.model), ("bf16", model16)):
        forget, retain = stats(model, "forget"), stats(model, "retain")
        selections[label] = (
            forget,
            select_features(forget, retain, n_features=n_features, ratio_percentile=95.0),
        )
    ids32 = set(selections["fp32"][1].latent_ids)
    ids16 = set(selections["bf16"][1].latent_ids)
    timed = interleave(
        timer(lambda: stats(subject.model, "forget"), subject.device),
        {
            "statistics bf16": timer(lambda: stats(model16, "forget"), subject.device),
            "forward fp32": timer(forward(subject.model), subject.device),
            "forward bf16": timer(forward(model16), subject.device),
        },
        sizes.bf16_rounds,
    )
    forward_ratio = median(
        [a / b for a, b in zip(timed.variants["forward bf16"], timed.variants["forward fp32"], strict=True)]
    )
    freq32, freq16 = selections["fp32"][0].frequency, selections["bf16"][0].frequency
    return {
        "n_features": n_features,
        "overlap": len(ids32 & ids16) / n_features,
        "statistics_time_ratio": timed.ratio("statistics bf16"),
        "statistics_speedup": 1.0 / timed.ratio("statistics bf16"),
        "forward_time_ratio": forward_ratio,
        "frequency_max_abs_diff": float((freq32 - freq16).abs().max()),
        "ratio": len(ids32 & ids16) / n_features,
        "ratio_of": "top-N overlap of selected latents, bf16 vs fp32 statistics",
        "how": "model weights cast to bf16; SAE encode stays fp32 (encode_all casts the residual)",
    }


# -- batch-size estimate ------------------------------------------------------------------
def batching(config: BenchConfig, subject: Subject, sizes: BenchSizes) -> dict[str, Any]:
    """``suggest_batch_size``'s estimate against the measured peak of truncated forwards."""
    seq_lens = (sizes.fit_seq_len, 4 * sizes.fit_seq_len)
    batch = max(2, sizes.fit_batch_size // 2)
    rows = []
    for seq_len in seq_lens:
        spec = child_spec(config, subject, sizes, kind="forward", seq_len=seq_len, batch_size=batch)
        measured = run_child(spec, config.memory_subprocess)
        rows.append(
            {
                "seq_len": seq_len,
                "batch": batch,
                **measured,
                "ratio": measured["delta_mb"] / measured["estimate_mb"],
            }
        )
    budget = 1024 * _MiB
    d_sae = int(subject.saes["jumprelu"].cfg.d_sae)
    suggestions = {
        str(seq_len): suggest_batch_size(subject.model, seq_len, subject.layer, budget, d_sae=d_sae)
        for seq_len in (128, 512, 1024)
    }
    estimate = estimate_activation_memory(subject.model, 1024, d_sae=d_sae)
    return {
        "rows": rows,
        "ratio": max(r["ratio"] for r in rows),
        "ratio_of": "measured peak delta / estimate (below 1: the estimate is conservative)",
        "suggested_batch_for_1GiB": suggestions,
        "estimate_1024": asdict(estimate),
    }
