"""Figures shared by the reports: PNGs written atomically, the rho histogram with its threshold.

matplotlib is used through ``Figure`` objects (the Agg canvas, no pyplot state), so
plotting is thread-safe and needs no display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from saeguard.config import GateStatisticKind
from saeguard.io import write_bytes_atomic

#: What rho is per gate statistic (core/gate.py's module docstring; docs/method.md §3).
RHO_MEANING: dict[str, str] = {
    "fraction": "fraction of counted tokens where a selected latent fires",
    "activation": "mean of sum_j f_j / mu_j over counted tokens, 1 = forget-text mean activation",
}


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a 120-dpi PNG via a temporary file; returns ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


def plottable(values: Iterable[float | None]) -> list[float]:
    """``values`` with None (not measured) as NaN, which matplotlib leaves out of a plot."""
    return [math.nan if value is None else value for value in values]


def rho_label(statistic: GateStatisticKind | str | None) -> str:
    """Axis label for rho under ``statistic`` ("fraction", "activation"; None: not known)."""
    meaning = RHO_MEANING.get(statistic or "")
    return f"rho: {meaning}" if meaning else "rho (gate statistic)"


def rho_range(
    statistic: GateStatisticKind | str | None, values: Sequence[float], tau: float | None = None
) -> tuple[float, float]:
    """The histogram's x range: [0, 1] for the fraction statistic, else [min(0, data), max(data, tau)] + 5%.

    Nothing is clipped: a fraction outside [0, 1] (not expected) widens the range too.
    """
    points = [float(v) for v in values if math.isfinite(float(v))]
    if tau is not None and math.isfinite(tau):
        points.append(float(tau))
    low, high = min([0.0, *points]), max([0.0, *points])
    if statistic == "fraction" and low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    span = high - low
    return low, high + (0.05 * span if span > 0 else 1.0)


def plot_rho(
    distributions: Mapping[str, Sequence[float]],
    tau: float | None,
    path: str | Path,
    *,
    statistic: GateStatisticKind | str | None = None,
    bins: int = 40,
    interval: tuple[float, float] | None = None,
) -> Path:
    """Overlaid density histograms of rho per named set (n in the legend), tau as a red line.

    Args:
        distributions: set name -> rho values (one per input); empty sets are left out.
        tau: the gate threshold (inputs with rho > tau are flagged), or None.
        statistic: the guard's ``FitConfig.gate_statistic``; sets the axis label and range.
        interval: tau's bootstrap 95% interval (``TauEstimate``), drawn as a red band.
    """
    every = [v for values in distributions.values() for v in values]
    every += list(interval or ())
    low, high = rho_range(statistic, every, tau)
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for name, values in distributions.items():
        if len(values):
            ax.hist(
                [float(v) for v in values],
                bins=edges,
                alpha=0.5,
                density=True,
                label=f"{name} (n={len(values)})",
            )
    if interval is not None:
        ax.axvspan(
            *interval,
            color="red",
            alpha=0.15,
            label=f"tau 95% interval [{interval[0]:.3g}, {interval[1]:.3g}]",
        )
    if tau is not None:
        ax.axvline(tau, color="red", lw=1.5, label=f"tau = {tau:.3g}")
    ax.set_xlim(low, high)
    ax.set_xlabel(rho_label(statistic))
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
    return save_figure(fig, path)
