"""Fitting a guardrail: statistics -> selection -> calibration, as separate steps.

``Guardrail.fit`` runs them in one call; sweeps and experiments compute the
statistics once (cached on disk by model + SAE + corpus) and call
``fit_from_statistics`` for each configuration, so there is one implementation
of fitting.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn

from saeguard.calibration import CalibrationShape, PromptShape, calibrate_threshold, gate_rho, prompt_rho
from saeguard.corpus import CorpusSpec, iter_chunks, iter_documents, special_token_ids
from saeguard.errors import SaeguardError, require
from saeguard.fingerprint import model_fingerprint, model_name, text_fingerprint
from saeguard.gate import ClampScope, GateStatistic, StatisticKind, activation_weights
from saeguard.layers import hidden_size, layer_count, parse_layer
from saeguard.sae import SelectedLatents, load_sae, sae_fingerprint, sae_hook_name, sae_source
from saeguard.selection import Importance, check_percentile, select_by_frequency, select_features
from saeguard.statistics import FeatureStatistics, collect_statistics, token_batches

if TYPE_CHECKING:
    from saeguard.guardrail import Guardrail

CorpusRole = Literal["forget", "retain"]
SelectionMethod = Literal["fisher", "frequency"]
GateMode = Literal["dynamic", "always"]


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
    # Baselines through the same core: Farrell et al.'s static clamp selects by firing
    # frequency and clamps wherever a latent fires ("always"); DSG gates per input.
    # Set to size statistics batches automatically to this many GiB of activations.
    memory_budget_gb: float | None = None
    selection: SelectionMethod = "fisher"
    retain_frequency_threshold: float = 0.01
    gate: GateMode = "dynamic"
    # What rho averages per token: "fraction" (the paper: any selected latent fires) or
    # "activation" (summed activations, each over its mean on forget text; better separation).
    gate_statistic: StatisticKind = "fraction"
    # Where a flagged input is clamped: tokens where a selected latent fires (the paper) or
    # every counted token of the input (stronger forgetting on small models; docs/demo-results.md).
    clamp_scope: ClampScope = "fired"

    def prompt_shape(self, *, limit: int | None = None, seed: int | None = None) -> PromptShape:
        """The shape of the inputs tau is calibrated on (held-out checks use it with another seed)."""
        return PromptShape(
            min_tokens=self.prompt_min_tokens,
            max_tokens=self.prompt_max_tokens,
            limit=self.calibration_size if limit is None else limit,
            seed=self.seed if seed is None else seed,
            chat=self.chat_template,
        )

    def validate(self) -> None:
        require(
            self.selection in ("fisher", "frequency"),
            f"selection must be 'fisher' or 'frequency', got {self.selection!r}",
        )
        require(self.gate in ("dynamic", "always"), f"gate must be 'dynamic' or 'always', got {self.gate!r}")
        require(
            self.gate_statistic in get_args(StatisticKind),
            f"gate_statistic must be 'fraction' or 'activation', got {self.gate_statistic!r}",
        )
        require(
            self.clamp_scope in get_args(ClampScope),
            f"clamp_scope must be 'fired' or 'input', got {self.clamp_scope!r}",
        )
        require(
            0.0 <= self.retain_frequency_threshold <= 1.0,
            f"retain_frequency_threshold must be in [0, 1], got {self.retain_frequency_threshold}",
        )
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
            self.memory_budget_gb is None or self.memory_budget_gb > 0,
            f"memory_budget_gb must be positive, got {self.memory_budget_gb}",
        )
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


@dataclass
class FitInputs:
    """Validated inputs of a fit: the model, the loaded SAE, the layer and the documents."""

    model: nn.Module
    tokenizer: Any
    sae: Any
    sae_spec: Any
    layer: int
    forget_docs: list[str]
    retain_docs: list[str]

    def documents(self, role: CorpusRole) -> list[str]:
        return self.forget_docs if role == "forget" else self.retain_docs


def resolve_config(config: FitConfig | None, overrides: dict[str, Any]) -> FitConfig:
    config = replace(config or FitConfig(), **overrides)
    if isinstance(config.clamp, str):
        value, relative = parse_clamp(config.clamp)
        config = replace(config, clamp=value, relative_clamp=relative)
    config.validate()
    return config


def prepare_fit(
    model: nn.Module, tokenizer, sae, forget: CorpusSpec, retain: CorpusSpec, config: FitConfig
) -> FitInputs:
    """Check everything a fit needs before any forward pass runs."""
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
    return FitInputs(
        model=model,
        tokenizer=tokenizer,
        sae=sae,
        sae_spec=sae_spec,
        layer=layer,
        forget_docs=_documents(forget, "forget", tokenizer),
        retain_docs=_documents(retain, "retain", tokenizer),
    )


def corpus_statistics(
    inputs: FitInputs,
    role: CorpusRole,
    config: FitConfig,
    *,
    cache: str | Path | None = None,
    show_progress: bool = True,
) -> FeatureStatistics:
    """Per-latent statistics of the forget or retain corpus, cached when ``cache`` is set."""
    docs = inputs.documents(role)
    limit = config.max_forget_chunks if role == "forget" else config.max_retain_chunks

    def compute() -> FeatureStatistics:
        chunks = iter_chunks(docs, inputs.tokenizer, config.seq_len, max_chunks=limit)
        batches = token_batches(chunks, inputs.tokenizer, statistics_batch_size(inputs, config))
        with _eval_mode(inputs.model):
            return collect_statistics(
                inputs.model,
                inputs.sae,
                inputs.layer,
                batches,
                description=f"{role} statistics",
                show_progress=show_progress,
            )

    if cache is None:
        return compute()
    key = text_fingerprint(
        [
            model_fingerprint(inputs.model, inputs.layer),
            str(inputs.layer),
            sae_fingerprint(inputs.sae),
            text_fingerprint(docs),
            str(config.seq_len),
            str(limit),
        ]
    )
    path = Path(cache).expanduser() / f"stats-{key}.safetensors"
    if path.is_file():
        return FeatureStatistics.load(path)
    stats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    return stats


def statistics_batch_size(inputs: FitInputs, config: FitConfig) -> int:
    """``config.batch_size``, or the largest batch fitting ``memory_budget_gb`` of activations."""
    if config.memory_budget_gb is None:
        return config.batch_size
    from saeguard.batching import suggest_batch_size

    budget = int(config.memory_budget_gb * 2**30)
    return suggest_batch_size(
        inputs.model, config.seq_len, inputs.layer, budget, d_sae=int(inputs.sae.cfg.d_sae)
    )


def calibration_rho(
    inputs: FitInputs,
    latents: SelectedLatents,
    role: CorpusRole,
    config: FitConfig,
    *,
    statistic: GateStatistic | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """rho of the calibration inputs (prompt-shaped or chunks) built from one corpus."""
    docs, tokenizer = inputs.documents(role), inputs.tokenizer
    if config.calibration == "prompts":
        shape = config.prompt_shape()
        with _eval_mode(inputs.model):
            return prompt_rho(
                inputs.model,
                tokenizer,
                inputs.layer,
                latents,
                docs,
                shape,
                statistic=statistic,
                batch_size=config.batch_size,
                description=f"{role} calibration",
                show_progress=show_progress,
            )
    else:
        chunks = iter_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
        batches = token_batches(chunks, tokenizer, config.batch_size)
    with _eval_mode(inputs.model):
        return gate_rho(
            inputs.model,
            inputs.layer,
            latents,
            batches,
            statistic=statistic,
            description=f"{role} calibration",
            show_progress=show_progress,
        )


def fit_from_statistics(
    inputs: FitInputs,
    forget_stats: FeatureStatistics,
    retain_stats: FeatureStatistics,
    config: FitConfig,
    *,
    show_progress: bool = True,
    started: float | None = None,
) -> Guardrail:
    """Selection, calibration and the clamp value for one configuration."""
    from saeguard.guardrail import Guardrail

    started = time.perf_counter() if started is None else started
    if config.selection == "frequency":
        selection = select_by_frequency(
            forget_stats,
            retain_stats,
            n_features=config.n_features,
            retain_threshold=config.retain_frequency_threshold,
        )
    else:
        selection = select_features(
            forget_stats,
            retain_stats,
            n_features=config.n_features,
            ratio_percentile=config.ratio_percentile,
            importance_kind=config.importance,
        )
    latents = SelectedLatents.from_sae(inputs.sae, selection.latent_ids)
    mean_active = forget_stats.mean_nonzero[selection.latent_ids]
    statistic = gate_statistic_for(config.gate_statistic, mean_active.tolist())
    retain_rho = calibration_rho(
        inputs, latents, "retain", config, statistic=statistic, show_progress=show_progress
    )
    forget_rho = calibration_rho(
        inputs, latents, "forget", config, statistic=statistic, show_progress=show_progress
    )
    require(retain_rho.numel() > 0, "retain corpus gave no calibration input: give it real text")
    model = inputs.model
    info = {
        "model": {
            "name": model_name(model),
            "fingerprint": model_fingerprint(model, inputs.layer),
            "hidden_size": hidden_size(model),
            "layer_count": layer_count(model),
        },
        "sae": sae_source(inputs.sae_spec, inputs.sae),
        "selection": asdict(selection)
        | {
            "forget_frequency": [float(forget_stats.frequency[i]) for i in selection.latent_ids],
            "retain_frequency": [float(retain_stats.frequency[i]) for i in selection.latent_ids],
            "forget_mean_nonzero": [float(v) for v in mean_active],
        },
        "corpora": {
            role: {
                "fingerprint": text_fingerprint(inputs.documents(role)),
                "documents": len(inputs.documents(role)),
                "tokens": stats.token_count,
                "chunks": stats.sequence_count,
            }
            for role, stats in (("forget", forget_stats), ("retain", retain_stats))
        },
        "fit_seconds": time.perf_counter() - started,
    }
    unset = Guardrail(
        latents=latents,
        layer=inputs.layer,
        threshold=math.nan,
        clamp=math.nan,
        config=config,
        special_ids=sorted(special_token_ids(inputs.tokenizer)),
        info=info,
        distributions={"retain_rho": retain_rho, "forget_rho": forget_rho},
    )
    return retune(unset)  # tau and the clamp value: one implementation for fits and sweeps


def gate_statistic_for(kind: StatisticKind, forget_mean_nonzero: list[float] | None) -> GateStatistic:
    """The gate's statistic; "activation" weighs each latent by its mean forget activation."""
    if kind == "fraction":
        return GateStatistic()
    require(
        bool(forget_mean_nonzero),
        "the activation gate statistic needs the selected latents' forget activations: refit the guard",
    )
    weights = activation_weights(torch.tensor(forget_mean_nonzero, dtype=torch.float64))
    return GateStatistic("activation", weights)


def retune(
    guard: Guardrail,
    *,
    gate_percentile: float | None = None,
    clamp: float | None = None,
    relative_clamp: bool | None = None,
) -> Guardrail:
    """``guard`` with a new tau and/or clamp; the selection and calibration rho are reused.

    tau is a percentile of the retain rho recorded at fit time and a relative
    clamp a multiple of the recorded mean forget activation, so sweeping the gate
    percentile or the clamp needs no forward pass. ``clamp`` and
    ``relative_clamp`` set the config's fields (``clamp=10, relative_clamp=True``
    is 10x); unset arguments keep the guard's settings.
    """
    changes = {"gate_percentile": gate_percentile, "clamp": clamp, "relative_clamp": relative_clamp}
    config = replace(guard.config, **{k: v for k, v in changes.items() if v is not None})
    config.validate()
    retain_rho = guard.distributions.get("retain_rho")
    require(
        retain_rho is not None and retain_rho.numel() > 0,
        "this guardrail carries no retain calibration rho: refit it to change tau",
    )
    threshold = calibrate_threshold(retain_rho, config.gate_percentile, seed=config.seed)
    value = config.clamp
    if config.relative_clamp:
        mean_active = guard.info.get("selection", {}).get("forget_mean_nonzero")
        require(
            bool(mean_active), "this guardrail records no forget activations: refit it for a relative clamp"
        )
        value = config.clamp * float(torch.tensor(mean_active, dtype=torch.float64).mean())
    require(value > 0, "relative clamp is 0: the selected latents never fire on forget text")
    info = dict(guard.info)
    info["threshold"] = asdict(threshold)
    info["calibration"] = {
        role: rho_summary(guard.distributions[f"{role}_rho"], threshold.tau)
        for role in ("retain", "forget")
        if f"{role}_rho" in guard.distributions
    }
    return replace(guard, threshold=threshold.tau, clamp=value, config=config, info=info)


def rho_summary(values: torch.Tensor, tau: float) -> dict[str, Any]:
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


def _documents(spec: CorpusSpec, name: str, tokenizer) -> list[str]:
    docs = list(iter_documents(spec))
    require(bool(docs), f"the {name} corpus is empty: give it at least one document")
    require(
        any(len(tokenizer(doc, add_special_tokens=False)["input_ids"]) >= 2 for doc in docs),
        f"the {name} corpus has no document with at least 2 tokens: give it real text",
    )
    return docs


class _eval_mode:
    """Run a block with the model in eval mode, restoring its mode after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *_exc: object) -> None:
        self.model.train(self.was_training)
