"""Training SAEs for models that have none, with SAELens's own trainer.

Activations are harvested once (the model runs only up to the deepest
requested layer, several layers per forward), kept in RAM in half precision
and fed to ``sae_lens.SAETrainer`` as a shuffled iterator: no hub, no
TransformerLens model. The default is BatchTopK, saved in its inference form
(JumpReLU) so the guard's cheap path applies.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from saeguard.core.sae import encode_all
from saeguard.errors import require
from saeguard.hf.corpus import counted_mask, iter_chunks, pad_batch, pad_token_id, special_token_ids
from saeguard.hf.layers import _StopForward, block_output_tensor, decoder_blocks, model_device
from saeguard.io import staged_folder
from saeguard.progress import progress_bar


@dataclass
class SAETrainingConfig:
    layer: int
    width: int = 4096
    k: int = 32
    tokens: int = 2_000_000
    batch_size: int = 1024
    # Few optimizer steps (~800 at the default) need a high rate: measured on SmolLM2 layer 3,
    # 300k tokens: FVU 0.25 / 25% dead at 3e-4 vs 0.10 / 6% dead at 3e-3 (docs/default-sae.md).
    learning_rate: float = 3e-3
    normalize: bool = True  # train on activations scaled to mean norm sqrt(d_in); folded back on save
    # Harvested past ``tokens`` and never trained on: dead latents need a large window
    # (a few thousand evaluation tokens call every rare latent dead).
    heldout_tokens: int = 100_000
    seq_len: int = 256
    harvest_batch_size: int = 16
    harvest_dtype: str = "float32"  # bf16 is emulated (slow) on CPUs without AVX512-BF16
    seed: int = 0


@torch.no_grad()
def harvest_activations(
    model: torch.nn.Module,
    tokenizer,
    layers: list[int],
    documents: Iterable[str],
    *,
    tokens: int,
    seq_len: int = 256,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Residuals at ``layers`` for up to ``tokens`` counted tokens (BOS/EOS/PAD excluded)."""
    blocks = decoder_blocks(model)
    deepest = max(layers)
    device = model_device(model)
    captured: dict[int, torch.Tensor] = {}
    store: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    special = special_token_ids(tokenizer)

    def make_hook(layer: int):
        def hook(_module, _args, output):
            captured[layer] = block_output_tensor(output)
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    original_dtype = next(model.parameters()).dtype
    model.to(dtype)
    collected = 0
    try:
        chunks = iter_chunks(documents, tokenizer, seq_len)
        with progress_bar("harvesting activations", total=tokens, enabled=show_progress) as advance:
            batch: list[list[int]] = []
            for chunk in chunks:
                batch.append(chunk)
                if len(batch) < batch_size:
                    continue
                ids, mask = pad_batch(batch, pad_token_id(tokenizer))
                batch = []
                keep = counted_mask(ids, mask, special).to(device)
                with contextlib.suppress(_StopForward):
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                for layer in layers:
                    store[layer].append(captured[layer][keep].to("cpu", torch.float16))
                got = int(keep.sum())
                collected += got
                advance(got)
                if collected >= tokens:
                    break
    finally:
        for handle in handles:
            handle.remove()
        model.to(original_dtype)
    require(collected > 0, "no training tokens harvested: give the SAE training corpus real text")
    return {layer: torch.cat(parts)[:tokens] for layer, parts in store.items()}


def shuffled_batches(activations: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless float32 batches, reshuffled every epoch."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(activations.shape[0], generator=generator)
        for start in range(0, order.numel() - batch_size + 1, batch_size):
            yield activations[order[start : start + batch_size]].float()


def train_sae(activations: torch.Tensor, config: SAETrainingConfig, *, hook_name: str) -> SAE:
    """Train a BatchTopK SAE and return its inference (JumpReLU) form."""
    torch.manual_seed(config.seed)
    d_in = int(activations.shape[1])
    sample = activations[:65536].float()
    # Setting the scale ourselves skips SAELens's 1,000-batch estimate; the trainer folds it
    # into the weights at the end, so the saved SAE reads raw activations.
    scale = d_in**0.5 / float(sample.norm(dim=1).mean()) if config.normalize else None
    sae_config = BatchTopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=config.width,
        k=config.k,
        dtype="float32",
        device="cpu",
        normalize_activations="expected_average_only_in" if config.normalize else "none",
    )
    sae_config.metadata.hook_name = hook_name
    sae = BatchTopKTrainingSAE(sae_config)
    # Initialise b_dec at the (scaled) data mean so the first steps do not fight an offset.
    with torch.no_grad():
        sae.b_dec.copy_(sample.mean(0) * (scale or 1.0))
    steps = max(1, config.tokens // config.batch_size)
    trainer_config = SAETrainerConfig(
        total_training_samples=steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.learning_rate,
        lr_end=config.learning_rate / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=min(50, steps // 10),
        dead_feature_window=max(50, steps // 4),
        feature_sampling_window=max(50, steps // 4),
        device="cpu",
    )
    trainer = SAETrainer(trainer_config, sae, shuffled_batches(activations, config.batch_size, config.seed))
    trainer.activation_scaler.scaling_factor = scale
    trained = trainer.fit()
    trained.cfg.normalize_activations = "none"  # the scale is folded into the weights
    with tempfile.TemporaryDirectory() as folder:
        trained.save_inference_model(folder)
        return SAE.load_from_disk(folder)


@torch.no_grad()
def evaluate_sae(
    model: torch.nn.Module,
    tokenizer,
    sae: SAE,
    layer: int,
    documents: Iterable[str],
    *,
    max_chunks: int = 32,
    seq_len: int = 256,
    batch_size: int = 8,
) -> dict[str, float]:
    """Fraction of variance unexplained, dead latents, L0 and LM loss when spliced in."""
    block = decoder_blocks(model)[layer]
    device = model_device(model)
    special = special_token_ids(tokenizer)
    totals = {"resid_ss": 0.0, "error_ss": 0.0, "l0": 0.0, "tokens": 0.0}
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    target_count = 0.0
    fired = torch.zeros(int(sae.cfg.d_sae), dtype=torch.bool)
    mode = {"value": "clean"}

    def hook(_module, _args, output):
        hidden = block_output_tensor(output)
        if mode["value"] == "clean":
            return None
        if mode["value"] == "zero":
            replacement = torch.zeros_like(hidden)
        else:
            replacement = sae.decode(encode_all(sae, hidden)).to(hidden.dtype)
        return replacement if isinstance(output, torch.Tensor) else (replacement, *output[1:])

    chunks = list(iter_chunks(documents, tokenizer, seq_len, max_chunks=max_chunks))
    handle = block.register_forward_hook(hook)
    try:
        for start in range(0, len(chunks), batch_size):
            ids, mask = pad_batch(chunks[start : start + batch_size], pad_token_id(tokenizer))
            ids, mask = ids.to(device), mask.to(device)
            keep = counted_mask(ids, mask, special)
            for name in losses:
                mode["value"] = name
                captured: dict[str, torch.Tensor] = {}
                capture = block.register_forward_hook(
                    lambda _m, _a, o, store=captured: store.__setitem__("h", block_output_tensor(o))
                )
                try:
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                finally:
                    capture.remove()
                losses[name] += float(_token_loss(logits, ids, keep)) * float(keep[:, 1:].sum())
                if name == "clean":
                    hidden = captured["h"][keep].float()
                    acts = encode_all(sae, hidden)
                    recon = sae.decode(acts).float()
                    totals["resid_ss"] += float((hidden - hidden.mean(0)).square().sum())
                    totals["error_ss"] += float((hidden - recon).square().sum())
                    totals["l0"] += float((acts > 0).sum())
                    totals["tokens"] += float(hidden.shape[0])
                    fired |= (acts > 0).any(0).cpu()
            target_count += float(keep[:, 1:].sum())
    finally:
        handle.remove()
    clean, spliced, zero = (losses[k] / max(target_count, 1.0) for k in ("clean", "spliced", "zero"))
    return {
        "fraction_variance_unexplained": totals["error_ss"] / max(totals["resid_ss"], 1e-12),
        "dead_fraction": float((~fired).double().mean()),
        "l0": totals["l0"] / max(totals["tokens"], 1.0),
        "lm_loss_clean": clean,
        "lm_loss_spliced": spliced,
        "lm_loss_zero_ablation": zero,
        "lm_loss_increase": spliced - clean,
        "loss_recovered": (zero - spliced) / (zero - clean) if zero > clean else math.nan,
        "eval_tokens": totals["tokens"],
    }


@torch.no_grad()
def activation_metrics(sae: SAE, activations: torch.Tensor, chunk: int = 8192) -> dict[str, float]:
    """FVU, L0 and dead latents (never active) over held-out activations."""
    fired = torch.zeros(int(sae.cfg.d_sae), dtype=torch.long)
    error_ss = l0 = 0.0
    mean = activations.float().mean(0)
    total_ss = 0.0
    for start in range(0, activations.shape[0], chunk):
        batch = activations[start : start + chunk].float()
        acts = encode_all(sae, batch)
        error_ss += float((batch - sae.decode(acts).float()).square().sum())
        total_ss += float((batch - mean).square().sum())
        active = acts > 0
        fired += active.sum(0).cpu()
        l0 += float(active.sum())
    n = max(int(activations.shape[0]), 1)
    return {
        "heldout_fraction_variance_unexplained": error_ss / max(total_ss, 1e-12),
        "heldout_l0": l0 / n,
        "dead_fraction": float((fired == 0).double().mean()),
        "dead_window_tokens": float(activations.shape[0]),
    }


def _token_loss(logits: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over targets that are counted tokens."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = ids[:, 1:]
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    weights = keep[:, 1:].float()
    return (nll * weights).sum() / weights.sum().clamp(min=1.0)


def save_trained_sae(sae: SAE, directory: Path, provenance: dict[str, Any]) -> Path:
    """SAELens on-disk format plus provenance in the cfg metadata; atomic (``io.staged_folder``).

    A folder already holding an SAE (``cfg.json``) is replaced; any other non-empty folder is
    refused with a SaeguardError.
    """
    with staged_folder(directory, replace=lambda old: (old / "cfg.json").is_file()) as staging:
        sae.save_model(staging)
        cfg_path = staging / "cfg.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("metadata", {}).update({"saeguard": provenance})
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return directory


def train_and_save(
    model: torch.nn.Module,
    tokenizer,
    train_documents: Iterable[str],
    eval_documents: list[str],
    configs: list[SAETrainingConfig],
    outputs: list[Path],
    *,
    model_name: str = "",
    data_mix: str = "",
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Harvest once for every layer in ``configs``, train each SAE, evaluate, save."""
    started = time.perf_counter()
    layers = sorted({c.layer for c in configs})
    acts = harvest_activations(
        model,
        tokenizer,
        layers,
        train_documents,
        tokens=max(c.tokens + c.heldout_tokens for c in configs),
        seq_len=configs[0].seq_len,
        batch_size=configs[0].harvest_batch_size,
        dtype=getattr(torch, configs[0].harvest_dtype),
        show_progress=show_progress,
    )
    harvest_seconds = time.perf_counter() - started
    results = []
    require(len(outputs) == len(configs), "give one output folder per SAE training config")
    for config, target in zip(configs, outputs, strict=True):
        began = time.perf_counter()
        hook_name = f"blocks.{config.layer}.hook_resid_post"
        layer_acts = acts[config.layer]
        sae = train_sae(layer_acts[: config.tokens], config, hook_name=hook_name)
        metrics = evaluate_sae(model, tokenizer, sae, config.layer, eval_documents)
        heldout = layer_acts[config.tokens : config.tokens + config.heldout_tokens]
        if heldout.shape[0] > 0:  # replaces the dead fraction seen on the few evaluation tokens
            metrics |= activation_metrics(sae, heldout)
        provenance = {
            "model": model_name,
            "layer": config.layer,
            "data_mix": data_mix,
            "config": asdict(config),
            "metrics": metrics,
            "train_seconds": time.perf_counter() - began,
            "harvest_seconds": harvest_seconds,
        }
        save_trained_sae(sae, Path(target), provenance)
        results.append(provenance | {"path": str(target)})
    return results
