"""Fitting a guard: statistics -> selection -> calibration, as separate steps (paper §3).

``Guardrail.fit`` runs them in one call; sweeps and experiments compute the
statistics once (cached on disk by model + SAE + tokenizer + corpus) and call
``fit_from_statistics`` for each configuration, so there is one implementation
of fitting. Results are plain :class:`FitResult` state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from saeguard._version import __version__
from saeguard.config import Clamp, FitConfig, GateStatisticKind
from saeguard.core.calibration import calibrate_tau, gate_rho, prompt_rho
from saeguard.core.fit_report import warn_if_uncalibrated
from saeguard.core.gate import GateRule, GateStatistic, activation_weights
from saeguard.core.provenance import (
    CorpusRecord,
    ModelRecord,
    Provenance,
    RhoSummary,
    SaeRecord,
    SelectionRecord,
)
from saeguard.core.sae import SelectedLatents, load_sae, sae_fingerprint, sae_hook_name, sae_source
from saeguard.core.selection import select_by_frequency, select_features
from saeguard.core.statistics import FeatureStatistics, Shard, collect_statistics, token_batches
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import (
    CorpusSpec,
    check_tokenizer,
    count_chunks,
    iter_chunks,
    iter_documents,
    special_token_ids,
)
from saeguard.hf.fingerprint import model_fingerprint, model_name, tokenizer_fingerprint, weight_sample
from saeguard.hf.layers import (
    check_language_model,
    hidden_size,
    layer_count,
    max_positions,
    parse_layer,
)
from saeguard.io import text_fingerprint

CorpusRole = Literal["forget", "retain"]
R = TypeVar("R", bound="FitResult")


@dataclass
class FitResult:
    """A fitted guard as plain state: what ``Guardrail`` holds and the artifact stores.

    ``Guardrail`` extends this with attaching and generating; the core's fit
    functions and the artifact reader produce and consume it, so neither needs
    ``Guardrail`` (one import direction: fit -> artifact -> guardrail).

    Attributes:
        latents: the N selected latents (encoder columns, decoder rows; SAELens W_enc/W_dec).
        layer: hook layer (decoder block index; the residual stream after it is read).
        tau: gate threshold; an input is flagged iff rho > tau (paper §3.3).
        clamp_value: c in activation units; flagged latents are set to -c (paper §3.4).
        config: the settings that produced the guard.
        special_ids: token ids never counted by the gate (BOS/EOS/PAD, template specials).
        provenance: model, SAE, corpora, selection and calibration records (None if built by hand).
        distributions: calibration rho per role, e.g. ``retain_rho`` (n,) float64.
    """

    latents: SelectedLatents
    layer: int
    tau: float
    clamp_value: float
    config: FitConfig
    special_ids: list[int]
    provenance: Provenance | None = None
    distributions: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def statistic(self) -> GateStatistic:
        """How rho is computed: the config's kind, weighted by the recorded forget activations."""
        weights = self.provenance.selection.forget_mean_nonzero if self.provenance is not None else None
        return gate_statistic_for(self.config.gate_statistic, weights)

    @property
    def rule(self) -> GateRule:
        """How evidence becomes rho: the config's gate rule and its parameters."""
        return gate_rule_for(self.config)


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


def prepare_fit(
    model: nn.Module, tokenizer, sae, forget: CorpusSpec, retain: CorpusSpec, config: FitConfig
) -> FitInputs:
    """Check everything a fit needs before any forward pass runs.

    Raises:
        SaeguardError: not a loaded language model, no tokenizer, an SAE that reads another
            layer or width than the one asked for, a length (``seq_len``, ``prompt_max_tokens``,
            ``calibration_long_tokens``) beyond the model's positions, or corpora without real text.
    """
    check_language_model(model)
    check_tokenizer(tokenizer, "a fit")
    _check_lengths(model, config)
    sae_spec = sae
    sae = load_sae(sae)
    hook_name = sae_hook_name(sae)
    layer = parse_layer(config.layer if config.layer is not None else hook_name, model)
    if config.layer is not None and hook_name is not None:
        try:
            sae_layer = parse_layer(hook_name, model)
        except SaeguardError:
            sae_layer = None  # a hook name we cannot read (e.g. attention output): the given layer decides
        require(
            sae_layer is None or sae_layer == layer,
            f"the SAE reads layer {sae_layer} ({hook_name}) but layer {layer} was asked for: "
            "drop --layer/layer= to use the SAE's, or pass the SAE trained on that layer",
        )
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


def _check_lengths(model: nn.Module, config: FitConfig) -> None:
    """Every length the config chooses fits the model's positions (a chat template adds a few tokens)."""
    limit = max_positions(model)
    if limit is None:
        return
    for name in ("seq_len", "prompt_max_tokens", "calibration_long_tokens"):
        value, most = getattr(config, name), limit if name == "seq_len" else limit // 2
        require(
            value <= limit if name == "seq_len" else value < limit,
            f"{name} {value} exceeds the model's {limit} positions: use {name}={most} or less",
        )


def corpus_statistics(
    inputs: FitInputs,
    role: CorpusRole,
    config: FitConfig,
    *,
    cache: str | Path | None = None,
    show_progress: bool = True,
    shard: Shard | None = None,
) -> FeatureStatistics:
    """Per-latent statistics of the forget or retain corpus, cached when ``cache`` is set.

    With a ``shard`` only that rank's batches run (the partial sums; may hold no token).
    """
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
                batches if shard is None else shard.take(batches),
                description=f"{role} statistics",
                total=count_chunks(docs, inputs.tokenizer, config.seq_len, max_chunks=limit)
                if show_progress and shard is None
                else None,
                show_progress=show_progress,
                allow_empty=shard is not None,
            )

    if cache is None:
        return compute()
    key = text_fingerprint(
        [
            model_fingerprint(inputs.model, inputs.layer),
            str(inputs.layer),
            sae_fingerprint(inputs.sae),
            tokenizer_fingerprint(inputs.tokenizer),
            text_fingerprint(docs),
            str(config.seq_len),
            str(limit),
            *([] if shard is None else [f"shard {shard.rank}/{shard.count}"]),
        ]
    )
    path = Path(cache).expanduser() / f"stats-{key}.safetensors"
    if path.is_file():
        try:
            return FeatureStatistics.load(path)
        except SaeguardError:
            path.unlink(missing_ok=True)  # truncated or foreign file: recompute it
    stats = compute()
    stats.save(path)
    return stats


def statistics_batch_size(inputs: FitInputs, config: FitConfig) -> int:
    """``config.batch_size``, or the largest batch fitting ``memory_budget_gb`` of activations."""
    if config.memory_budget_gb is None:
        return config.batch_size
    from saeguard.hf.batching import suggest_batch_size

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
    shard: Shard | None = None,
) -> torch.Tensor:
    """rho of the calibration inputs (prompt-shaped or chunks) built from one corpus.

    The inputs do not depend on ``shard``; a shard computes the rho of its contiguous
    block of them (:meth:`Shard.span`).
    """
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
                rule=gate_rule_for(config),
                batch_size=config.batch_size,
                description=f"{role} calibration",
                show_progress=show_progress,
                shard=shard,
            )
    else:
        chunks = iter_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
        if shard is not None:
            total = count_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
            chunks = islice(chunks, *shard.span(total, config.batch_size))
        batches = token_batches(chunks, tokenizer, config.batch_size)
    with _eval_mode(inputs.model):
        return gate_rho(
            inputs.model,
            inputs.layer,
            latents,
            batches,
            statistic=statistic,
            rule=gate_rule_for(config),
            description=f"{role} calibration",
            total=count_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
            if show_progress and shard is None
            else None,
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
    shard: Shard | None = None,
    gather_rho: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Selection (paper §3.2), calibration of tau (§3.3) and the clamp value (§3.4) for one config.

    Data-parallel (``saeguard.distributed``): the statistics are the summed ones, this
    process computes the calibration rho of its ``shard`` only, and ``gather_rho`` turns
    that (n_rank,) block into all ranks' (n,) rho in input order.

    Raises:
        SaeguardError: a ``shard`` without ``gather_rho``, or no retain calibration input.
    """
    started = time.perf_counter() if started is None else started
    require(
        shard is None or shard.count == 1 or gather_rho is not None,
        "a sharded fit needs gather_rho to collect every rank's calibration rho",
    )
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
    ids = selection.latent_ids
    latents = SelectedLatents.from_sae(inputs.sae, ids)
    mean_active = [float(v) for v in forget_stats.mean_nonzero[ids]]
    statistic = gate_statistic_for(config.gate_statistic, mean_active)
    retain_rho = calibration_rho(
        inputs, latents, "retain", config, statistic=statistic, show_progress=show_progress, shard=shard
    )
    forget_rho = calibration_rho(
        inputs, latents, "forget", config, statistic=statistic, show_progress=show_progress, shard=shard
    )
    if gather_rho is not None:
        retain_rho, forget_rho = gather_rho(retain_rho), gather_rho(forget_rho)
    require(retain_rho.numel() > 0, "retain corpus gave no calibration input: give it real text")
    model = inputs.model
    stats_by_role: dict[CorpusRole, FeatureStatistics] = {"forget": forget_stats, "retain": retain_stats}
    provenance = Provenance(
        model=ModelRecord(
            name=model_name(model),
            fingerprint=model_fingerprint(model, inputs.layer),
            hidden_size=hidden_size(model),
            layer_count=layer_count(model),
            dtype=str(next(model.parameters()).dtype),
            weight_sample=weight_sample(model, inputs.layer),
        ),
        sae=SaeRecord(**sae_source(inputs.sae_spec, inputs.sae)),
        selection=SelectionRecord(
            **asdict(selection),
            forget_frequency=[float(forget_stats.frequency[i]) for i in ids],
            retain_frequency=[float(retain_stats.frequency[i]) for i in ids],
            forget_mean_nonzero=mean_active,
        ),
        corpora={
            role: CorpusRecord(
                fingerprint=text_fingerprint(inputs.documents(role)),
                documents=len(inputs.documents(role)),
                tokens=stats.token_count,
                chunks=stats.sequence_count,
            )
            for role, stats in stats_by_role.items()
        },
        fit_seconds=time.perf_counter() - started,
        saeguard_version=__version__,
    )
    unset = FitResult(
        latents=latents,
        layer=inputs.layer,
        tau=float("nan"),
        clamp_value=float("nan"),
        config=config,
        special_ids=sorted(special_token_ids(inputs.tokenizer)),
        provenance=provenance,
        distributions={"retain_rho": retain_rho, "forget_rho": forget_rho},
    )
    result = retune(unset)  # tau and the clamp value: one implementation for fits and sweeps
    warn_if_uncalibrated(result)  # a retain side too small to calibrate on: CalibrationWarning
    return result


def gate_rule_for(config: FitConfig) -> GateRule:
    """The :class:`GateRule` a config asks for."""
    return GateRule(
        config.gate_rule, window=config.window_tokens, k=config.min_evidence_tokens, drift=config.cusum_drift
    )


def gate_statistic_for(kind: GateStatisticKind, forget_mean_nonzero: list[float] | None) -> GateStatistic:
    """The gate's statistic; "activation" weighs each latent by its mean forget activation."""
    if kind == "fraction":
        return GateStatistic()
    require(
        bool(forget_mean_nonzero),
        "the activation gate statistic needs the selected latents' forget activations: refit the guard",
    )
    weights = activation_weights(torch.tensor(forget_mean_nonzero, dtype=torch.float64))
    return GateStatistic("activation", weights)


def retune(guard: R, *, gate_percentile: float | None = None, clamp: Clamp | str | float | None = None) -> R:
    """``guard`` with a new tau and/or clamp; the selection and calibration rho are reused.

    tau is a percentile of the retain rho recorded at fit time and a relative
    clamp a multiple of the recorded mean forget activation, so sweeping p_dyn
    or c needs no forward pass. Unset arguments keep the guard's settings.
    Returns the same type as ``guard`` (a ``Guardrail`` stays one).

    Raises:
        SaeguardError: the guard carries no retain rho or (relative clamp) no forget activations.
    """
    changes: dict[str, Any] = {}
    if gate_percentile is not None:
        changes["gate_percentile"] = gate_percentile
    if clamp is not None:
        changes["clamp"] = Clamp.parse(clamp)
    config = replace(guard.config, **changes).validate()
    retain_rho = guard.distributions.get("retain_rho")
    if retain_rho is None or retain_rho.numel() == 0:
        raise SaeguardError("this guardrail carries no retain calibration rho: refit it to change tau")
    estimate = calibrate_tau(retain_rho, config.gate_percentile, seed=config.seed)
    provenance = guard.provenance
    mean_active = provenance.selection.forget_mean_nonzero if provenance is not None else []
    if config.clamp.relative:
        require(
            bool(mean_active), "this guardrail records no forget activations: refit it for a relative clamp"
        )
    value = config.clamp.resolve(
        float(torch.tensor(mean_active, dtype=torch.float64).mean()) if mean_active else None
    )
    if provenance is not None:
        provenance = replace(
            provenance,
            tau_estimate=estimate,
            calibration={
                role: RhoSummary.of(guard.distributions[f"{role}_rho"], estimate.tau)
                for role in ("retain", "forget")
                if f"{role}_rho" in guard.distributions
            },
        )
    return replace(guard, tau=estimate.tau, clamp_value=value, config=config, provenance=provenance)


def _documents(spec: CorpusSpec, name: str, tokenizer) -> list[str]:
    """The corpus's documents; at least one must have 2 tokens the statistics count (not special/unknown)."""
    docs = list(iter_documents(spec))
    require(bool(docs), f"the {name} corpus is empty: give it at least one document")
    special = special_token_ids(tokenizer)
    require(
        any(
            sum(i not in special for i in tokenizer(doc, add_special_tokens=False)["input_ids"]) >= 2
            for doc in docs
        ),
        f"the {name} corpus has no document with at least 2 tokens the tokenizer knows (not special or "
        "unknown): give it real text in the model's language",
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
