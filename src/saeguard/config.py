"""Every setting of a fit, declared once: type, default, help and check (docs/method.md).

``FitConfig`` is the single source for the Python API, the CLI (options take
their defaults and help text from here), presets and the saved artifact. The
choice types below are checked from their ``Literal`` declarations, so adding a
choice is one edit (the checks themselves are ``fields.py``). A leaf module: it imports only
``errors`` and ``fields``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from saeguard.errors import SaeguardError, require
from saeguard.fields import check_field, field_default, type_hints  # callers also import them from here

Importance = Literal["squared_mean", "mean_square"]
"""Per-latent importance: the square of the mean activation (the paper) or the mean of squares."""
CalibrationShape = Literal["prompts", "chunks"]
"""What tau is calibrated on: prompt-shaped chat inputs (saeguard) or the fitting chunks (the paper)."""
SelectionMethod = Literal["fisher", "frequency"]
"""Fisher-proxy ratio selection (DSG, paper §3.2) or retain-frequency selection (Farrell et al.)."""
GateMode = Literal["dynamic", "always"]
"""Clamp on flagged inputs only (DSG) or on every input (static and ungated baselines)."""
GateStatisticKind = Literal["fraction", "activation"]
"""Per-token evidence rho averages: 1[any selected latent fires] (the paper) or normalised activations."""
ClampScope = Literal["fired", "input"]
GateRule = Literal["mean", "window", "multiscale", "sentence", "min_evidence", "cusum"]
"""How per-token evidence becomes rho (method.md §3): the paper's mean over the input, or a local rule
that benign context cannot dilute: max over sliding windows (of one size, or of several sizes each
scaled by its retain level, optionally with the largest sentence mean as one more scaled column), the
k-th largest evidence, or CUSUM."""
"""Which tokens of a flagged input are clamped: where a selected latent fires (the paper), or all counted."""


@dataclass(frozen=True)
class Clamp:
    """The clamp c: latents are set to -c. Absolute (``500``) or relative (``10x``).

    A relative clamp is ``value`` times the selected latents' mean non-zero
    activation on forget text, which transfers across models whose residual
    norms differ (docs/method.md §7); the paper uses an absolute c = 500.
    """

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        require(
            isinstance(self.value, (int, float)) and not isinstance(self.value, bool),
            f"clamp must be a number, got {self.value!r}: e.g. 500 or 10x",
        )
        require(
            math.isfinite(self.value) and self.value > 0,
            f"clamp must be a positive number, got {self.value}: e.g. 500 or 10x",
        )

    @classmethod
    def parse(cls, spec: Clamp | str | float) -> Clamp:
        """``Clamp`` from ``500``, ``"500"`` or ``"10x"``.

        Raises:
            SaeguardError: ``spec`` is not a positive number, optionally followed by ``x``.
        """
        if isinstance(spec, Clamp):
            return spec
        if isinstance(spec, bool):
            raise SaeguardError(f"cannot read clamp {spec!r}: use a number like 500 or 10x")
        if isinstance(spec, (int, float)):
            return cls(float(spec))
        raw = str(spec).strip().lower()
        relative = raw.endswith("x")
        try:
            value = float(raw[:-1] if relative else raw)
        except ValueError:
            raise SaeguardError(f"cannot read clamp {spec!r}: use a number like 500 or 10x") from None
        return cls(value, relative)

    def __str__(self) -> str:
        text = f"{self.value:g}"
        return f"{text}x" if self.relative else text

    def resolve(self, mean_nonzero: float | None) -> float:
        """The clamp value c in activation units.

        Args:
            mean_nonzero: mean non-zero forget activation of the selected latents
                (needed for a relative clamp only).

        Raises:
            SaeguardError: a relative clamp without a positive ``mean_nonzero``.
        """
        if not self.relative:
            return float(self.value)
        if mean_nonzero is None or not mean_nonzero > 0:
            raise SaeguardError(
                "relative clamp is 0: the selected latents never fire on forget text; use an absolute clamp"
            )
        return float(self.value) * float(mean_nonzero)


@dataclass(frozen=True)
class PromptShape:
    """Prompt-shaped calibration inputs: leading document pieces in the chat template."""

    min_tokens: int = 8
    max_tokens: int = 64
    limit: int = 512
    seed: int = 0
    chat: bool = True
    long_tokens: int = 0  # > 0: also long (up to this many tokens) and multi-turn inputs
    long_runs: bool = True  # False: with long_tokens > 0, the multi-turn inputs only (no long runs)
    answer_tokens: int = 0  # > 0: a quarter of limit more inputs end in the model's answer (core/answers.py)


def _help(text: str, **checks: Any) -> dict[str, Any]:
    return {"help": text, **checks}


@dataclass
class FitConfig:
    """Everything that decides a fitted guardrail; defaults are the paper's WMDP-Bio setting.

    Fields are documented by their ``help`` metadata (shown by ``--help`` and
    ``docs/method.md``); numeric ranges by ``min``/``max``; choices by their
    ``Literal`` types. See :func:`FitConfig.validate`.
    """

    layer: int | str | None = field(
        default=None,
        metadata=_help(
            "Hook layer: block index, or a hook name such as blocks.3.hook_resid_post; default: the SAE's"
        ),
    )
    n_features: int = field(
        default=20, metadata=_help("N: how many latents to select (paper: 20 bio, 30 cyber)", min=1)
    )
    ratio_percentile: float = field(
        default=95.0,
        metadata=_help(
            "p_ratio: keep latents whose forget/retain ratio is at or above this percentile", min=0, max=100
        ),
    )
    gate_percentile: float = field(
        default=95.0,
        metadata=_help("p_dyn: tau is this percentile of rho over retain calibration inputs", min=0, max=100),
    )
    clamp: Clamp = field(
        default=Clamp(500.0),
        metadata=_help("c: selected latents are set to -c; 500, or 10x the mean forget activation"),
    )
    importance: Importance = field(
        default="squared_mean", metadata=_help("Fisher proxy: squared_mean (paper) or mean_square")
    )
    seq_len: int = field(default=1024, metadata=_help("Tokens per statistics chunk (paper: 1024)", min=2))
    batch_size: int = field(default=8, metadata=_help("Sequences per forward pass", min=1))
    max_forget_chunks: int | None = field(
        default=None, metadata=_help("Use at most this many forget chunks", min=1)
    )
    max_retain_chunks: int | None = field(
        default=None, metadata=_help("Use at most this many retain chunks", min=1)
    )
    calibration: CalibrationShape = field(
        default="prompts",
        metadata=_help("Calibrate tau on prompt-shaped chat inputs or on the fitting chunks"),
    )
    calibration_size: int = field(default=512, metadata=_help("Calibration inputs per corpus", min=1))
    prompt_min_tokens: int = field(
        default=8, metadata=_help("Shortest prompt-shaped calibration input (tokens)", min=1)
    )
    prompt_max_tokens: int = field(
        default=64, metadata=_help("Longest prompt-shaped calibration input (tokens)", min=1)
    )
    chat_template: bool = field(default=True, metadata=_help("Wrap prompts in the tokenizer's chat template"))
    seed: int = field(default=0, metadata=_help("Seed of calibration sampling and the bootstrap"))
    memory_budget_gb: float | None = field(
        default=None,
        metadata=_help("Size statistics batches to this many GiB of activations", min_exclusive=0),
    )
    selection: SelectionMethod = field(
        default="fisher", metadata=_help("fisher (DSG) or frequency (static clamp baseline)")
    )
    retain_frequency_threshold: float = field(
        default=0.01,
        metadata=_help(
            "frequency selection: latents firing on more retain tokens than this are dropped", min=0, max=1
        ),
    )
    gate: GateMode = field(
        default="dynamic", metadata=_help("dynamic (DSG) or always (clamp every input: baselines)")
    )
    gate_statistic: GateStatisticKind = field(
        default="fraction", metadata=_help("Per-token evidence rho averages: fraction (paper) or activation")
    )
    clamp_scope: ClampScope = field(
        default="fired", metadata=_help("Clamp where a latent fires (paper) or every counted token")
    )

    gate_rule: GateRule = field(
        default="mean",
        metadata=_help(
            "How evidence becomes rho: mean (paper), window, multiscale, sentence (multiscale + sentences), "
            "min_evidence or cusum (local rules)"
        ),
    )
    window_tokens: int = field(
        default=16,
        metadata=_help("window rule: counted tokens per sliding window (multiscale: the largest)", min=1),
    )
    min_window_tokens: int = field(
        default=4,
        metadata=_help(
            "multiscale/sentence rule: the smallest window; sizes halve from window_tokens down to it", min=1
        ),
    )
    min_sentence_tokens: int = field(
        default=1,
        metadata=_help(
            "sentence rule: a shorter sentence is read with the tokens before it up to this many", min=1
        ),
    )
    min_evidence_tokens: int = field(
        default=3, metadata=_help("min_evidence rule: rho is the k-th largest token evidence (k)", min=1)
    )
    cusum_drift: float = field(
        default=0.5, metadata=_help("cusum rule: evidence subtracted per token before accumulating", min=0)
    )
    calibration_long_tokens: int = field(
        default=0,
        metadata=_help(
            "Also calibrate tau on long (up to this many tokens) and multi-turn retain inputs; 0 = off", min=0
        ),
    )
    calibration_answer_tokens: int = field(
        default=0,
        metadata=_help(
            "Also calibrate tau on retain prompts followed by the model's own greedy answer of up to this "
            "many tokens, as the running gate reads a generation; 0 = off",
            min=0,
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.clamp, Clamp):
            self.clamp = Clamp.parse(self.clamp)

    def prompt_shape(self, *, limit: int | None = None, seed: int | None = None) -> PromptShape:
        """The shape of the inputs tau is calibrated on (held-out checks use it with another seed)."""
        return PromptShape(
            min_tokens=self.prompt_min_tokens,
            max_tokens=self.prompt_max_tokens,
            limit=self.calibration_size if limit is None else limit,
            seed=self.seed if seed is None else seed,
            chat=self.chat_template,
            long_tokens=self.calibration_long_tokens,
            answer_tokens=self.calibration_answer_tokens,
        )

    def validate(self) -> FitConfig:
        """Check every field against its type, choices and range; return ``self``.

        Raises:
            SaeguardError: one line naming the first bad field and what it accepts.
        """
        for spec in fields(self):
            check_field(spec, getattr(self, spec.name), type_hints(type(self))[spec.name])
        require(
            self.prompt_min_tokens <= self.prompt_max_tokens,
            f"prompt_min_tokens ({self.prompt_min_tokens}) must not exceed "
            f"prompt_max_tokens ({self.prompt_max_tokens})",
        )
        require(
            self.gate_rule not in ("multiscale", "sentence") or self.min_window_tokens <= self.window_tokens,
            f"{self.gate_rule} rule: min_window_tokens ({self.min_window_tokens}) must not exceed "
            f"window_tokens ({self.window_tokens})",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; the clamp as its string form (``"500"`` or ``"10x"``)."""
        data = dataclasses.asdict(self)
        data["clamp"] = str(self.clamp)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> FitConfig:
        """Rebuild from :meth:`to_dict` output, also from older saeguard versions.

        Unknown keys are dropped with a warning (a newer saeguard wrote them);
        the old ``clamp`` + ``relative_clamp`` pair becomes one :class:`Clamp`.

        Raises:
            SaeguardError: ``data`` is not a mapping, or a field fails validation.
        """
        require(isinstance(data, dict), f"{where} must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        if "relative_clamp" in data:
            relative = bool(data.pop("relative_clamp"))
            value = data.get("clamp", 500.0)
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{where}.clamp must be a number, got {value!r}",
            )
            data["clamp"] = Clamp(float(value), relative)
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"{where}: ignoring unknown settings {', '.join(unknown)} "
                "(written by another saeguard version)",
                stacklevel=2,
            )
        try:
            return cls(**{k: v for k, v in data.items() if k in known}).validate()
        except SaeguardError as error:
            raise SaeguardError(f"{where}: {error}") from None

    @classmethod
    def option(cls, name: str) -> tuple[Any, str]:
        """(default, help) of field ``name``, for CLI options and docs."""
        spec = next(s for s in fields(cls) if s.name == name)
        return field_default(spec), spec.metadata.get("help", "")


def with_overrides(config: FitConfig | None, overrides: dict[str, Any]) -> FitConfig:
    """``config`` (default: ``FitConfig()``) with ``overrides`` applied and validated.

    Raises:
        SaeguardError: an unknown setting name, or a value that fails validation.
    """
    require(
        config is None or isinstance(config, FitConfig),
        f"config must be a FitConfig, got {type(config).__name__}: pass FitConfig(...), preset('demo'), "
        "or the settings as keywords",
    )
    known = {spec.name for spec in fields(FitConfig)}
    unknown = sorted(set(overrides) - known)
    require(not unknown, f"unknown fit setting {', '.join(unknown)}: see FitConfig for the settings")
    return replace(config or FitConfig(), **overrides).validate()


# -- presets (issue 12 §2) ------------------------------------------------------------------

DEFAULT_LAYER = 6
"""Hook layer of the embedded default SAE on SmolLM2-135M-Instruct, chosen by measurement
(docs/default-sae.md): its biology latents separate held-out biology from other text best."""

Preset = Literal["paper", "demo"]
"""Named starting points for a fit, shared by the API (:func:`preset`) and ``--preset``."""

PRESETS: dict[Preset, dict[str, Any]] = {
    # The paper's WMDP-Bio setting (arXiv 2504.08192 §4): FitConfig's own defaults.
    "paper": {},
    # The README's table and `saeguard demo` on the default model (docs/demo-results.md): the
    # activation statistic with the input clamp scope reaches chance on forget where the paper's
    # statistic and scope stop at 41-44%; a relative clamp transfers across residual norms.
    "demo": {
        "layer": DEFAULT_LAYER,
        "clamp": Clamp(5.0, relative=True),
        "gate_statistic": "activation",
        "clamp_scope": "input",
        "seq_len": 256,
        "max_forget_chunks": 400,
        "max_retain_chunks": 800,
        # Chosen on validation text (scripts/research/gate_rule_choice.py and segment_rule.py,
        # docs/attacks.md): the sentence rule (the largest mean over 8- and 16-token windows and
        # over sentences, each scaled by its retain level), tau at p_dyn 85 of retain inputs that
        # include 2,000-token benign runs, multi-turn splits and the model's own answers. Against
        # the multiscale rule alone it detects more forget text on every validation set (clean 88%
        # vs 86%, under 400-2,000 benign tokens 77-79% vs 77%, 3 turns 89% vs 82%, short pieces
        # 63% vs 50%) at <= 4% benign false positives (long Wikipedia context: see docs/attacks.md).
        "gate_rule": "sentence",
        "window_tokens": 16,
        "min_window_tokens": 8,
        "min_sentence_tokens": 1,
        "calibration_long_tokens": 2000,
        "calibration_answer_tokens": 64,
        "gate_percentile": 85.0,
    },
}
"""What each preset changes from ``FitConfig()``; every other field keeps its default."""


def preset(name: str) -> FitConfig:
    """A fresh, validated ``FitConfig`` for preset ``name`` (``"paper"`` is ``FitConfig()``).

    Raises:
        SaeguardError: ``name`` is not a preset.
    """
    require(name in PRESETS, f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return with_overrides(None, PRESETS[typing.cast(Preset, name)])
