"""What a fit did, read back from its provenance, and whether its corpora could make a working gate.

After every fit the CLI prints :meth:`FitReport.lines`: documents, tokens and
chunks per corpus, calibration inputs per corpus, tau with its bootstrap
interval, and how many selected latents never fire on retain text. Three kinds of
problem are reported by :func:`warn_if_uncalibrated` as one :class:`CalibrationWarning`,
emitted from the core so API users see it too (issue 12 §3), each with what to do:

* a retain side too small or degenerate to calibrate on (fewer than
  :data:`MIN_CALIBRATION_INPUTS` calibration inputs, tau = 0, or most selected latents
  silent on a small retain text, so their forget/retain ratios divide by ~0): add retain text;
* a forget side too small to choose latents from (under :data:`MIN_FORGET_TOKENS` tokens or
  :data:`MIN_FORGET_INPUTS` calibration inputs): add forget text;
* corpora the gate cannot tell apart (the same text on both sides, many forget documents
  also in the retain corpus, no selected latent :data:`MIN_RATIO` times more important on
  forget than on retain text, or a dynamic gate that flags barely more forget than retain
  calibration inputs, :data:`MIN_SEPARATION`): a guard that (almost) never fires on its topic.
  The fix is a retain corpus without the forget topic.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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
#: Fewer forget tokens or calibration inputs than these: latents chosen from a few sentences.
MIN_FORGET_TOKENS = 300
MIN_FORGET_INPUTS = 8
FORGET_FIX = (
    "add more forget text on the topic, e.g. another --forget file (--forget repeats; "
    "API: forget=[...more documents])"
)
#: A selected latent should be at least this many times more important on forget than on retain text.
MIN_RATIO = 2.0
#: A dynamic gate should flag at least this much larger a share of forget than of retain calibration inputs.
MIN_SEPARATION = 0.10
#: Forget documents also found in the retain corpus, as a share, from which the corpora "overlap".
MAX_SHARED = 0.10
SEPARATION_FIX = (
    "use a retain corpus without the forget topic (e.g. --retain wiki:not-biology, or your own "
    "general text) and forget text on the topic only"
)


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
        forget_problems: why the forget side is too small to choose latents from.
        separation_problems: why the gate cannot tell forget from retain text.
    """

    corpora: dict[str, CorpusRecord]
    calibration_inputs: dict[str, int]
    tau: float
    tau_estimate: TauEstimate | None
    n_latents: int
    silent_on_retain: int
    problems: tuple[str, ...] = field(default=())
    forget_problems: tuple[str, ...] = field(default=())
    separation_problems: tuple[str, ...] = field(default=())

    @classmethod
    def of(
        cls, provenance: Provenance, tau: float, *, dynamic: bool = True, shared: float | None = None
    ) -> FitReport:
        """The report of a fit with this provenance and threshold.

        Args:
            dynamic: the guard's gate decides per input (``gate="dynamic"``); an ``always`` gate
                flags everything by design, so its flagged shares are not compared.
            shared: the share of forget documents also in the retain corpus (known at fit time only).
        """
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
            forget_problems=_forget_problems(provenance),
            separation_problems=_separation_problems(provenance, dynamic=dynamic, shared=shared),
        )

    @property
    def warning(self) -> str | None:
        """The one-line warning for every problem with what to do about it, or None when there is none."""
        parts = []
        if self.problems:
            parts.append(
                "the retain side is too small or degenerate to calibrate the gate: "
                f"{'; '.join(self.problems)}; {RETAIN_FIX}"
            )
        if self.separation_problems:
            parts.append(
                "the guard cannot tell the forget text from the retain text, so it will rarely or "
                f"never fire on its topic: {'; '.join(self.separation_problems)}; {SEPARATION_FIX}"
            )
        if self.forget_problems:
            parts.append(
                "the forget side is too small to choose latents from: "
                f"{'; '.join(self.forget_problems)}; {FORGET_FIX}"
            )
        return ". Also, ".join(parts) if parts else None

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
            "forget_problems": list(self.forget_problems),
            "separation_problems": list(self.separation_problems),
        }


def _forget_problems(provenance: Provenance) -> tuple[str, ...]:
    """Too little forget text: under :data:`MIN_FORGET_TOKENS` tokens or :data:`MIN_FORGET_INPUTS` inputs."""
    problems = []
    forget = provenance.corpora.get("forget")
    if forget is not None and forget.tokens < MIN_FORGET_TOKENS:
        problems.append(f"only {forget.tokens:,} forget tokens (fewer than {MIN_FORGET_TOKENS:,})")
    calibration = provenance.calibration.get("forget")
    if calibration is not None and calibration.count < MIN_FORGET_INPUTS:
        problems.append(
            f"only {calibration.count} forget calibration inputs (fewer than {MIN_FORGET_INPUTS})"
        )
    return tuple(problems)


def _separation_problems(provenance: Provenance, *, dynamic: bool, shared: float | None) -> tuple[str, ...]:
    """Why the gate cannot tell the corpora apart (same text, overlap, no forget-specific latent)."""
    problems = []
    forget, retain = provenance.corpora.get("forget"), provenance.corpora.get("retain")
    if forget is not None and retain is not None and forget.fingerprint == retain.fingerprint:
        problems.append("the forget and retain corpora are the same text")
    elif shared is not None and shared >= MAX_SHARED:
        problems.append(f"{100 * shared:.0f}% of the forget documents are also retain documents")
    ratios = provenance.selection.ratio
    if ratios and max(ratios) < MIN_RATIO:
        problems.append(
            f"no selected latent is even {MIN_RATIO:g}x as important on forget as on retain text "
            f"(best ratio {max(ratios):.3g})"
        )
    calibration = provenance.calibration
    if dynamic and "forget" in calibration and "retain" in calibration:
        f, r = calibration["forget"], calibration["retain"]
        if f.count and r.count and f.flagged_fraction - r.flagged_fraction < MIN_SEPARATION:
            problems.append(
                f"the gate flags {100 * f.flagged_fraction:.0f}% of forget calibration inputs and "
                f"{100 * r.flagged_fraction:.0f}% of retain ones"
            )
    return tuple(problems)


def shared_documents(forget: Sequence[str], retain: Sequence[str]) -> float:
    """The share of ``forget`` documents (0-1) that also occur, verbatim, in ``retain``."""
    if not forget:
        return 0.0
    seen = {hash(text) for text in retain}
    return sum(hash(text) in seen for text in forget) / len(forget)


def fit_report(result: FitResult, *, shared: float | None = None) -> FitReport | None:
    """The :class:`FitReport` of a fitted guard (a ``Guardrail`` too); None when it has no provenance.

    ``shared``: the share of forget documents also in the retain corpus, when the fit knows it.
    """
    if result.provenance is None:
        return None
    dynamic = result.config.gate == "dynamic"
    return FitReport.of(result.provenance, result.tau, dynamic=dynamic, shared=shared)


def warn_if_uncalibrated(result: FitResult, *, shared: float | None = None) -> None:
    """Warn (:class:`CalibrationWarning`) when ``result``'s corpora cannot make a working gate.

    ``shared``: the share of forget documents also in the retain corpus (:func:`shared_documents`).
    """
    report = fit_report(result, shared=shared)
    if report is not None and report.warning is not None:
        warnings.warn(report.warning, CalibrationWarning, stacklevel=4)  # the caller of Guardrail.fit
