"""What a fit did, read back from its provenance, and whether its retain side could calibrate the gate.

After every fit the CLI prints :meth:`FitReport.lines`: documents, tokens and
chunks per corpus, calibration inputs per corpus, tau with its bootstrap
interval, and how many selected latents never fire on retain text. A retain
side too small or degenerate to calibrate on (fewer than
:data:`MIN_CALIBRATION_INPUTS` calibration inputs, tau = 0, or most selected
latents silent on a small retain text, so their forget/retain ratios divide by ~0) is
reported by :func:`warn_if_uncalibrated` as one :class:`CalibrationWarning`,
emitted from the core so API users see it too (issue 12 §3).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saeguard.core.provenance import CorpusRecord, Provenance, TauEstimate
from saeguard.errors import CalibrationWarning

if TYPE_CHECKING:
    from saeguard.core.fit import FitResult

#: Fewer retain calibration inputs than this make tau (a high percentile) a guess.
MIN_CALIBRATION_INPUTS = 50
#: Below this many retain tokens, most selected latents never firing on retain text is a sign of
#: too little retain text rather than of topic-specific latents.
MIN_RETAIN_TOKENS = 100_000
#: What to do about a degenerate retain side (CLI and API alike).
RETAIN_FIX = "add more retain text, e.g. --retain wiki:not-biology (API: retain=[...more documents])"


@dataclass(frozen=True)
class FitReport:
    """A fit's sizes and calibration health, from its :class:`Provenance` and tau.

    Attributes:
        corpora: per role (``forget``, ``retain``): documents, tokens and chunks the statistics read.
        calibration_inputs: per role: how many calibration inputs rho was measured on.
        tau: the gate threshold (rho units of the gate statistic).
        tau_estimate: tau's percentile and bootstrap 95% interval (None for hand-built guards).
        n_latents: selected latents N.
        silent_on_retain: selected latents whose retain firing frequency is exactly 0.
        problems: why the retain side cannot calibrate the gate (empty when it can).
    """

    corpora: dict[str, CorpusRecord]
    calibration_inputs: dict[str, int]
    tau: float
    tau_estimate: TauEstimate | None
    n_latents: int
    silent_on_retain: int
    problems: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, provenance: Provenance, tau: float) -> FitReport:
        """The report of a fit with this provenance and threshold."""
        frequencies = provenance.selection.retain_frequency
        silent = sum(1 for value in frequencies if value == 0)
        inputs = {role: summary.count for role, summary in provenance.calibration.items()}
        n_latents = len(provenance.selection.latent_ids)
        problems: list[str] = []
        retain_inputs = inputs.get("retain")
        if retain_inputs is not None and retain_inputs < MIN_CALIBRATION_INPUTS:
            problems.append(
                f"only {retain_inputs} retain calibration inputs (fewer than {MIN_CALIBRATION_INPUTS})"
            )
        if tau <= 0:
            problems.append(f"tau = {tau:g}: any firing of a selected latent flags an input")
        retain = provenance.corpora.get("retain")
        retain_tokens = retain.tokens if retain is not None else None
        small = retain_tokens is not None and retain_tokens < MIN_RETAIN_TOKENS
        if frequencies and 2 * silent > len(frequencies) and small:
            problems.append(
                f"{silent} of {len(frequencies)} selected latents never fire on the {retain_tokens:,} "
                "retain tokens, so their forget/retain ratios divide by ~0"
            )
        return cls(
            corpora=dict(provenance.corpora),
            calibration_inputs=inputs,
            tau=tau,
            tau_estimate=provenance.tau_estimate,
            n_latents=n_latents,
            silent_on_retain=silent,
            problems=tuple(problems),
        )

    @property
    def warning(self) -> str | None:
        """The one-line warning for :attr:`problems`, or None when the retain side is fine."""
        if not self.problems:
            return None
        problems = "; ".join(self.problems)
        return f"the retain side is too small or degenerate to calibrate the gate: {problems}; {RETAIN_FIX}"

    def lines(self) -> list[str]:
        """The report as short lines of text, one per corpus plus tau and the latents."""
        out = []
        for role, record in self.corpora.items():
            calibration = self.calibration_inputs.get(role)
            extra = f"; {calibration:,} calibration inputs" if calibration is not None else ""
            sizes = f"{record.documents:,} documents, {record.tokens:,} tokens, {record.chunks:,} chunks"
            out.append(f"{role}: {sizes}{extra}")
        estimate = self.tau_estimate
        if estimate is not None:
            out.append(
                f"tau {self.tau:.4g} (the {estimate.percentile:g}th percentile of retain rho; bootstrap 95% "
                f"interval {estimate.bootstrap_low:.4g}-{estimate.bootstrap_high:.4g})"
            )
        else:
            out.append(f"tau {self.tau:.4g}")
        out.append(f"{self.n_latents} latents selected; {self.silent_on_retain} never fire on retain text")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``saeguard inspect --json`` could carry)."""
        return {
            "corpora": {role: record.to_dict() for role, record in self.corpora.items()},
            "calibration_inputs": dict(self.calibration_inputs),
            "tau": self.tau,
            "tau_estimate": None if self.tau_estimate is None else self.tau_estimate.to_dict(),
            "n_latents": self.n_latents,
            "silent_on_retain": self.silent_on_retain,
            "problems": list(self.problems),
        }


def fit_report(result: FitResult) -> FitReport | None:
    """The :class:`FitReport` of a fitted guard (a ``Guardrail`` too); None when it has no provenance."""
    if result.provenance is None:
        return None
    return FitReport.of(result.provenance, result.tau)


def warn_if_uncalibrated(result: FitResult) -> None:
    """Warn (:class:`CalibrationWarning`) when ``result``'s retain side cannot calibrate its gate."""
    report = fit_report(result)
    if report is not None and report.warning is not None:
        warnings.warn(report.warning, CalibrationWarning, stacklevel=4)  # the caller of Guardrail.fit
