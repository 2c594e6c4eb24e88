"""Typed provenance of a guardrail: which model, SAE, corpora, selection and calibration made it.

Each record round-trips through ``to_dict``/``from_dict`` (the artifact's JSON).
``from_dict`` checks types and finiteness field by field and names the field in
its one-line error, so a hand-edited or corrupt artifact is refused at load,
never trusted. Older artifacts (saeguard 0.1.0, an untyped ``info`` dict) load
through :func:`Provenance.from_legacy_info`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

import torch

from saeguard.config import check_field, type_hints
from saeguard.errors import SaeguardError, require

R = TypeVar("R", bound="_Record")


class _Record:
    """``to_dict``/``from_dict`` for flat dataclasses of JSON scalars and lists."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str) -> R:
        """Raises SaeguardError naming ``where.field`` when a field is missing or ill-typed."""
        require(isinstance(data, dict), f"{where} must be a JSON object, got {type(data).__name__}")
        hints = type_hints(cls)
        values = {}
        for spec in fields(cls):
            if spec.name not in data:
                require(
                    spec.default is not dataclasses.MISSING
                    or spec.default_factory is not dataclasses.MISSING,
                    f"{where}.{spec.name} is missing: the artifact is incomplete, fit it again",
                )
                continue
            value = data[spec.name]
            if _is_float_list(hints[spec.name]):
                require(
                    isinstance(value, list) and all(_finite_number(v) for v in value),
                    f"{where}.{spec.name} must be a list of finite numbers",
                )
                value = [float(v) for v in value]
            elif _is_int_list(hints[spec.name]):
                require(
                    isinstance(value, list)
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value),
                    f"{where}.{spec.name} must be a list of non-negative integers",
                )
            else:
                try:
                    check_field(spec, value, hints[spec.name])
                except SaeguardError as error:
                    raise SaeguardError(f"{where}.{error}") from None
                if isinstance(value, float):
                    require(math.isfinite(value), f"{where}.{spec.name} must be finite, got {value}")
            values[spec.name] = value
        return cls(**values)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_float_list(hint: Any) -> bool:
    return hint == list[float]


def _is_int_list(hint: Any) -> bool:
    return hint == list[int]


@dataclass
class ModelRecord(_Record):
    """The model a guardrail was fitted on."""

    name: str
    fingerprint: str  # sampled hash of the embeddings and blocks 0..layer (hf.fingerprint)
    hidden_size: int = field(metadata={"min": 1})
    layer_count: int = field(metadata={"min": 1})
    dtype: str = ""  # e.g. "torch.float32": the weights' dtype at fit time (empty in older artifacts)
    weight_sample: list[float] = field(default_factory=list)  # hf.fingerprint.weight_sample


SaeKind = Literal["disk", "pretrained", "object"]


@dataclass
class SaeRecord(_Record):
    """Where the SAE came from and what it is (SAELens terms)."""

    architecture: str
    d_in: int = field(metadata={"min": 1})
    d_sae: int = field(metadata={"min": 1})
    fingerprint: str
    kind: SaeKind = "object"
    hook_name: str | None = None
    path: str | None = None  # kind "disk": the folder it was loaded from
    release: str | None = None  # kind "pretrained": SAELens release and sae_id
    sae_id: str | None = None


@dataclass
class SelectionRecord(_Record):
    """The selected latents and why they were selected (paper §3.2); lists are in selection order."""

    latent_ids: list[int]
    forget_importance: list[float]
    retain_importance: list[float]
    ratio: list[float]  # I_f / (I_r + eps); may be ~1e22 where a latent never fires on retain text
    ratio_cutoff: float
    candidate_count: int = field(metadata={"min": 0})
    forget_frequency: list[float] = field(default_factory=list)  # fraction of forget tokens where it fires
    retain_frequency: list[float] = field(default_factory=list)
    forget_mean_nonzero: list[float] = field(default_factory=list)  # mean activation where it fires (forget)


@dataclass
class CorpusRecord(_Record):
    """One fitting corpus: its fingerprint and size."""

    fingerprint: str
    documents: int = field(metadata={"min": 0})
    tokens: int = field(metadata={"min": 0})
    chunks: int = field(metadata={"min": 0})


@dataclass
class TauEstimate(_Record):
    """tau = the ``percentile``-th percentile of retain rho, with a bootstrap 95% interval."""

    tau: float
    percentile: float
    bootstrap_low: float
    bootstrap_high: float
    bootstrap_mean: float


@dataclass
class RhoSummary(_Record):
    """Summary of one calibration rho distribution against tau."""

    count: int = field(metadata={"min": 0})
    mean: float = 0.0
    median: float = 0.0
    flagged_fraction: float = 0.0  # share of inputs with rho > tau
    histogram: list[int] = field(default_factory=list)  # 20 equal bins over histogram_range
    histogram_range: list[float] = field(default_factory=lambda: [0.0, 1.0])

    @classmethod
    def of(cls, values: torch.Tensor, tau: float, bins: int = 20) -> RhoSummary:
        """Summary of (n,) rho ``values``; the histogram spans [0, max(1, max rho)]."""
        if values.numel() == 0:
            return cls(count=0)
        v = values.double()
        high = max(1.0, float(v.max()))
        return cls(
            count=int(v.numel()),
            mean=float(v.mean()),
            median=float(v.median()),
            flagged_fraction=float((v > tau).double().mean()),
            histogram=torch.histc(v.float(), bins=bins, min=0.0, max=high).int().tolist(),
            histogram_range=[0.0, high],
        )


@dataclass
class Provenance:
    """Everything recorded about how a guardrail was made (the artifact's ``provenance``)."""

    model: ModelRecord
    sae: SaeRecord
    selection: SelectionRecord
    corpora: dict[str, CorpusRecord]
    fit_seconds: float = 0.0
    tau_estimate: TauEstimate | None = None
    calibration: dict[str, RhoSummary] = field(default_factory=dict)
    saeguard_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "sae": self.sae.to_dict(),
            "selection": self.selection.to_dict(),
            "corpora": {k: v.to_dict() for k, v in self.corpora.items()},
            "fit_seconds": self.fit_seconds,
            "tau_estimate": None if self.tau_estimate is None else self.tau_estimate.to_dict(),
            "calibration": {k: v.to_dict() for k, v in self.calibration.items()},
            "saeguard_version": self.saeguard_version,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "provenance") -> Provenance:
        """Raises SaeguardError naming the first missing or ill-typed field."""
        require(isinstance(data, dict), f"{where} must be a JSON object, got {type(data).__name__}")
        for key in ("model", "sae", "selection"):
            require(key in data, f"{where}.{key} is missing: the artifact is incomplete, fit it again")
        corpora = data.get("corpora") or {}
        calibration = data.get("calibration") or {}
        require(isinstance(corpora, dict), f"{where}.corpora must be a JSON object")
        require(isinstance(calibration, dict), f"{where}.calibration must be a JSON object")
        tau = data.get("tau_estimate")
        seconds = data.get("fit_seconds", 0.0)
        require(_finite_number(seconds), f"{where}.fit_seconds must be a finite number")
        return cls(
            model=ModelRecord.from_dict(data["model"], f"{where}.model"),
            sae=SaeRecord.from_dict(data["sae"], f"{where}.sae"),
            selection=SelectionRecord.from_dict(data["selection"], f"{where}.selection"),
            corpora={str(k): CorpusRecord.from_dict(v, f"{where}.corpora.{k}") for k, v in corpora.items()},
            fit_seconds=float(seconds),
            tau_estimate=None if tau is None else TauEstimate.from_dict(tau, f"{where}.tau_estimate"),
            calibration={
                str(k): RhoSummary.from_dict(v, f"{where}.calibration.{k}") for k, v in calibration.items()
            },
            saeguard_version=str(data.get("saeguard_version", "")),
        )

    @classmethod
    def from_legacy_info(cls, info: Any) -> Provenance:
        """The untyped ``info`` dict of saeguard 0.1.0 artifacts."""
        require(isinstance(info, dict), f"info must be a JSON object, got {type(info).__name__}")
        data = dict(info)
        data["tau_estimate"] = data.pop("threshold", None)
        data.setdefault("saeguard_version", "0.1.0")
        return cls.from_dict(data, "info")
