"""Load test of `saeguard serve` on loopback: p50/p95 latency and guarded / unguarded throughput.

Starts the server in this process on 127.0.0.1 (a free port), then, at each concurrency level
(1, 4, 8 clients by default), sends the same mix of forget-topic and other prompts with every
guard and with none (``guards: []``), alternating the two in rounds so drift in the machine's
load hits both alike. Throughput is generated tokens per second of wall time; the ratio is
guarded / unguarded. Stops by itself: a fixed number of requests per level, and ``--time-limit``.

    python scripts/load_serve.py --model tiny                        # seconds, no files needed
    python scripts/load_serve.py --model default --guard reports/demo/guardrail
    python scripts/load_serve.py --model default                     # a stand-in guard (see --help)

Without ``--guard`` on a real model the guard is a stand-in with the demo's shape (20 latents
of a random 4,096-latent SAE at layer 6, gate "fraction"): the gate's cost does not depend on
which latents were selected, so it times the guard without the trained default SAE.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch

from saeguard import FitConfig, Guardrail, SelectedLatents
from saeguard.errors import SaeguardError
from saeguard.hf.layers import hidden_size
from saeguard.hf.models import load_model
from saeguard.server import ServerSettings, create_app
from saeguard.server.background import serving
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)

TINY_PROMPTS = [
    "what is the cell virus gene protein",
    "the king of the city",
    "what is dna in a cell",
    "a poem about the river",
]
REAL_PROMPTS = [
    "What does a ribosome do in a cell?",
    "Who built the castles along the Rhine?",
    "How do viruses copy their genes?",
    "Write two lines about the ocean.",
]


def tiny_setup() -> tuple[Any, Any, dict[str, Guardrail], list[str]]:
    """The tiny Llama with a fitted guard on a planted forget latent (as in the tests)."""
    tokenizer = make_tokenizer()
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guard = Guardrail.fit(
            model,
            tokenizer,
            sae,
            forget=corpus(FORGET_WORDS, 24, 40, 1),
            retain=corpus(RETAIN_WORDS, 24, 40, 2),
            layer=1,
            n_features=2,
            seq_len=32,
            show_progress=False,
        )
    return model, tokenizer, {"bio": guard}, TINY_PROMPTS


def stand_in_guard(model: Any, tokenizer: Any, layer: int = 6, latents: int = 20) -> Guardrail:
    """A guard shaped like the demo's (``latents`` of a random 4,096-latent SAE at ``layer``)."""
    sae = random_sae("standard", d_in=hidden_size(model), d_sae=4096, seed=1)
    return Guardrail(
        latents=SelectedLatents.from_sae(sae, list(range(latents))),
        layer=layer,
        tau=0.2,
        clamp_value=5.0,
        config=FitConfig(layer=layer, n_features=latents),
        special_ids=sorted(tokenizer.all_special_ids),
    )


def real_setup(name: str, guard_dirs: list[str]) -> tuple[Any, Any, dict[str, Guardrail], list[str]]:
    model, tokenizer = load_model(name)
    if guard_dirs:
        guards = {Path(d).name: Guardrail.load(d, model, strict=False) for d in guard_dirs}
    else:
        guards = {"stand-in": stand_in_guard(model, tokenizer)}
    return model, tokenizer, guards, REAL_PROMPTS


def run_level(
    url: str, prompts: list[str], clients: int, requests: int, max_tokens: int, guarded: bool, deadline: float
) -> dict[str, Any]:
    """``requests`` chat requests from ``clients`` threads; latencies (s) and generated tokens."""
    latencies: list[float] = []
    tokens = 0
    lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal tokens
        if time.monotonic() > deadline:
            return
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompts[index % len(prompts)]}],
            "max_tokens": max_tokens,
        }
        if not guarded:
            body["guards"] = []
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        with lock:
            latencies.append(elapsed)
            tokens += int(response.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(requests)))
    return {"latencies": latencies, "tokens": tokens, "seconds": time.perf_counter() - started}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, default, or a model folder")
    parser.add_argument("--guard", action="append", default=[], help="guardrail folder (repeat)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument(
        "--requests", type=int, default=8, help="requests per round and level (at least 2x clients)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating guarded/unguarded rounds")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="server workers [default: most clients]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    parser.add_argument("--time-limit", type=float, default=900.0, help="stop after this many seconds")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.model == "tiny":
            model, tokenizer, guards, prompts = tiny_setup()
        else:
            model, tokenizer, guards, prompts = real_setup(args.model, args.guard)
    except SaeguardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workers = args.workers or max(args.clients)
    settings = ServerSettings(model_id="load", workers=workers, queue_size=4 * max(args.clients))
    deadline = time.monotonic() + args.time_limit
    rows = []
    with serving(create_app(model, tokenizer, guards, settings)) as url:
        run_level(url, prompts, 1, 2, args.max_tokens, True, deadline)  # warm-up
        for clients in args.clients:
            count = max(args.requests, 2 * clients)
            runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
            for round_ in range(args.rounds):
                for guarded in (True, False) if round_ % 2 == 0 else (False, True):
                    runs[guarded].append(
                        run_level(url, prompts, clients, count, args.max_tokens, guarded, deadline)
                    )
            row: dict[str, Any] = {"clients": clients, "requests": count * args.rounds}
            for guarded, name in ((True, "guarded"), (False, "unguarded")):
                latencies = [x for r in runs[guarded] for x in r["latencies"]]
                tokens = sum(r["tokens"] for r in runs[guarded])
                seconds = sum(r["seconds"] for r in runs[guarded])
                row[name] = {
                    "p50_s": percentile(latencies, 50) if latencies else None,
                    "p95_s": percentile(latencies, 95) if latencies else None,
                    "tokens_per_s": tokens / seconds if seconds else None,
                    "completed": len(latencies),
                }
            guarded_rate, plain_rate = row["guarded"]["tokens_per_s"], row["unguarded"]["tokens_per_s"]
            row["throughput_ratio"] = guarded_rate / plain_rate if guarded_rate and plain_rate else None
            rows.append(row)
            print(json.dumps(row), flush=True)
            if time.monotonic() > deadline:
                print("time limit reached: stopping", file=sys.stderr)
                break
    result = {
        "model": args.model,
        "guards": list(guards),
        "max_tokens": args.max_tokens,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "levels": rows,
    }
    print(
        "\n| clients | guarded p50 / p95 (s) | unguarded p50 / p95 (s) | guarded tok/s | unguarded tok/s "
        "| ratio |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        g, u = row["guarded"], row["unguarded"]
        print(
            f"| {row['clients']} | {_f(g['p50_s'])} / {_f(g['p95_s'])} | {_f(u['p50_s'])} / {_f(u['p95_s'])} "
            f"| {_f(g['tokens_per_s'], 1)} | {_f(u['tokens_per_s'], 1)} | {_f(row['throughput_ratio'])} |"
        )
    if args.output is not None:
        from saeguard.io import write_json

        write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
