"""The Guardrail: fit (statistics -> selection -> calibration), attach, generate, save, load.

Setup is forward passes only, up to the hook layer; the model's weights never
change. The state lives in :class:`~saeguard.core.fit.FitResult`; saving and
loading in ``artifact.py``; the per-input gate and the clamp in ``gate.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saeguard.config import FitConfig, with_overrides
from saeguard.core.artifact import load_guardrail, save_guardrail
from saeguard.core.fit import FitResult, corpus_statistics, fit_from_statistics, prepare_fit
from saeguard.core.gate import GateHook, GateRecord, token_scope
from saeguard.errors import require
from saeguard.hf.corpus import CorpusSpec
from saeguard.hf.fingerprint import model_fingerprint
from saeguard.hf.layers import hidden_size, layer_count
from saeguard.hf.prompts import encode_prompts


@dataclass
class Guardrail(FitResult):
    """A fitted DSG guard (paper §3): N selected SAE latents, a gate threshold tau and a clamp c.

    Build one with :meth:`fit` or :meth:`load`; apply it with :meth:`attached`
    (any forward or ``generate`` on the model is guarded) or :meth:`generate`.
    Fields are documented on :class:`~saeguard.core.fit.FitResult`.
    """

    # -- fitting ------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        model: nn.Module,
        tokenizer: Any,
        sae: Any,
        *,
        forget: CorpusSpec,
        retain: CorpusSpec,
        config: FitConfig | None = None,
        show_progress: bool = True,
        statistics_cache: str | Path | None = None,
        **overrides: Any,
    ) -> Guardrail:
        """Select latents that carry the forget topic and calibrate the gate on retain text.

        Args:
            model: a Hugging Face causal LM (any device and dtype).
            tokenizer: its tokenizer.
            sae: an SAELens folder, ``"release:sae_id"``, or a SAELens ``SAE``.
            forget, retain: corpora: ``list[str]``, ``.txt``/``.jsonl`` paths, ``hf:`` or built-in specs.
            config: settings (default ``FitConfig()``, the paper's); ``overrides`` replace fields.
            statistics_cache: folder to cache per-corpus statistics in.

        Raises:
            SaeguardError: bad settings or inputs, one line naming the problem and the fix.
        """
        started = time.perf_counter()
        config = with_overrides(config, overrides)
        inputs = prepare_fit(model, tokenizer, sae, forget, retain, config)
        stats = {
            role: corpus_statistics(inputs, role, config, cache=statistics_cache, show_progress=show_progress)
            for role in ("forget", "retain")
        }
        result = fit_from_statistics(
            inputs, stats["forget"], stats["retain"], config, show_progress=show_progress, started=started
        )
        return cls.from_result(result)

    @classmethod
    def from_result(cls, result: FitResult) -> Guardrail:
        """A Guardrail holding ``result``'s state (no copy of tensors)."""
        return cls(**{name: getattr(result, name) for name in result.__dataclass_fields__})

    # -- inference ----------------------------------------------------------
    def hook(self) -> GateHook:
        hook = GateHook(
            self.latents,
            layer=self.layer,
            tau=self.tau,
            clamp_value=self.clamp_value,
            special_ids=self.special_ids,
            statistic=self.statistic,
            clamp_scope=self.config.clamp_scope,
        )
        if self.config.gate == "always":  # ungated / static clamp baselines
            hook.forced = True
        return hook

    def check_model(self, model: nn.Module, *, strict: bool = True) -> None:
        """Fail clearly when the guard was fitted on another model."""
        count, width = layer_count(model), hidden_size(model)
        expected = self.provenance.model if self.provenance is not None else None
        fitted_width = expected.hidden_size if expected is not None else int(self.latents.decoder.shape[1])
        require(
            fitted_width == width,
            f"guardrail was fitted on a model with hidden size {fitted_width}, "
            f"this model has {width}: load it onto the model it was fitted on",
        )
        require(
            (expected is None or expected.layer_count == count) and self.layer < count,
            f"guardrail was fitted on a model with {expected.layer_count if expected else '?'} layers "
            f"(hook layer {self.layer}), this model has {count}: use the model it was fitted on",
        )
        if strict and expected is not None:
            found = model_fingerprint(model, self.layer)
            require(
                found == expected.fingerprint,
                f"model weights differ from those the guardrail was fitted on "
                f"(fingerprint {found} != {expected.fingerprint}): use the same model, "
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
        """Write the guard to ``directory`` (safetensors + JSON, atomically); returns the folder."""
        return save_guardrail(self, directory)

    @classmethod
    def load(
        cls, directory: str | Path, model: nn.Module | None = None, *, strict: bool = True, sae: Any = None
    ) -> Guardrail:
        """Read a saved guard; with ``model``, check it was fitted on that model (see :meth:`check_model`).

        ``sae`` is needed for TopK guardrails only (see ``artifact.load_guardrail``).

        Raises:
            SaeguardError: an invalid artifact, or a model it was not fitted on.
        """
        guard = cls.from_result(load_guardrail(directory, sae=sae))
        if model is not None:
            guard.check_model(model, strict=strict)
        return guard

    def summary(self) -> dict[str, Any]:
        """A JSON-ready overview (what ``saeguard inspect`` prints)."""
        summary: dict[str, Any] = {
            "layer": self.layer,
            "n_features": len(self.latents.ids),
            "latent_ids": [int(i) for i in self.latents.ids],
            "tau": self.tau,
            "gate_statistic": self.config.gate_statistic,
            "clamp_scope": self.config.clamp_scope,
            "clamp": str(self.config.clamp),
            "clamp_value": self.clamp_value,
            "architecture": self.latents.architecture,
        }
        if self.provenance is not None:
            record = self.provenance.to_dict()
            summary |= {
                k: record[k] for k in ("model", "sae", "tau_estimate", "calibration", "saeguard_version")
            }
        return summary


@contextmanager
def _nothing() -> Iterator[None]:
    yield None
