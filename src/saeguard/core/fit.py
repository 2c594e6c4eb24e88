"""Fitting a guard: statistics -> selection -> calibration, as separate steps (paper §3).

``Guardrail.fit`` runs them in one call; sweeps and experiments compute the
statistics once (cached on disk by model + SAE + tokenizer + corpus) and call
``fit_from_statistics`` for each configuration, so there is one implementation
of fitting. Results are plain :class:`FitResult` state. Checking the inputs
(:func:`prepare_fit`) and their statistics (:func:`corpus_statistics`) live in
``core/fit_inputs.py``; this module selects, calibrates and retunes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any, TypeVar

import torch

from saeguard._version import __version__
from saeguard.config import Clamp, FitConfig, GateStatisticKind
from saeguard.core.calibration import calibrate_tau, gate_rho, prompt_rho, scaled_rho, window_scales
from saeguard.core.fit_inputs import (
    CorpusRole,
    FitInputs,
    corpus_statistics,
    eval_mode,
    prepare_fit,
    statistics_batch_size,
)
from saeguard.core.fit_report import shared_documents, warn_if_uncalibrated
from saeguard.core.gate import GateRule, GateStatistic, activation_weights
from saeguard.core.provenance import (
    CorpusRecord,
    ModelRecord,
    Provenance,
    RhoSummary,
    SaeRecord,
    SelectionRecord,
)
from saeguard.core.sae import SelectedLatents, sae_source
from saeguard.core.selection import select_by_frequency, select_features
from saeguard.core.statistics import FeatureStatistics, Shard, token_batches
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import count_chunks, iter_chunks, sentence_end_ids, special_token_ids
from saeguard.hf.fingerprint import model_fingerprint, model_name, weight_sample
from saeguard.hf.layers import hidden_size, layer_count
from saeguard.io import text_fingerprint

__all__ = [  # the inputs' side is core/fit_inputs.py, re-exported here for callers of core.fit
    "CorpusRole",
    "FitInputs",
    "FitResult",
    "calibration_rho",
    "corpus_statistics",
    "fit_from_statistics",
    "calibration_record",
    "fit_end_ids",
    "gate_rule_for",
    "gate_statistic_for",
    "prepare_fit",
    "retune",
    "statistics_batch_size",
]

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
        window_rho: multiscale and sentence rules only: unscaled rho per role and column
            (n, S) float64 (:meth:`GateRule.window_rho`), what ``window_scales`` and the role's
            rho are recomputed from on a retune.
        window_scales: multiscale and sentence rules only: one divisor per column (:class:`GateRule`).
        sentence_end_ids: sentence rule only: ids of the tokens that end a sentence
            (``hf.corpus.sentence_end_ids`` of the fitting tokenizer), ascending.
    """

    latents: SelectedLatents
    layer: int
    tau: float
    clamp_value: float
    config: FitConfig
    special_ids: list[int]
    provenance: Provenance | None = None
    distributions: dict[str, torch.Tensor] = field(default_factory=dict)
    window_rho: dict[str, torch.Tensor] = field(default_factory=dict)
    window_scales: tuple[float, ...] = ()
    sentence_end_ids: tuple[int, ...] = ()

    @property
    def statistic(self) -> GateStatistic:
        """How rho is computed: the config's kind, weighted by the recorded forget activations."""
        weights = self.provenance.selection.forget_mean_nonzero if self.provenance is not None else None
        return gate_statistic_for(self.config.gate_statistic, weights)

    @property
    def rule(self) -> GateRule:
        """How evidence becomes rho: the config's gate rule, its parameters and calibrated scales."""
        return gate_rule_for(self.config, self.window_scales, self.sentence_end_ids)


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
    block of them (:meth:`Shard.span`). A multiscale or sentence config gets (n, S) unscaled
    rho per column (:meth:`GateRule.window_rho`: its scales come from them), any other rule (n,) rho.
    """
    docs, tokenizer = inputs.documents(role), inputs.tokenizer
    rule = gate_rule_for(config, end_ids=fit_end_ids(config, tokenizer))
    per_window = rule.scaled
    if config.calibration == "prompts":
        # Long benign runs set the false-positive level under padding, so they matter on the
        # retain side only; on the forget side they would double the pass (issue 17). So do answers.
        shape = replace(
            config.prompt_shape(),
            long_runs=role == "retain",
            answer_tokens=config.calibration_answer_tokens if role == "retain" else 0,
        )
        with eval_mode(inputs.model):
            return prompt_rho(
                inputs.model,
                tokenizer,
                inputs.layer,
                latents,
                docs,
                shape,
                statistic=statistic,
                rule=rule,
                batch_size=config.batch_size,
                description=f"{role} calibration",
                show_progress=show_progress,
                shard=shard,
                per_window=per_window,
            )
    else:
        chunks = iter_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
        if shard is not None:
            total = count_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
            chunks = islice(chunks, *shard.span(total, config.batch_size))
        batches = token_batches(chunks, tokenizer, config.batch_size)
    with eval_mode(inputs.model):
        return gate_rho(
            inputs.model,
            inputs.layer,
            latents,
            batches,
            statistic=statistic,
            rule=rule,
            description=f"{role} calibration",
            total=count_chunks(docs, tokenizer, config.seq_len, max_chunks=config.calibration_size)
            if show_progress and shard is None
            else None,
            show_progress=show_progress,
            per_window=per_window,
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
    retain_rho, forget_rho = (
        calibration_rho(
            inputs, latents, role, config, statistic=statistic, show_progress=show_progress, shard=shard
        )
        for role in ("retain", "forget")
    )
    if gather_rho is not None:  # (n_rank,) blocks, or (n_rank, S) per window size: gathered by column
        retain_rho, forget_rho = (
            torch.stack([gather_rho(column) for column in rho.unbind(1)], 1)
            if rho.dim() == 2
            else gather_rho(rho)
            for rho in (retain_rho, forget_rho)
        )
    require(retain_rho.shape[0] > 0, "retain corpus gave no calibration input: give it real text")
    distributions, window_rho = calibration_record(config, {"retain": retain_rho, "forget": forget_rho})
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
        distributions=distributions,
        window_rho=window_rho,
        sentence_end_ids=fit_end_ids(config, inputs.tokenizer),
    )
    result = retune(unset)  # tau and the clamp value: one implementation for fits and sweeps
    shared = shared_documents(inputs.documents("forget"), inputs.documents("retain"))
    warn_if_uncalibrated(result, shared=shared)  # corpora that cannot make a working gate: CalibrationWarning
    return result


def calibration_record(
    config: FitConfig, rho: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Where a fit keeps its calibration rho by role (:func:`calibration_rho`'s output).

    Returns:
        (``distributions``, ``window_rho``) for :class:`FitResult`: every rule but multiscale and
        sentence keeps ``{role}_rho`` (n,) in the first; those two keep their (n, S) rho per column
        by role in the second (:func:`retune` turns them into scales and role rho).
    """
    if gate_rule_for(config).scaled:
        return {}, dict(rho)
    return {f"{role}_rho": value for role, value in rho.items()}, {}


def gate_rule_for(
    config: FitConfig, scales: tuple[float, ...] = (), end_ids: tuple[int, ...] = ()
) -> GateRule:
    """The :class:`GateRule` a config asks for; ``scales``: the multiscale and sentence rules'
    calibrated divisors; ``end_ids``: the sentence rule's sentence-end token ids."""
    scaled = config.gate_rule in ("multiscale", "sentence")
    return GateRule(
        config.gate_rule,
        window=config.window_tokens,
        k=config.min_evidence_tokens,
        drift=config.cusum_drift,
        min_window=config.min_window_tokens,
        scales=tuple(scales) if scaled else (),
        min_sentence=config.min_sentence_tokens,
        end_ids=tuple(end_ids) if config.gate_rule == "sentence" else (),
    )


def fit_end_ids(config: FitConfig, tokenizer: Any) -> tuple[int, ...]:
    """The sentence-end token ids a fit with ``config`` records: the tokenizer's for the sentence
    rule (``hf.corpus.sentence_end_ids``), none for the others."""
    return sentence_end_ids(tokenizer) if config.gate_rule == "sentence" else ()


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
    scales: tuple[float, ...] = ()
    distributions = guard.distributions
    if gate_rule_for(config).scaled:  # the scales follow the percentile, and rho the scales
        require(
            "retain" in guard.window_rho,
            f"this {config.gate_rule} guardrail carries no retain window rho: refit it to change tau",
        )
        scales = window_scales(guard.window_rho["retain"], config.gate_percentile)
        distributions = {f"{role}_rho": scaled_rho(rho, scales) for role, rho in guard.window_rho.items()}
    retain_rho = distributions.get("retain_rho")
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
                role: RhoSummary.of(distributions[f"{role}_rho"], estimate.tau)
                for role in ("retain", "forget")
                if f"{role}_rho" in distributions
            },
        )
    return replace(
        guard,
        tau=estimate.tau,
        clamp_value=value,
        config=config,
        provenance=provenance,
        distributions=distributions,
        window_scales=scales,
    )
