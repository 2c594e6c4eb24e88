#!/usr/bin/env bash
# GPU check for issue 17, items 5 and 6 (docs/performance.md, "GPU check"): one short script.
#
#   timeout 900 bash scripts/gpu_check.sh [OUT_DIR]        # on a machine with an NVIDIA GPU
#   SAEGUARD_GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh    # CPU dry run of the same code (seconds)
#
# 1. HF path (item 6): guarded / unguarded forward latency at batch 1 (seq 128, 512, 1024; gate
#    on, off and deciding) and greedy decode tokens/s, interleaved rounds, medians; and the host
#    synchronisations one guarded forward makes (torch.cuda.set_sync_debug_mode). Target <= 1.02.
# 2. vLLM path (item 5): installs vLLM when it is missing (wheels in $SAEGUARD_WHEELS, else PyPI,
#    into a throwaway venv that sees the system packages), then runs the same model unguarded and
#    guarded (saeguard.vllm plugin, one random JumpReLU guard at the default layer) on the same
#    token-id prompts as the HF path: prompt decisions, final decisions and generated ids must
#    agree; guarded / unguarded request latency at batch 1.
# The default model is used when saeguard can load it offline; else SmolLM2-135M's architecture
# with random weights (speed does not depend on the weights; decisions are compared either way).
# Results: OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log. Nothing here is fatal to the rest:
# a part that cannot run says why in the JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/saeguard-gpu-check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ -z "${SAEGUARD_GPU_CHECK_SMOKE:-}" ] && ! "$PY" -c "import vllm" 2>/dev/null; then
  echo "== vLLM is not installed: installing it into $OUT_DIR/venv (the system's torch stays as it is)"
  if "$PY" -m venv --system-site-packages "$OUT_DIR/venv"; then
    PY="$OUT_DIR/venv/bin/python"
    if [ -n "${SAEGUARD_WHEELS:-}" ]; then
      timeout 300 "$PY" -m pip install -q --no-index --find-links "$SAEGUARD_WHEELS" vllm
    else
      timeout 420 "$PY" -m pip install -q "vllm>=0.10"
    fi || echo "== vLLM could not be installed (no network or no wheels): the vLLM part will say so"
  else
    echo "== no venv module: vLLM not installed; the vLLM part will say so"
  fi
fi

"$PY" - "$OUT_DIR" <<'PYTHON' 2>&1 | tee "$OUT_DIR/gpu_check.log"
import json, os, statistics, sys, tempfile, time, traceback, warnings
from pathlib import Path

import torch

OUT = Path(sys.argv[1])
SMOKE = bool(os.environ.get("SAEGUARD_GPU_CHECK_SMOKE"))
DEVICE = "cuda" if torch.cuda.is_available() and not SMOKE else "cpu"
if DEVICE == "cpu":
    torch.set_num_threads(1)  # a dry run on a shared machine: one thread is steadiest
report = {"device": DEVICE, "smoke": SMOKE, "torch": torch.__version__}
if DEVICE == "cuda":
    report["gpu"] = torch.cuda.get_device_name(0)
torch.manual_seed(0)

from saeguard.config import DEFAULT_LAYER, FitConfig
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import SelectedLatents
from saeguard.hf.layers import residual_at

SEQS = (16, 32) if SMOKE else (128, 512, 1024)
ROUNDS, REPEATS, NEW = (2, 2, 4) if SMOKE else (7, 10, 64)


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def seconds(fn, repeats=1):
    sync(); start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def load_model():
    """(model, tokenizer or None, folder vLLM can load, what it is)."""
    if not SMOKE:
        try:
            from saeguard.hf.models import default_model_dir, load_model as load
            model, tokenizer = load("default")
            return model.to(DEVICE).eval(), tokenizer, str(default_model_dir()), "default (SmolLM2-135M-Instruct)"
        except Exception as error:  # noqa: BLE001 - no GGUF package or gguf here: random weights
            report["default_model_error"] = f"{type(error).__name__}: {error}"[:300]
    from transformers import LlamaConfig, LlamaForCausalLM
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512) if SMOKE else dict(
                hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0)
    config = LlamaConfig(**size, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config).eval()
    folder = Path(tempfile.mkdtemp(prefix="saeguard-model-"))
    model.save_pretrained(folder)
    return model.to(DEVICE), None, str(folder), "SmolLM2-135M architecture, random weights"


model, tokenizer, model_dir, model_kind = load_model()
report["model"] = model_kind
layer = min(DEFAULT_LAYER, model.config.num_hidden_layers - 2)
vocab = int(model.config.vocab_size)
_eos = tokenizer.eos_token_id if tokenizer is not None else model.config.eos_token_id
EOS = int(_eos[0] if isinstance(_eos, (list, tuple)) else _eos)
special = sorted(set(tokenizer.all_special_ids)) if tokenizer is not None else [0, 1, 2]


def prompt_ids(length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, length), generator=g)


# -- a random JumpReLU guard of 20 latents firing on ~3% of tokens (decisions, not quality) --------
with torch.no_grad():
    sample = torch.cat([residual_at(model, layer, prompt_ids(128, s).to(DEVICE))[0] for s in range(4)]).float()
    d, n = sample.shape[1], 20
    encoder = torch.randn(d, n, generator=torch.Generator().manual_seed(1), device="cpu").to(DEVICE)
    encoder /= encoder.norm(dim=0, keepdim=True)
    centre = sample.mean(0)
    threshold = ((sample - centre) @ encoder).quantile(0.97, dim=0).clamp(min=1e-3)
    latents = SelectedLatents(
        ids=torch.arange(n), encoder=encoder.cpu(), encoder_bias=torch.zeros(n), decoder=encoder.T.cpu().clone(),
        decoder_bias=centre.cpu(), threshold=threshold.cpu(), subtract_decoder_bias=True, architecture="jumprelu")
guard = Guardrail(latents=latents, layer=layer, tau=0.0, clamp_value=50.0,
                  config=FitConfig(layer=layer, n_features=n), special_ids=special)
PROMPTS = [prompt_ids(16 + 13 * i, 100 + i) for i in range(4 if SMOKE else 16)]
with torch.no_grad():  # tau: the median prompt rho, so about half the prompts are flagged
    rhos = []
    for ids in PROMPTS:
        with guard.attached(model) as hook:
            hook.recording = True
            model(input_ids=ids.to(DEVICE), use_cache=False)
            rhos.append(float(hook.records[-1].rho[0]))
guard.tau = statistics.median(rhos)
report["guard"] = {"layer": layer, "latents": n, "tau": guard.tau, "prompt_rho": rhos}


# -- 1. HF path: latency ratios and host syncs ---------------------------------------------------
def interleaved(base, variants):
    """Median over rounds of variant / mean of the two bracketing baselines."""
    ratios = {name: [] for name in variants}
    last = base()
    for _ in range(ROUNDS):
        timed = {name: fn() for name, fn in variants.items()}
        now = base()
        for name, value in timed.items():
            ratios[name].append(value / ((last + now) / 2))
        last = now
    return {name: statistics.median(v) for name, v in ratios.items()}


@torch.no_grad()
def hf_overhead():
    rows = []
    for seq in SEQS:
        ids = prompt_ids(seq, seq).to(DEVICE)
        forward = lambda: model(input_ids=ids, use_cache=False)  # noqa: E731

        def guarded(forced):
            def run():
                with guard.attached(model) as hook:
                    hook.forced = forced
                    return seconds(forward, REPEATS)
            return run

        seconds(forward, 2)
        for forced in (True, False, None):
            guarded(forced)()  # warm-up
        base = seconds(forward, REPEATS)
        ratios = interleaved(lambda: seconds(forward, REPEATS),
                             {f"gate {k}": guarded(v) for k, v in (("on", True), ("off", False), ("deciding", None))})
        rows.append({"seq": seq, "batch": 1, "forward_ms": 1e3 * base, **ratios})
    prompt = prompt_ids(32, 7).to(DEVICE)
    generate = lambda: model.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,  # noqa: E731
                                      pad_token_id=EOS)
    def guarded_generate():
        with guard.attached(model) as hook:
            hook.forced = True
            return seconds(generate)
    seconds(generate); guarded_generate()
    decode = interleaved(lambda: seconds(generate), {"gate on": guarded_generate})
    return {"rows": rows, "decode_time_ratio": decode["gate on"], "new_tokens": NEW}


def host_syncs():
    """Synchronising CUDA calls (torch.cuda.set_sync_debug_mode) of a forward and a short generate."""
    if DEVICE != "cuda":
        return {"note": "CPU: CUDA sync debug mode needs a GPU"}
    ids = prompt_ids(128, 3).to(DEVICE)

    def count(fn):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(1)
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        found = [str(w.message)[:160] for w in caught if "synchroniz" in str(w.message).lower()]
        return {"count": len(found), "first": found[:5]}

    forward = lambda: model(input_ids=ids, use_cache=False)  # noqa: E731
    generate = lambda: model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=EOS)  # noqa: E731
    result = {}
    with torch.no_grad():
        result["forward, unguarded"] = count(forward)
        result["generate 4 tokens, unguarded"] = count(generate)
        with guard.attached(model):
            result["forward, guarded (deciding)"] = count(forward)
            result["generate 4 tokens, guarded (deciding)"] = count(generate)
    return result


def part(name, fn):
    print(f"== {name}", flush=True)
    try:
        report[name] = fn()
    except Exception as error:  # noqa: BLE001 - one part's failure must not lose the others
        report[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:500],
                        "trace": traceback.format_exc()[-1500:]}
    print(json.dumps(report[name], indent=1, default=str)[:3000], flush=True)


part("hf_overhead", hf_overhead)
part("hf_host_syncs", host_syncs)


# -- 2. vLLM path: decisions and ids vs HF, latency ---------------------------------------------
@torch.no_grad()
def hf_reference(max_new):
    out = []
    for i, ids in enumerate(PROMPTS):
        with guard.attached(model) as hook:
            hook.recording = True
            new = model.generate(ids.to(DEVICE), max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
                                 pad_token_id=EOS)[0, ids.shape[1]:].tolist()
            records = hook.records
            out.append({"prompt_flagged": bool(records[0].prompt_flagged[0]), "flagged": bool(records[-1].flagged[0]),
                        "prompt_rho": float(records[0].rho[0]), "rho": float(records[-1].rho[0]),
                        "tokens": ids.shape[1] + len(records) - 1, "ids": new})
    return out


def vllm_check():
    try:
        import vllm
    except ImportError as error:
        return {"status": "not run", "why": f"vLLM is not importable here ({error})"}
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from saeguard.vllm import plugin

    result = {"vllm": vllm.__version__}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: hooks and RPC in reach
    folder = Path(tempfile.mkdtemp(prefix="saeguard-guard-"))
    guard.save(folder / "check")
    os.environ.update({plugin.GUARDS_ENV: f"check={folder / 'check'}", plugin.USER_TURNS_ENV: "0"})
    plugin.register()  # also loaded from the entry point when saeguard is pip-installed
    max_new = 8 if SMOKE else 32
    common = dict(model=model_dir, dtype="float32", seed=0, gpu_memory_utilization=0.3,
                  skip_tokenizer_init=tokenizer is None, max_model_len=2048, **plugin.engine_kwargs())

    def params(tag=None, tokens=max_new):
        extra = {"saeguard": "check", "saeguard_tag": tag} if tag else {"saeguard": "none"}
        return SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0.0, ignore_eos=True,
                              extra_args=extra)

    def hf_ids(ids, forced):
        with guard.attached(model) as hook:
            hook.forced = forced  # False: the unguarded HF ids, the numerical floor of id agreement
            return model.generate(ids.to(DEVICE), max_new_tokens=max_new, min_new_tokens=max_new,
                                  do_sample=False, pad_token_id=EOS)[0, ids.shape[1]:].tolist()

    guarded = LLM(**common)
    prompts = [TokensPrompt(prompt_token_ids=ids[0].tolist()) for ids in PROMPTS]
    outputs = guarded.generate(prompts, [params(f"p{i}") for i in range(len(prompts))], use_tqdm=False)
    unguarded = guarded.generate(prompts, params(), use_tqdm=False)  # same engine, guard "none"
    decided = next((log for log in guarded.collective_rpc(plugin.decisions) if log), {})
    reference = hf_reference(max_new)
    with torch.no_grad():
        plain_ref = [hf_ids(ids, False) for ids in PROMPTS]
    rows = []
    for i, (ref, out) in enumerate(zip(reference, outputs)):
        got = decided.get(f"p{i}", {})
        ids = list(out.outputs[0].token_ids)
        rows.append({"prompt": i, "hf_prompt_flagged": ref["prompt_flagged"],
                     "vllm_prompt_flagged": got.get("prompt_flagged"), "hf_flagged": ref["flagged"],
                     "vllm_flagged": got.get("flagged"), "prompt_rho_minus_tau": ref["prompt_rho"] - guard.tau,
                     "hf_rho": ref["rho"], "vllm_rho": got.get("rho"), "hf_tokens": ref["tokens"],
                     "vllm_tokens": got.get("tokens"),
                     "ids_equal": ids == ref["ids"],
                     "first_difference": next((k for k, (a, b) in enumerate(zip(ids, ref["ids"])) if a != b), None)})
    result.update(
        prompts=len(rows),
        flagged_prompts=sum(r["hf_prompt_flagged"] for r in rows),
        decisions_logged=len(decided),
        prompt_decisions_agree=sum(r["hf_prompt_flagged"] == r["vllm_prompt_flagged"] for r in rows),
        final_decisions_agree=sum(r["hf_flagged"] == r["vllm_flagged"] for r in rows),
        guarded_ids_equal=sum(r["ids_equal"] for r in rows),
        unguarded_ids_equal=sum(list(o.outputs[0].token_ids) == r for o, r in zip(unguarded, plain_ref)),
        rows=rows,
    )
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    try:  # a second engine without the plugin's hooks: the unguarded latency baseline
        del os.environ[plugin.GUARDS_ENV]
        plain = LLM(**common)
        latency = {}
        for seq in SEQS[:2]:
            prompt = [TokensPrompt(prompt_token_ids=prompt_ids(seq, 900 + seq)[0].tolist())]
            for tokens in (1, 4 if SMOKE else 64):
                run_guarded = lambda: guarded.generate(prompt, params("lat", tokens), use_tqdm=False)  # noqa: E731
                run_plain = lambda: plain.generate(prompt, params(None, tokens), use_tqdm=False)  # noqa: E731
                run_guarded(); run_plain()
                latency[f"seq {seq}, {tokens} new tokens"] = interleaved(
                    lambda: seconds(run_plain), {"guarded": lambda: seconds(run_guarded)})["guarded"]
        result["latency_ratio_batch1"] = latency
    except Exception as error:  # noqa: BLE001 - keep the parity results
        result["latency_error"] = f"{type(error).__name__}: {error}"[:500]
    return result


part("vllm", vllm_check)
(OUT / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
print(f"== wrote {OUT / 'gpu_check.json'}")
PYTHON
