"""A guard explained: every selected latent's numbers, contexts and output tokens, plus its calibration.

:func:`explain_guard` gathers what ``saeguard explain`` shows (``explain/report.py`` renders
it): the provenance the fit recorded (selection numbers, tau's bootstrap estimate, the
calibration rho distributions), the decoder read through the unembedding, and, when forget
or retain text is given, one streaming scan of each (:func:`~saeguard.explain.latents.scan_latents`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from saeguard.core.fit import FitResult
from saeguard.core.guardrail import Guardrail
from saeguard.core.provenance import RhoSummary, SaeRecord, TauEstimate
from saeguard.errors import require
from saeguard.explain.latents import (
    LatentScan,
    ScanConfig,
    TokenScore,
    decoder_logits,
    neuronpedia_url,
    scan_latents,
)
from saeguard.hf.corpus import CorpusSpec, iter_documents


@dataclass
class LatentExplanation:
    """One selected latent (``rank`` 1 = selected first) as the fit saw it and as the scans found it.

    Importances are the fit's Fisher proxies (``FitConfig.importance``); frequencies are shares
    of counted tokens where the latent fires; ``forget_mean_nonzero`` is its mean forget
    activation where it fires (SAE units). Values the artifact does not hold are None.
    ``scans`` maps a corpus role (``forget``, ``retain``) to what the scan of that text found.
    """

    rank: int
    latent: int
    forget_importance: float | None
    retain_importance: float | None
    ratio: float | None
    forget_frequency: float | None
    retain_frequency: float | None
    forget_mean_nonzero: float | None
    promoted: list[TokenScore]
    suppressed: list[TokenScore]
    neuronpedia: str | None = None
    scans: dict[str, LatentScan] = field(default_factory=dict)


@dataclass
class GuardExplanation:
    """Everything ``saeguard explain`` reports about one guard (JSON: ``explain.json``)."""

    layer: int
    tau: float
    clamp_value: float
    clamp_scope: str
    gate_statistic: str
    importance: str
    model: str | None
    sae: SaeRecord | None
    tau_estimate: TauEstimate | None
    calibration: dict[str, RhoSummary]
    distributions: dict[str, list[float]]  # calibration rho per role (forget, retain)
    latents: list[LatentExplanation]
    scanned: dict[str, int] = field(default_factory=dict)  # role -> documents scanned
    kind: str = "saeguard-explain"
    version: int = 1


def _at(values: Sequence[float], index: int) -> float | None:
    """``values[index]``, or None for lists an older artifact left empty."""
    return float(values[index]) if index < len(values) else None


def as_guardrail(guard: FitResult) -> Guardrail:
    """``guard`` as a :class:`Guardrail` (a bare fit result wrapped, sharing its tensors)."""
    return guard if isinstance(guard, Guardrail) else Guardrail.from_result(guard)


def read_texts(texts: Mapping[str, CorpusSpec]) -> dict[str, list[str]]:
    """Every document of each text to scan (role -> documents); read before any model work.

    Raises:
        SaeguardError: a text that cannot be read (missing file, bad JSONL, ...) or has no document.
    """
    out = {}
    for role, spec in texts.items():
        out[role] = list(iter_documents(spec))
        require(bool(out[role]), f"the {role} text to scan is empty: give at least one document")
    return out


def explain_guard(
    model: nn.Module,
    tokenizer: Any,
    guard: FitResult,
    *,
    texts: Mapping[str, CorpusSpec] | None = None,
    scan: ScanConfig | None = None,
    top_tokens: int = 10,
) -> GuardExplanation:
    """Explain ``guard`` on ``model`` (the model it was fitted on).

    Args:
        texts: corpus role -> text to scan for top contexts (e.g. ``{"forget": ..., "retain": ...}``);
            pass held-out text to see where latents fire beyond the fitting corpus. None: no scan.
        scan: chunking and how many contexts and activations to keep per latent.
        top_tokens: output tokens listed per latent, each way.

    Raises:
        SaeguardError: a model the guard was not fitted on (not a language model, another width or
            too few layers; :meth:`Guardrail.check_model`, not strict), an empty corpus, or a model
            whose unembedding does not match the SAE.
    """
    as_guardrail(guard).check_model(model, strict=False)
    provenance = guard.provenance
    ids = [int(i) for i in guard.latents.ids]
    logits = decoder_logits(model, tokenizer, guard, top=top_tokens)
    scans: dict[str, list[LatentScan]] = {}
    scanned: dict[str, int] = {}
    for role, documents in read_texts(texts or {}).items():
        scans[role] = scan_latents(model, tokenizer, guard, documents, scan)
        scanned[role] = len(documents)
    selection = provenance.selection if provenance is not None else None
    sae = provenance.sae if provenance is not None else None
    order = {latent: i for i, latent in enumerate(selection.latent_ids)} if selection is not None else {}
    latents = []
    for rank, latent in enumerate(ids):
        i = order.get(latent, len(ids))  # the record's index of this latent (None-valued if absent)
        latents.append(
            LatentExplanation(
                rank=rank + 1,
                latent=latent,
                forget_importance=_at(selection.forget_importance, i) if selection else None,
                retain_importance=_at(selection.retain_importance, i) if selection else None,
                ratio=_at(selection.ratio, i) if selection else None,
                forget_frequency=_at(selection.forget_frequency, i) if selection else None,
                retain_frequency=_at(selection.retain_frequency, i) if selection else None,
                forget_mean_nonzero=_at(selection.forget_mean_nonzero, i) if selection else None,
                promoted=logits[rank][0],
                suppressed=logits[rank][1],
                neuronpedia=neuronpedia_url(sae, latent),
                scans={role: found[rank] for role, found in scans.items()},
            )
        )
    return GuardExplanation(
        layer=guard.layer,
        tau=float(guard.tau),
        clamp_value=float(guard.clamp_value),
        clamp_scope=str(guard.config.clamp_scope),
        gate_statistic=str(guard.config.gate_statistic),
        importance=str(guard.config.importance),
        model=provenance.model.name if provenance is not None else None,
        sae=sae,
        tau_estimate=provenance.tau_estimate if provenance is not None else None,
        calibration=dict(provenance.calibration) if provenance is not None else {},
        distributions={
            key.removesuffix("_rho"): [float(v) for v in values.double().cpu()]
            for key, values in guard.distributions.items()
        },
        latents=latents,
        scanned=scanned,
    )
