"""Latent descriptions for zero-shot selection: what each SAE latent fires on in general text.

One pass of the model over general text (to the SAE's layer only) keeps, per latent, its
``top_k`` strongest activations with the token and a short context around it, plus its
firing frequency and mean non-zero activation (``FeatureStatistics``). The result is cached
as JSON keyed by model, SAE, text and settings, so it is computed once per setup.
:func:`zero_shot_guard` turns the best-matching latents into a guardrail without forget data.
Descriptions written elsewhere (e.g. a Neuronpedia export for Gemma Scope: JSON or JSONL
rows with ``index`` and ``description``) can be imported and matched the same way.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saeguard._version import __version__
from saeguard.config import FitConfig
from saeguard.core.fit import (
    FitInputs,
    FitResult,
    calibration_record,
    calibration_rho,
    fit_end_ids,
    gate_statistic_for,
    retune,
)
from saeguard.core.guardrail import Guardrail
from saeguard.core.provenance import CorpusRecord, ModelRecord, Provenance, SaeRecord, SelectionRecord
from saeguard.core.sae import SelectedLatents, encode_all, sae_fingerprint, sae_source
from saeguard.core.statistics import FeatureStatistics, token_batches
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import iter_chunks, special_token_ids
from saeguard.hf.fingerprint import model_fingerprint, model_name, tokenizer_fingerprint
from saeguard.hf.layers import hidden_size, layer_count, model_device, residual_at
from saeguard.io import json_fingerprint, text_fingerprint, write_json
from saeguard.progress import progress_bar

_TOKEN_CHUNK = 2048


@dataclass
class DescribeSettings:
    """How latents are described: text chunks, examples kept per latent, context width."""

    seq_len: int = 128
    max_chunks: int = 800
    batch_size: int = 8
    top_k: int = 12  # strongest activations kept per latent
    before: int = 8  # context tokens before the firing token
    after: int = 2  # and after it


@dataclass
class LatentExample:
    """One strong activation: the token, its context (text) and the activation."""

    token: str
    context: str
    activation: float


@dataclass
class LatentDescription:
    """What one latent fires on in general text."""

    latent: int
    frequency: float  # share of general-text tokens where it fires
    mean_nonzero: float  # mean activation where it fires
    examples: list[LatentExample] = field(default_factory=list)  # strongest first
    text: str = ""  # an imported description (e.g. Neuronpedia), when given


@dataclass
class Descriptions:
    """Every latent's description and what they were computed from."""

    key: str  # fingerprint of model, SAE, tokenizer, text and settings
    settings: DescribeSettings
    tokens: int
    latents: list[LatentDescription]
    kind: str = "saeguard-latent-descriptions"
    version: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Descriptions:
        latents = [
            LatentDescription(**(d | {"examples": [LatentExample(**e) for e in d["examples"]]}))
            for d in data["latents"]
        ]
        return cls(data["key"], DescribeSettings(**data["settings"]), data["tokens"], latents)


@torch.no_grad()
def describe_latents(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    layer: int,
    documents: Sequence[str],
    settings: DescribeSettings | None = None,
    *,
    cache: str | Path | None = None,
    show_progress: bool = True,
) -> Descriptions:
    """Describe every latent of ``sae`` by its strongest activations on ``documents`` (cached in ``cache``).

    Raises:
        SaeguardError: the documents give no token to describe latents with.
    """
    settings = settings or DescribeSettings()
    key = json_fingerprint(
        {
            "model": model_fingerprint(model, layer),
            "layer": layer,
            "sae": sae_fingerprint(sae),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "documents": text_fingerprint(documents),
            "settings": asdict(settings),
        }
    )
    path = Path(cache).expanduser() / f"descriptions-{key}.json" if cache is not None else None
    if path is not None and path.is_file():
        try:
            return Descriptions.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a torn or foreign file: compute it again
    width, k = int(sae.cfg.d_sae), settings.top_k
    stats = FeatureStatistics.empty(width)
    top_values = torch.full((k, width), -torch.inf)
    top_index = torch.zeros((k, width), dtype=torch.long)
    flat: list[int] = []  # every token id of the pass, chunk after chunk
    starts: list[int] = []  # where each chunk starts in ``flat``
    device = model_device(model)
    chunks = iter_chunks(documents, tokenizer, settings.seq_len, max_chunks=settings.max_chunks)
    with progress_bar("describing latents", total=settings.max_chunks, enabled=show_progress) as advance:
        for batch in token_batches(chunks, tokenizer, settings.batch_size):
            hidden = residual_at(model, layer, batch.input_ids.to(device), batch.attention_mask.to(device))
            positions = []
            for row in range(batch.input_ids.shape[0]):
                length = int(batch.attention_mask[row].sum())
                starts.append(len(flat))
                positions += [len(flat) + t for t in range(length) if bool(batch.counted[row, t])]
                flat += batch.input_ids[row, :length].tolist()
            tokens = hidden[batch.counted.to(device)]
            for begin in range(0, tokens.shape[0], _TOKEN_CHUNK):  # bounded (tokens, F) activations
                acts = encode_all(sae, tokens[begin : begin + _TOKEN_CHUNK]).float().cpu()
                stats.update(acts)
                where = torch.tensor(positions[begin : begin + _TOKEN_CHUNK], dtype=torch.long)
                values = torch.cat([top_values, acts])
                best = values.topk(k, dim=0)
                top_index = torch.cat([top_index, where.unsqueeze(1).expand(-1, width)]).gather(
                    0, best.indices
                )
                top_values = best.values
            advance(int(batch.input_ids.shape[0]))
    require(stats.token_count > 0, "no tokens to describe latents with: give the general text real documents")
    frequency, mean_nonzero = stats.frequency, stats.mean_nonzero
    latents = []
    for j in range(width):
        examples = []
        for value, position in zip(top_values[:, j].tolist(), top_index[:, j].tolist(), strict=True):
            if value <= 0:
                break
            start = starts[bisect.bisect_right(starts, position) - 1]
            window = flat[max(start, position - settings.before) : position + settings.after + 1]
            token = tokenizer.decode([flat[position]])
            examples.append(LatentExample(token, tokenizer.decode(window, skip_special_tokens=True), value))
        latents.append(LatentDescription(j, float(frequency[j]), float(mean_nonzero[j]), examples))
    result = Descriptions(key, settings, stats.token_count, latents)
    if path is not None:
        write_json(path, result)
    return result


def import_descriptions(path: str | Path) -> dict[int, str]:
    """Latent index -> description from a JSON list/object or JSONL (``index``/``description`` fields).

    Neuronpedia's explanation exports use ``index`` and ``description``; ``feature`` and
    ``explanation`` are read too.

    Raises:
        SaeguardError: the file cannot be read or holds no (index, description) rows.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix != ".jsonl" and text.lstrip().startswith(("[", "{")):
            rows: Any = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise SaeguardError(
            f"cannot read descriptions {path}: {error}; pass a JSON or JSONL export"
        ) from None
    if isinstance(rows, dict):
        rows = [{"index": k, "description": v} for k, v in rows.items()]
    out: dict[int, str] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        index = row.get("index", row.get("feature"))
        description = row.get("description", row.get("explanation"))
        if isinstance(description, str) and str(index).isdigit():
            out[int(str(index))] = description
    require(bool(out), f"{path} has no rows with an index and a description: pass a Neuronpedia export")
    return out


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str]:
    """Case-insensitive match of any keyword at a word start ("cell" matches "cells", "cellular")."""
    require(bool(keywords), "the topic query has no keywords: give some, e.g. ['cell', 'protein']")
    return re.compile(r"\b(?:" + "|".join(re.escape(k.strip()) for k in keywords) + ")", re.IGNORECASE)


def match_scores(descriptions: Descriptions, keywords: Sequence[str]) -> torch.Tensor:
    """(F,) float64: per latent, the share of its examples whose context holds a keyword.

    An imported description that holds a keyword scores 1.
    """
    pattern = keyword_pattern(keywords)
    scores = torch.zeros(len(descriptions.latents), dtype=torch.float64)
    for d in descriptions.latents:
        hits = [bool(pattern.search(e.context)) for e in d.examples]
        score = sum(hits) / len(hits) if hits else 0.0
        if d.text and pattern.search(d.text):
            score = 1.0
        scores[d.latent] = score
    return scores


def select_by_description(
    descriptions: Descriptions, keywords: Sequence[str], n_features: int, *, max_frequency: float = 0.05
) -> list[int]:
    """The ``n_features`` best-matching latents (ties: rarer first), never one firing on more tokens
    than ``max_frequency`` (dense latents match any query by chance).

    Raises:
        SaeguardError: no latent matches the keywords at all.
    """
    scores = match_scores(descriptions, keywords)
    candidates = [
        d.latent for d in descriptions.latents if scores[d.latent] > 0 and d.frequency <= max_frequency
    ]
    require(bool(candidates), f"no latent's examples match {list(keywords)}: use other keywords")
    frequency = {d.latent: d.frequency for d in descriptions.latents}
    candidates.sort(key=lambda j: (-float(scores[j]), frequency[j], j))
    return candidates[:n_features]


@dataclass
class SelectedLatent:
    """A zero-shot latent: its match score, general-text frequency and strongest contexts."""

    latent: int
    score: float
    frequency: float
    contexts: list[str]


def zero_shot_guard(
    inputs: FitInputs,
    descriptions: Descriptions,
    keywords: Sequence[str],
    fit: FitConfig,
    *,
    max_frequency: float = 0.05,
    show_progress: bool = True,
) -> tuple[Guardrail, list[SelectedLatent]]:
    """Select by description, calibrate tau on retain prompts, clamp relative to the general-text activation.

    ``inputs.forget_docs`` is the general text (no forget data); its mean activations stand in for
    the forget activations a fit records.
    """
    ids = select_by_description(descriptions, keywords, fit.n_features, max_frequency=max_frequency)
    match = match_scores(descriptions, keywords)
    chosen = [descriptions.latents[i] for i in ids]
    mean_active = [d.mean_nonzero for d in chosen]
    latents = SelectedLatents.from_sae(inputs.sae, ids)
    statistic = gate_statistic_for(fit.gate_statistic, mean_active)
    retain_rho = calibration_rho(
        inputs, latents, "retain", fit, statistic=statistic, show_progress=show_progress
    )
    distributions, window_rho = calibration_record(fit, {"retain": retain_rho})
    model = inputs.model
    provenance = Provenance(
        model=ModelRecord(
            model_name(model), model_fingerprint(model, inputs.layer), hidden_size(model), layer_count(model)
        ),
        sae=SaeRecord(**sae_source(inputs.sae_spec, inputs.sae)),
        selection=SelectionRecord(
            latent_ids=ids,
            forget_importance=[float(match[i]) for i in ids],  # zero-shot: the description match score
            retain_importance=[d.frequency for d in chosen],
            ratio=[float(match[i]) for i in ids],
            ratio_cutoff=0.0,
            candidate_count=int((match > 0).sum()),
            forget_frequency=[d.frequency for d in chosen],  # general text: no forget text exists
            forget_mean_nonzero=mean_active,
        ),
        corpora={
            "general": CorpusRecord(
                text_fingerprint(inputs.forget_docs), len(inputs.forget_docs), descriptions.tokens, 0
            )
        },
        saeguard_version=__version__,
    )
    unset = FitResult(
        latents=latents,
        layer=inputs.layer,
        tau=math.nan,
        clamp_value=math.nan,
        config=fit,
        special_ids=sorted(special_token_ids(inputs.tokenizer)),
        provenance=provenance,
        distributions=distributions,
        window_rho=window_rho,
        sentence_end_ids=fit_end_ids(fit, inputs.tokenizer),
    )
    selected = [
        SelectedLatent(d.latent, float(match[d.latent]), d.frequency, [e.context for e in d.examples[:3]])
        for d in chosen
    ]
    return Guardrail.from_result(retune(unset)), selected
