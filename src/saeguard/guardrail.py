"""The Guardrail: fit (statistics -> selection -> calibration), attach, generate.

Setup is forward passes only, up to the hook layer; the model's weights never
change. Saving and loading live in ``artifact.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saeguard.corpus import CorpusSpec
from saeguard.errors import require
from saeguard.fingerprint import model_fingerprint
from saeguard.fit import (
    FitConfig,
    corpus_statistics,
    fit_from_statistics,
    gate_statistic_for,
    prepare_fit,
    resolve_config,
)
from saeguard.gate import GateHook, GateRecord, GateStatistic, token_scope
from saeguard.layers import hidden_size, layer_count
from saeguard.prompts import encode_prompts
from saeguard.sae import SelectedLatents


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
        started = time.perf_counter()
        config = resolve_config(config, overrides)
        inputs = prepare_fit(model, tokenizer, sae, forget, retain, config)
        stats = {
            role: corpus_statistics(inputs, role, config, cache=statistics_cache, show_progress=show_progress)
            for role in ("forget", "retain")
        }
        return fit_from_statistics(
            inputs, stats["forget"], stats["retain"], config, show_progress=show_progress, started=started
        )

    # -- inference ----------------------------------------------------------
    @property
    def statistic(self) -> GateStatistic:
        """How rho is computed: the config's kind, weighted by the recorded forget activations."""
        weights = self.info.get("selection", {}).get("forget_mean_nonzero")
        return gate_statistic_for(self.config.gate_statistic, weights)

    def hook(self) -> GateHook:
        hook = GateHook(
            self.latents,
            layer=self.layer,
            threshold=self.threshold,
            clamp=self.clamp,
            special_ids=self.special_ids,
            statistic=self.statistic,
            clamp_scope=self.config.clamp_scope,
        )
        if self.config.gate == "always":  # ungated / static clamp baselines
            hook.forced = True
        return hook

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
            "gate_statistic": self.config.gate_statistic,
            "clamp_scope": self.config.clamp_scope,
            "clamp": self.clamp,
            "architecture": self.latents.architecture,
            **{k: self.info[k] for k in ("model", "sae", "threshold", "calibration") if k in self.info},
        }


@contextmanager
def _nothing() -> Iterator[None]:
    yield None
