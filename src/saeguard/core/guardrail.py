"""The Guardrail: fit (statistics -> selection -> calibration), attach, generate, save, load.

Setup is forward passes only, up to the hook layer; the model's weights never
change. The state lives in :class:`~saeguard.core.fit.FitResult`; saving and
loading in ``artifact.py``; the per-input gate and the clamp in ``gate.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from saeguard.config import FitConfig, with_overrides
from saeguard.core.artifact import load_guardrail, save_guardrail
from saeguard.core.fit import FitResult, corpus_statistics, fit_from_statistics, prepare_fit
from saeguard.core.gate import GateRecord, token_scope
from saeguard.core.hooks import GateHook
from saeguard.errors import SaeguardError, one_line, require
from saeguard.hf.corpus import CorpusSpec, check_tokenizer
from saeguard.hf.fingerprint import model_fingerprint, same_weights, weight_sample
from saeguard.hf.layers import check_language_model, check_token_ids, hidden_size, layer_count, max_positions
from saeguard.hf.prompts import encode_prompts
from saeguard.io import as_path


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
        if statistics_cache is not None:
            statistics_cache = as_path(statistics_cache, "statistics_cache")
            require(
                not statistics_cache.exists() or statistics_cache.is_dir(),
                f"statistics_cache {statistics_cache} is a file: give a folder to cache statistics in",
            )
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
    def hook(self, *, tokenizer: Any = None) -> GateHook:
        """A new :class:`GateHook` carrying this guard (not attached)."""
        hook = GateHook(
            self.latents,
            tokenizer=tokenizer,
            layer=self.layer,
            tau=self.tau,
            clamp_value=self.clamp_value,
            special_ids=self.special_ids,
            statistic=self.statistic,
            rule=self.rule,
            clamp_scope=self.config.clamp_scope,
            owner=self,
        )
        if self.config.gate == "always":  # ungated / static clamp baselines
            hook.forced = True
        return hook

    def check_model(self, model: nn.Module, *, strict: bool = True) -> None:
        """Fail clearly when ``model`` is not a loaded language model or not the one the guard was fitted on.

        Raises:
            SaeguardError: not a language model (or weights on the meta device), another width or
                layer count, or (``strict``) other weights than the fitted ones.
        """
        check_language_model(model)
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
            dtype = str(next(model.parameters()).dtype)
            recast = (  # the same weights in another dtype (fitted in fp32, served in bf16)
                found != expected.fingerprint
                and expected.dtype not in ("", dtype)
                and same_weights(expected.weight_sample, weight_sample(model, self.layer))
            )
            require(
                found == expected.fingerprint or recast,
                f"model weights differ from those the guardrail was fitted on "
                f"(fingerprint {found} != {expected.fingerprint}): use the same model, "
                "or pass strict=False / --no-strict to accept it",
            )

    def attach(self, model: nn.Module, *, strict: bool = False, tokenizer: Any = None) -> GateHook:
        """Guard every forward of ``model`` (any thread) until the returned hook is detached.

        With ``tokenizer`` (one with a chat template), raw chat-formatted ids count only
        the user's turns, as :meth:`generate` does; without it every non-special token counts.

        Raises:
            SaeguardError: ``model`` is not the model the guard was fitted on (see :meth:`check_model`),
                or a TopK guard read without its SAE (its gate cannot run).
        """
        self.check_model(model, strict=strict)
        self.latents.check_runnable()  # else the first forward would fail inside the model
        hook = self.hook(tokenizer=tokenizer)
        hook.attach(model)
        return hook

    @contextmanager
    def attached(
        self, model: nn.Module, *, strict: bool = False, tokenizer: Any = None
    ) -> Iterator[GateHook]:
        """:meth:`attach` for the duration of a ``with`` block."""
        hook = self.attach(model, strict=strict, tokenizer=tokenizer)
        try:
            yield hook
        finally:
            hook.detach()

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: Sequence[str | Sequence[dict[str, str]]],
        *,
        max_new_tokens: int = 64,
        chat: bool = True,
        guarded: bool = True,
        **generate_kwargs: Any,
    ) -> tuple[list[str], list[GateRecord]]:
        """Batched generation with the guard applied to this call only (thread-safe).

        Args:
            prompts: user messages, or whole conversations (lists of ``{"role", "content"}``);
                the gate counts every user turn's tokens.
            max_new_tokens: tokens to generate per prompt.
            chat: wrap prompts in the tokenizer's chat template (when it has one).
            guarded: False generates without the guard (same encoding), for comparisons.
            generate_kwargs: passed to ``model.generate`` (greedy by default).

        Returns:
            (texts, records): the generated texts and one :class:`GateRecord` per forward
            (``records[0]`` is the prompt's decision; see :func:`row_decisions`).

        Raises:
            SaeguardError: no prompts, no tokenizer, a model the guard does not fit (see
                :meth:`check_model`, not strict), a prompt plus ``max_new_tokens`` longer than the
                model's positions, token ids the model does not embed, or generate options
                ``model.generate`` refuses before its first forward.
        """
        check_tokenizer(tokenizer, "generate")
        self.check_model(model, strict=False)
        reserved = sorted(set(generate_kwargs) & _ENCODED_ARGUMENTS)
        require(
            not reserved,
            f"generate encodes the prompts itself: drop {', '.join(reserved)} (pass text or conversations "
            "as prompts, or use guard.attached(model) around your own model.generate call)",
        )
        require(
            isinstance(prompts, (list, tuple)) and len(prompts) > 0,
            "generate needs a non-empty list of prompts, e.g. ['What does a ribosome do?']",
        )
        require(
            isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1,
            f"max_new_tokens must be a positive integer, got {max_new_tokens!r}",
        )
        encoded = encode_prompts(tokenizer, list(prompts), chat=chat and self.config.chat_template)
        check_token_ids(model, encoded.input_ids, "the encoded prompt")
        limit = max_positions(model)
        total = encoded.prompt_length + max_new_tokens
        require(
            limit is None or total <= limit,
            f"prompt ({encoded.prompt_length} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's {limit} positions: shorten the prompt or generate fewer tokens",
        )
        device = next(model.parameters()).device
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        }
        kwargs.update(generate_kwargs)
        records: list[GateRecord] = []
        hook = self.hook() if guarded else None
        with (
            _options_refused_before_forward(model),
            hook.session(model) if hook is not None else nullcontext(),
            token_scope(encoded.content_mask.to(device)),
        ):
            if hook is not None:
                hook.reset()
                hook.recording = True
            # nn.Module types attributes as Tensor | Module; a transformers generate returns ids (B, T).
            generate = cast(Callable[..., torch.Tensor], model.generate)
            output = generate(
                input_ids=encoded.input_ids.to(device),
                attention_mask=encoded.attention_mask.to(device),
                **kwargs,
            )
            if hook is not None:
                records = list(hook.records)
                hook.reset()
        sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
        require(
            isinstance(sequences, torch.Tensor),
            f"model.generate returned {type(output).__name__} without token ids: "
            "drop the options that change its output",
        )
        assert isinstance(sequences, torch.Tensor)
        new_tokens = sequences[:, encoded.prompt_length :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True), records

    # -- persistence (artifact.py) -------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the guard to ``directory`` (safetensors + JSON, atomically); returns the folder."""
        return save_guardrail(self, directory)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        model: nn.Module | None = None,
        *,
        strict: bool = True,
        sae: Any = None,
        need_sae: bool = True,
    ) -> Guardrail:
        """Read a saved guard; with ``model``, check it was fitted on that model (see :meth:`check_model`).

        ``sae`` is needed for TopK guardrails only; ``need_sae=False`` reads one without it, to
        inspect (see ``artifact.load_guardrail``).

        Raises:
            SaeguardError: an invalid artifact, or a model it was not fitted on.
        """
        guard = cls.from_result(load_guardrail(directory, sae=sae, need_sae=need_sae))
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
            "gate_rule": self.config.gate_rule,
            "clamp_scope": self.config.clamp_scope,
            "clamp": str(self.config.clamp),
            "clamp_value": self.clamp_value,
            "architecture": self.latents.architecture,
        }
        if self.rule.scaled:  # rho in multiples of each column's retain level
            summary |= {
                "windows": list(self.rule.windows),
                "columns": list(self.rule.column_names),
                "window_scales": list(self.window_scales),
            }
        if self.config.gate_rule == "sentence":
            summary["sentence_end_ids"] = len(self.sentence_end_ids)
        if self.provenance is not None:
            record = self.provenance.to_dict()
            summary |= {
                k: record[k] for k in ("model", "sae", "tau_estimate", "calibration", "saeguard_version")
            }
        return summary


_ENCODED_ARGUMENTS = frozenset({"input_ids", "attention_mask", "inputs", "inputs_embeds"})


@contextmanager
def _options_refused_before_forward(model: nn.Module) -> Iterator[None]:
    """An error ``model.generate`` raises before the model's first forward is about its options: one line.

    Errors after a forward has run (and every ``SaeguardError``) pass through unchanged.
    """
    ran: list[bool] = []
    handle = model.register_forward_pre_hook(lambda *_: ran.append(True) if not ran else None)
    try:
        yield
    except SaeguardError:
        raise
    except Exception as error:  # noqa: BLE001 - transformers validates options with many exception types
        if ran:
            raise
        raise SaeguardError(
            f"model.generate refused these options ({type(error).__name__}: {one_line(error)}): "
            "fix the generate arguments"
        ) from None
    finally:
        handle.remove()


@dataclass
class RowDecision:
    """What the gate did to one generated row (from :meth:`Guardrail.generate`'s records)."""

    prompt_flagged: bool
    prompt_rho: float
    flipped_at: int | None  # index of the first generated token clamped after a passed prompt
    final_rho: float


def row_decisions(records: Sequence[GateRecord], prompts: int | None = None) -> list[RowDecision]:
    """The prompt's decision and, if the gate flipped while generating, the token where.

    Without ``prompts``: one per row the model ran (``len(prompts) * num_beams`` rows under beam
    search, ``* num_return_sequences`` when sampling several; a prompt's rows are adjacent). With
    ``prompts=len(prompts)``: one per prompt, so a zip with the prompts lines up; ``flipped_at`` is
    then the first token at which any of its rows was clamped, ``final_rho`` its rows' largest.

    Raises:
        SaeguardError: ``prompts`` is not a positive number that divides the rows.
    """
    if not records:
        return []
    prompt = records[0]
    assert prompt.prompt_flagged is not None
    rows = int(prompt.rho.shape[0])
    if prompts is None:
        per = 1
    else:
        require(
            type(prompts) is int and 1 <= prompts <= rows and rows % prompts == 0,
            f"prompts={prompts!r} does not divide the {rows} rows the model ran: pass len(prompts)",
        )
        per = rows // prompts
    out = []
    for first in range(0, rows, per):
        group = range(first, first + per)
        flagged = bool(prompt.prompt_flagged[first])
        flipped = None
        if not flagged:
            for step, record in enumerate(records[1:]):
                if any(bool(record.flagged[row]) for row in group):
                    flipped = step
                    break
        out.append(
            RowDecision(
                prompt_flagged=flagged,
                prompt_rho=float(prompt.rho[first]),
                flipped_at=flipped,
                final_rho=max(float(records[-1].rho[row]) for row in group),
            )
        )
    return out
