"""The Guardrail: fit (statistics -> selection -> calibration), attach, generate.

Setup is forward passes only, up to the hook layer; the model's weights never
change. Saving and loading live in ``artifact.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saeguard.calibration import (
    CalibrationShape,
    calibrate_threshold,
    gate_rho,
    prompt_batches,
    prompt_texts,
)
from saeguard.corpus import CorpusSpec, iter_chunks, iter_documents, special_token_ids
from saeguard.errors import SaeguardError, require
from saeguard.fingerprint import tensors_fingerprint, text_fingerprint
from saeguard.gate import GateHook, GateRecord, token_scope
from saeguard.layers import decoder_blocks, hidden_size, layer_count, parse_layer
from saeguard.prompts import encode_prompts
from saeguard.sae import SelectedLatents, load_sae, sae_hook_name, sae_source
from saeguard.selection import Importance, check_percentile, select_features
from saeguard.statistics import FeatureStatistics, collect_statistics, token_batches


@dataclass
class FitConfig:
    """Everything that decides a fitted guardrail (DESIGN §1 defaults: the paper's bio setting)."""

    layer: int | str | None = None
    n_features: int = 20
    ratio_percentile: float = 95.0
    gate_percentile: float = 95.0
    clamp: float = 500.0
    relative_clamp: bool = False  # clamp = multiple of the selected latents' mean non-zero activation
    importance: Importance = "squared_mean"
    seq_len: int = 1024
    batch_size: int = 8
    max_forget_chunks: int | None = None
    max_retain_chunks: int | None = None
    calibration: CalibrationShape = "prompts"
    calibration_size: int = 512
    prompt_min_tokens: int = 8
    prompt_max_tokens: int = 64
    chat_template: bool = True
    seed: int = 0

    def validate(self) -> None:
        check_percentile("ratio_percentile", self.ratio_percentile)
        check_percentile("gate_percentile", self.gate_percentile)
        require(self.n_features >= 1, f"n_features must be at least 1, got {self.n_features}")
        require(
            self.clamp > 0 and math.isfinite(self.clamp),
            f"clamp must be a positive number, got {self.clamp}: e.g. 500 or a relative 10x",
        )
        require(self.seq_len >= 2, f"seq_len must be at least 2, got {self.seq_len}")
        require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        require(
            self.calibration in ("prompts", "chunks"),
            f"calibration must be 'prompts' or 'chunks', got {self.calibration!r}",
        )


def parse_clamp(text: str | float) -> tuple[float, bool]:
    """'500' -> (500, absolute); '10x' -> (10, relative to mean activation)."""
    raw = str(text).strip().lower()
    relative = raw.endswith("x")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        raise SaeguardError(f"cannot read clamp {text!r}: use a number like 500 or 10x") from None
    require(value > 0 and math.isfinite(value), f"clamp must be positive, got {text!r}")
    return value, relative


def model_fingerprint(model: nn.Module, layer: int) -> str:
    """Fingerprint of the weights the guard reads: embeddings and blocks 0..layer."""
    tensors: dict[str, torch.Tensor] = {}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        tensors.update({f"embed.{k}": v for k, v in embeddings.state_dict().items()})
    for index, block in enumerate(decoder_blocks(model)[: layer + 1]):
        tensors.update({f"block{index}.{k}": v for k, v in block.state_dict().items()})
    return tensors_fingerprint(tensors)


def model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "unknown"))


@dataclass
class Guardrail:
    latents: SelectedLatents
    layer: int
    threshold: float
    clamp: float
    config: FitConfig
    special_ids: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, torch.Tensor] = field(default_factory=dict)

    # -- fitting ------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        model: nn.Module,
        tokenizer,
        sae,
        *,
        forget: CorpusSpec,
        retain: CorpusSpec,
        config: FitConfig | None = None,
        show_progress: bool = True,
        statistics_cache: str | Path | None = None,
        **overrides: Any,
    ) -> Guardrail:
        """Select latents that carry the forget topic and calibrate the gate on retain text."""
        config = replace(config or FitConfig(), **overrides)
        if isinstance(config.clamp, str):
            value, relative = parse_clamp(config.clamp)
            config = replace(config, clamp=value, relative_clamp=relative)
        config.validate()
        started = time.perf_counter()
        sae_spec = sae
        sae = load_sae(sae)
        layer = parse_layer(config.layer if config.layer is not None else sae_hook_name(sae), model)
        width = hidden_size(model)
        require(
            int(sae.cfg.d_in) == width,
            f"SAE width mismatch: the SAE reads {sae.cfg.d_in}-dim activations but the model's "
            f"hidden size is {width}: use an SAE trained on this model",
        )
        sae = sae.to(next(model.parameters()).device)
        forget_docs = _documents(forget, "forget", tokenizer)
        retain_docs = _documents(retain, "retain", tokenizer)

        def stats_for(docs: list[str], limit: int | None, name: str) -> FeatureStatistics:
            chunks = iter_chunks(docs, tokenizer, config.seq_len, max_chunks=limit)
            batches = token_batches(chunks, tokenizer, config.batch_size)
            key = _stats_key(model, layer, sae, docs, config.seq_len, limit)
            return _cached_stats(
                statistics_cache,
                key,
                lambda: collect_statistics(
                    model,
                    sae,
                    layer,
                    batches,
                    description=f"{name} statistics",
                    show_progress=show_progress,
                ),
            )

        model_was_training = model.training
        model.eval()
        try:
            forget_stats = stats_for(forget_docs, config.max_forget_chunks, "forget")
            retain_stats = stats_for(retain_docs, config.max_retain_chunks, "retain")
            selection = select_features(
                forget_stats,
                retain_stats,
                n_features=config.n_features,
                ratio_percentile=config.ratio_percentile,
                importance_kind=config.importance,
            )
            latents = SelectedLatents.from_sae(sae, selection.latent_ids)
            retain_rho = _calibration_rho(
                model, tokenizer, layer, latents, retain_docs, config, "retain", show_progress
            )
            forget_rho = _calibration_rho(
                model, tokenizer, layer, latents, forget_docs, config, "forget", show_progress
            )
        finally:
            model.train(model_was_training)
        require(retain_rho.numel() > 0, "retain corpus gave no calibration input: give it real text")
        threshold = calibrate_threshold(retain_rho, config.gate_percentile, seed=config.seed)
        mean_active = forget_stats.mean_nonzero[selection.latent_ids]
        clamp = config.clamp * float(mean_active.mean()) if config.relative_clamp else config.clamp
        require(clamp > 0, "relative clamp is 0: the selected latents never fire on forget text")
        info = {
            "model": {
                "name": model_name(model),
                "fingerprint": model_fingerprint(model, layer),
                "hidden_size": width,
                "layer_count": layer_count(model),
            },
            "sae": sae_source(sae_spec, sae),
            "selection": asdict(selection)
            | {
                "forget_frequency": [float(forget_stats.frequency[i]) for i in selection.latent_ids],
                "retain_frequency": [float(retain_stats.frequency[i]) for i in selection.latent_ids],
                "forget_mean_nonzero": [float(v) for v in mean_active],
            },
            "threshold": asdict(threshold),
            "calibration": {
                "retain": _summary(retain_rho, threshold.tau),
                "forget": _summary(forget_rho, threshold.tau),
            },
            "corpora": {
                "forget": {
                    "fingerprint": text_fingerprint(forget_docs),
                    "documents": len(forget_docs),
                    "tokens": forget_stats.token_count,
                    "chunks": forget_stats.sequence_count,
                },
                "retain": {
                    "fingerprint": text_fingerprint(retain_docs),
                    "documents": len(retain_docs),
                    "tokens": retain_stats.token_count,
                    "chunks": retain_stats.sequence_count,
                },
            },
            "fit_seconds": time.perf_counter() - started,
        }
        return cls(
            latents=latents,
            layer=layer,
            threshold=threshold.tau,
            clamp=clamp,
            config=config,
            special_ids=sorted(special_token_ids(tokenizer)),
            info=info,
            distributions={"retain_rho": retain_rho, "forget_rho": forget_rho},
        )

    # -- inference ----------------------------------------------------------
    def hook(self) -> GateHook:
        return GateHook(
            self.latents,
            layer=self.layer,
            threshold=self.threshold,
            clamp=self.clamp,
            special_ids=self.special_ids,
        )

    def check_model(self, model: nn.Module, *, strict: bool = True) -> None:
        """Fail clearly when the guard was fitted on another model."""
        expected = self.info.get("model", {})
        count, width = layer_count(model), hidden_size(model)
        require(
            expected.get("hidden_size", width) == width,
            f"guardrail was fitted on a model with hidden size {expected.get('hidden_size')}, "
            f"this model has {width}: load it onto the model it was fitted on",
        )
        require(
            expected.get("layer_count", count) == count and self.layer < count,
            f"guardrail was fitted on a model with {expected.get('layer_count')} layers "
            f"(hook layer {self.layer}), this model has {count}: use the model it was fitted on",
        )
        if strict and "fingerprint" in expected:
            found = model_fingerprint(model, self.layer)
            require(
                found == expected["fingerprint"],
                f"model weights differ from those the guardrail was fitted on "
                f"(fingerprint {found} != {expected['fingerprint']}): use the same model, "
                "or pass strict=False / --no-strict to accept it",
            )

    def attach(self, model: nn.Module, *, strict: bool = False) -> GateHook:
        self.check_model(model, strict=strict)
        hook = self.hook()
        hook.attach(model)
        return hook

    @contextmanager
    def attached(self, model: nn.Module, *, strict: bool = False) -> Iterator[GateHook]:
        hook = self.attach(model, strict=strict)
        try:
            yield hook
        finally:
            hook.detach()

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        tokenizer,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        chat: bool = True,
        guarded: bool = True,
        **generate_kwargs: Any,
    ) -> tuple[list[str], list[GateRecord]]:
        """Batched generation with the guard; returns texts and the prefill gate records."""
        encoded = encode_prompts(tokenizer, prompts, chat=chat and self.config.chat_template)
        device = next(model.parameters()).device
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
        }
        kwargs.update(generate_kwargs)
        records: list[GateRecord] = []
        with (
            self.attached(model) if guarded else _nothing() as hook,
            token_scope(encoded.content_mask.to(device)),
        ):
            if hook is not None:
                hook.recording = True
            output = model.generate(
                input_ids=encoded.input_ids.to(device),
                attention_mask=encoded.attention_mask.to(device),
                **kwargs,
            )
            if hook is not None:
                records = list(hook.records)
        new_tokens = output[:, encoded.prompt_length :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True), records

    # -- persistence (artifact.py) -------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from saeguard.artifact import save_guardrail

        return save_guardrail(self, Path(directory))

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None, *, strict: bool = True) -> Guardrail:
        from saeguard.artifact import load_guardrail

        guard = load_guardrail(Path(directory))
        if model is not None:
            guard.check_model(model, strict=strict)
        return guard

    def summary(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "n_features": len(self.latents.ids),
            "latent_ids": [int(i) for i in self.latents.ids],
            "tau": self.threshold,
            "clamp": self.clamp,
            "architecture": self.latents.architecture,
            **{k: self.info[k] for k in ("model", "sae", "threshold", "calibration") if k in self.info},
        }


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _documents(spec: CorpusSpec, name: str, tokenizer) -> list[str]:
    docs = list(iter_documents(spec))
    require(bool(docs), f"the {name} corpus is empty: give it at least one document")
    require(
        any(len(tokenizer(doc, add_special_tokens=False)["input_ids"]) >= 2 for doc in docs),
        f"the {name} corpus has no document with at least 2 tokens: give it real text",
    )
    return docs


def _summary(values: torch.Tensor, tau: float) -> dict[str, Any]:
    if values.numel() == 0:
        return {"count": 0}
    v = values.double()
    return {
        "count": int(v.numel()),
        "mean": float(v.mean()),
        "median": float(v.median()),
        "flagged_fraction": float((v > tau).double().mean()),
        "histogram": torch.histc(v.float(), bins=20, min=0.0, max=1.0).int().tolist(),
    }


def _calibration_rho(
    model, tokenizer, layer, latents, docs, config: FitConfig, name, show_progress
) -> torch.Tensor:
    if config.calibration == "prompts":
        texts = prompt_texts(
            docs,
            tokenizer,
            min_tokens=config.prompt_min_tokens,
            max_tokens=config.prompt_max_tokens,
            limit=config.calibration_size,
            seed=config.seed,
        )
        batches = prompt_batches(texts, tokenizer, config.batch_size, chat=config.chat_template)
    else:
        chunks = iter_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
        batches = token_batches(chunks, tokenizer, config.batch_size)
    return gate_rho(
        model, layer, latents, batches, description=f"{name} calibration", show_progress=show_progress
    )


def _stats_key(model, layer, sae, docs, seq_len, limit) -> str:
    from saeguard.sae import sae_fingerprint

    parts = [
        model_fingerprint(model, layer),
        str(layer),
        sae_fingerprint(sae),
        text_fingerprint(docs),
        str(seq_len),
        str(limit),
    ]
    return text_fingerprint(parts)


def _cached_stats(cache: str | Path | None, key: str, compute) -> FeatureStatistics:
    if cache is None:
        return compute()
    path = Path(cache).expanduser() / f"stats-{key}.safetensors"
    if path.is_file():
        return FeatureStatistics.load(path)
    stats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    return stats
