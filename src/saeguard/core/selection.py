"""Feature selection by the Fisher-information ratio (docs/method.md §2.2; paper §3.2).

importance I_j = mean_t f_j^2 proxy: the reference squares the mean
(``squared_mean``); the mean of squares (``mean_square``) is the textbook
diagonal Fisher and is offered as an option. Latents whose forget/retain ratio
reaches the ``ratio_percentile``-th percentile are candidates; the top
``n_features`` by forget importance are selected, ties broken by latent index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from saeguard.config import Importance
from saeguard.core.statistics import FeatureStatistics
from saeguard.errors import require

RATIO_EPSILON = 1e-21


@dataclass
class Selection:
    """The chosen latents and the numbers they were chosen by, in selection order.

    For ``select_by_frequency`` the importance lists hold firing frequencies and
    ``ratio_cutoff`` the retain-frequency threshold.
    """

    latent_ids: list[int]
    forget_importance: list[float]
    retain_importance: list[float]
    ratio: list[float]
    ratio_cutoff: float
    candidate_count: int


def importance(stats: FeatureStatistics, kind: Importance = "squared_mean") -> torch.Tensor:
    """Per-latent importance I_j, (F,) float64: ``mu_j^2`` (the reference) or ``E[f_j^2]``.

    Raises:
        SaeguardError: an unknown ``kind``.
    """
    if kind == "squared_mean":
        return stats.mean.square()
    require(kind == "mean_square", f"unknown importance {kind!r}: use squared_mean or mean_square")
    return stats.mean_square


def check_percentile(name: str, value: float) -> None:
    """Raise ``SaeguardError`` naming ``name`` unless ``value`` is a percentile in [0, 100]."""
    require(
        0.0 <= float(value) <= 100.0 and not np.isnan(value),
        f"{name} must be a percentile in [0, 100], got {value}",
    )


def select_features(
    forget: FeatureStatistics,
    retain: FeatureStatistics,
    *,
    n_features: int,
    ratio_percentile: float,
    importance_kind: Importance = "squared_mean",
    epsilon: float = RATIO_EPSILON,
) -> Selection:
    """DSG selection (paper §3.2; docs/method.md §2.2).

    r_j = I_j(forget) / (I_j(retain) + epsilon); candidates are latents with
    r_j at or above the ``ratio_percentile``-th percentile of r over all F
    latents and non-zero forget importance; the ``n_features`` candidates with the
    largest forget importance are returned, ties broken by the lower latent index.

    Raises:
        SaeguardError: a bad percentile, ``n_features`` < 1 or above the number of
            candidates, or statistics of different widths.
    """
    check_percentile("ratio_percentile", ratio_percentile)
    require(n_features >= 1, f"n_features must be at least 1, got {n_features}")
    require(
        forget.activation_sum.shape == retain.activation_sum.shape,
        "forget and retain statistics come from SAEs of different widths: recompute both",
    )
    forget_imp = importance(forget, importance_kind)
    retain_imp = importance(retain, importance_kind)
    ratio = forget_imp / (retain_imp + epsilon)
    cutoff = float(np.percentile(ratio.numpy(), ratio_percentile))
    candidates = torch.nonzero((ratio >= cutoff) & (forget_imp > 0)).flatten()
    require(
        n_features <= candidates.numel(),
        f"n_features={n_features} is larger than the {candidates.numel()} candidate latents "
        f"above the {ratio_percentile}th ratio percentile: lower n_features or ratio_percentile",
    )
    # Stable sort on descending importance keeps the lower latent index first among ties.
    order = torch.sort(-forget_imp[candidates], stable=True).indices
    chosen = candidates[order[:n_features]]
    return Selection(
        latent_ids=[int(i) for i in chosen],
        forget_importance=[float(forget_imp[i]) for i in chosen],
        retain_importance=[float(retain_imp[i]) for i in chosen],
        ratio=[float(ratio[i]) for i in chosen],
        ratio_cutoff=cutoff,
        candidate_count=int(candidates.numel()),
    )


def select_by_frequency(
    forget: FeatureStatistics, retain: FeatureStatistics, *, n_features: int, retain_threshold: float
) -> Selection:
    """Static-clamp selection (Farrell et al.): latents rare on retain text, most frequent on forget text.

    Candidates fire on at most ``retain_threshold`` of retain tokens (a fraction
    in [0, 1]) and at least once on forget text; the ``n_features`` most frequent
    on forget text are returned (docs/method.md §6.2).

    Raises:
        SaeguardError: ``n_features`` < 1 or above the number of candidates.
    """
    require(n_features >= 1, f"n_features must be at least 1, got {n_features}")
    forget_freq, retain_freq = forget.frequency, retain.frequency
    candidates = torch.nonzero((retain_freq <= retain_threshold) & (forget_freq > 0)).flatten()
    require(
        n_features <= candidates.numel(),
        f"n_features={n_features} is larger than the {candidates.numel()} latents firing on at most "
        f"{retain_threshold:g} of retain tokens: lower n_features or raise the retain-frequency threshold",
    )
    order = torch.sort(-forget_freq[candidates], stable=True).indices
    chosen = candidates[order[:n_features]]
    ratio = forget_freq / (retain_freq + RATIO_EPSILON)
    return Selection(
        latent_ids=[int(i) for i in chosen],
        forget_importance=[float(forget_freq[i]) for i in chosen],
        retain_importance=[float(retain_freq[i]) for i in chosen],
        ratio=[float(ratio[i]) for i in chosen],
        ratio_cutoff=float(retain_threshold),
        candidate_count=int(candidates.numel()),
    )
