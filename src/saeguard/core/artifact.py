"""Guardrail artifacts: a folder with ``guardrail.safetensors`` and ``guardrail.json``. No pickle.

What an artifact holds, and all it may reference:
- ``guardrail.json``: format tag and version, the saeguard version, layer,
  tau, the clamp value, the selected latents' architecture, special token ids,
  the fit config and the provenance records (docs/method.md, "Artifact").
- ``guardrail.safetensors``: the N selected latents (``latent_ids`` (N,),
  ``encoder`` (d_in, N), ``encoder_bias`` (N,), ``decoder`` (N, d_in),
  ``decoder_bias`` (d_in,), JumpReLU ``threshold`` (N,)), float32, and the
  calibration rho distributions (``distribution.<role>_rho`` (n,)); a multiscale or
  sentence gate also its unscaled rho per column (``window_rho.<role>`` (n, S)) and, in the
  JSON, its ``window_scales`` (S,), which must be what the retain rho give at the config's
  percentile; a sentence gate also ``sentence_end_ids`` (K,) int64.

A ReLU/JumpReLU guardrail is self-contained. A TopK guardrail also needs its
full SAE; the recorded path or release is only a hint shown to the user: the
SAE is loaded only when the caller passes it explicitly (``sae=``), and it must
match the recorded fingerprint. Everything read is validated (types, ranges,
finite numbers, shapes, format tag); a failure is one ``SaeguardError`` line
naming the field. Writes go through ``io.staged_folder``: never half an artifact.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saeguard._version import __version__
from saeguard.config import FitConfig
from saeguard.core.calibration import window_scales
from saeguard.core.fit import FitResult, gate_rule_for
from saeguard.core.provenance import Provenance
from saeguard.core.sae import SUPPORTED_ARCHITECTURES, SelectedLatents, load_sae, sae_fingerprint
from saeguard.errors import SaeguardError, one_line, require
from saeguard.io import as_path, parse_json, staged_folder, to_jsonable

FORMAT = "saeguard-guardrail"
FORMAT_VERSION = 2
TENSORS_FILE = "guardrail.safetensors"
META_FILE = "guardrail.json"
END_IDS = "sentence_end_ids"
_LATENT_TENSORS = ("latent_ids", "encoder", "encoder_bias", "decoder", "decoder_bias")
_MAX_TOKEN_ID = 2**31  # no vocabulary comes near; larger ids cannot be real tokens


def is_guardrail_folder(directory: Path) -> bool:
    """True when ``directory`` holds a guardrail (``guardrail.json``)."""
    return (directory / META_FILE).is_file()


def is_replaceable_guardrail(directory: Path) -> bool:
    """True when ``directory`` holds a guardrail and nothing else, so replacing it loses nothing.

    A guardrail folder the user also keeps other files in (notes, reports) is not replaced:
    saving would delete them (found by a new-user probe of ``fit --force``).
    """
    guard_files = {META_FILE, TENSORS_FILE}
    return is_guardrail_folder(directory) and all(entry.name in guard_files for entry in directory.iterdir())


def save_guardrail(guard: FitResult, directory: str | Path) -> Path:
    """Write ``guard`` to ``directory`` atomically; an existing guardrail folder there is replaced.

    Raises:
        SaeguardError: ``directory`` exists and is neither empty nor a folder holding only a
            guardrail's two files.
    """
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "saeguard_version": __version__,
        "layer": guard.layer,
        "tau": guard.tau,
        "clamp_value": guard.clamp_value,
        "architecture": guard.latents.architecture,
        "subtract_decoder_bias": guard.latents.subtract_decoder_bias,
        "special_ids": [int(i) for i in guard.special_ids],
        "window_scales": [float(v) for v in guard.window_scales],
        "scale_columns": _scale_columns(guard.config),
        "config": guard.config.to_dict(),
        "provenance": None if guard.provenance is None else guard.provenance.to_dict(),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in guard.latents.tensors().items()}
    tensors.update(
        {f"distribution.{k}": v.detach().cpu().contiguous() for k, v in guard.distributions.items()}
    )
    tensors.update({f"window_rho.{k}": v.detach().cpu().contiguous() for k, v in guard.window_rho.items()})
    if guard.config.gate_rule == "sentence":  # also none: the tokenizer had no sentence-end token
        tensors[END_IDS] = torch.tensor(guard.sentence_end_ids, dtype=torch.long).reshape(-1)
    with staged_folder(directory, replace=is_replaceable_guardrail) as staging:
        save_file(tensors, str(staging / TENSORS_FILE), metadata={"format": FORMAT})
        (staging / META_FILE).write_text(json.dumps(to_jsonable(meta), indent=2), encoding="utf-8")
    return Path(directory).expanduser()


def load_guardrail(directory: str | Path, *, sae: Any = None, need_sae: bool = True) -> FitResult:
    """Read and validate a guardrail folder (this format or saeguard 0.1.0's).

    Args:
        directory: the folder ``save_guardrail`` wrote.
        sae: the full SAE (folder, ``release:sae_id`` or SAELens object); needed for
            TopK guardrails only, ignored otherwise.
        need_sae: False reads a TopK guardrail without its SAE, to inspect it only (its gate
            refuses to run until loaded with ``sae``); nothing recorded is followed or fetched.

    Raises:
        SaeguardError: a missing, unreadable or invalid file or field (named in the message),
            or a TopK guardrail without ``sae`` (unless ``need_sae`` is False).
    """
    directory = as_path(directory, "the guardrail folder")
    meta_path, tensor_path = directory / META_FILE, directory / TENSORS_FILE
    require(
        meta_path.is_file() and tensor_path.is_file(),
        f"{directory} is not a saeguard guardrail (needs {META_FILE} and {TENSORS_FILE}): "
        "create one with `saeguard fit`",
    )
    try:
        text = meta_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SaeguardError(
            f"{meta_path} cannot be read as text ({one_line(error)}): fit the guardrail again"
        ) from None
    meta = parse_json(text, str(meta_path))
    tensors = _read_tensors(tensor_path)
    return _from_parts(meta, tensors, directory, sae, need_sae=need_sae)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError/ValueError
        raise SaeguardError(
            f"{path} is not a readable safetensors file ({one_line(error)}): fit the guardrail again"
        ) from None


def _from_parts(
    meta: Any, tensors: dict[str, torch.Tensor], directory: Path, sae: Any, *, need_sae: bool = True
) -> FitResult:
    where = str(directory / META_FILE)
    require(isinstance(meta, dict), f"{where} must hold a JSON object, got {type(meta).__name__}")
    require(meta.get("format") == FORMAT, f"{where}: format must be {FORMAT!r}, got {meta.get('format')!r}")
    version = meta.get("format_version")
    require(
        isinstance(version, int) and not isinstance(version, bool) and version >= 1,
        f"{where}: format_version must be a positive integer, got {version!r}",
    )
    require(
        version <= FORMAT_VERSION,
        f"{where}: format_version {version} is newer than this saeguard ({__version__}): upgrade saeguard",
    )
    legacy = version == 1
    layer = _integer(meta, "layer", where, minimum=0)
    tau = _finite(meta, "threshold" if legacy else "tau", where)
    clamp_value = _finite(meta, "clamp" if legacy else "clamp_value", where)
    require(clamp_value > 0, f"{where}: the clamp value must be positive, got {clamp_value}")
    architecture = meta.get("architecture")
    require(
        architecture in SUPPORTED_ARCHITECTURES,
        f"{where}: architecture must be one of {', '.join(SUPPORTED_ARCHITECTURES)}, got {architecture!r}",
    )
    subtract = meta.get("subtract_decoder_bias")
    require(isinstance(subtract, bool), f"{where}: subtract_decoder_bias must be true or false")
    special = meta.get("special_ids")
    require(
        isinstance(special, list)
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < _MAX_TOKEN_ID for i in special),
        f"{where}: special_ids must be a list of non-negative integers below 2**31 (token ids)",
    )
    require("config" in meta, f"{where}: config is missing: fit the guardrail again")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = FitConfig.from_dict(meta["config"], where=f"{where}: config")
    for warning in caught:
        warnings.warn(str(warning.message), stacklevel=3)
    raw_provenance = meta.get("info") if legacy else meta.get("provenance")
    provenance = None
    if raw_provenance is not None:
        try:
            provenance = (
                Provenance.from_legacy_info(raw_provenance)
                if legacy
                else Provenance.from_dict(raw_provenance)
            )
        except SaeguardError as error:
            raise SaeguardError(f"{where}: {error}") from None
    latent_tensors = {
        k: v
        for k, v in tensors.items()
        if not k.startswith(("distribution.", "window_rho.")) and k != END_IDS
    }
    _check_latent_tensors(latent_tensors, architecture, where)
    width = int(latent_tensors["encoder"].shape[0])
    if provenance is not None:
        require(
            provenance.model.hidden_size == width,
            f"{where}: tensors read {width}-dim activations but the model record says "
            f"{provenance.model.hidden_size}: the artifact is inconsistent, fit it again",
        )
        require(
            layer < provenance.model.layer_count,
            f"{where}: layer {layer} is outside the recorded model's {provenance.model.layer_count} layers",
        )
        ids = latent_tensors["latent_ids"]
        require(
            bool((ids < provenance.sae.d_sae).all()),
            f"{where}: latent ids exceed the recorded SAE width {provenance.sae.d_sae}",
        )
        _check_selection(provenance, [int(i) for i in ids], where)
    distributions = {}
    for key, value in tensors.items():
        if key.startswith("distribution."):
            require(
                value.dim() == 1 and value.is_floating_point(),
                f"{where}: {key} must be a vector of numbers, got shape {tuple(value.shape)} {value.dtype}",
            )
            require(
                bool(torch.isfinite(value).all()),
                f"{where}: {key} holds NaN or infinite values: fit it again",
            )
            distributions[key.removeprefix("distribution.")] = value.double()
    window_rho, window_scales = _window_calibration(meta, tensors, config, where)
    full_sae = None
    if architecture not in ("standard", "jumprelu") and (need_sae or sae is not None):
        full_sae = _explicit_sae(sae, provenance, where)
    latents = SelectedLatents.from_tensors(
        latent_tensors, architecture=architecture, subtract_decoder_bias=subtract, full_sae=full_sae
    )
    return FitResult(
        latents=latents,
        layer=layer,
        tau=tau,
        clamp_value=clamp_value,
        config=config,
        special_ids=[int(i) for i in special],
        provenance=provenance,
        distributions=distributions,
        window_rho=window_rho,
        window_scales=window_scales,
        sentence_end_ids=_end_ids(tensors, config, where),
    )


def _end_ids(tensors: dict[str, torch.Tensor], config: FitConfig, where: str) -> tuple[int, ...]:
    """The sentence rule's sentence-end token ids (K,), checked; empty for the other rules."""
    if config.gate_rule != "sentence":
        return ()
    value = tensors.get(END_IDS)
    require(
        value is not None
        and value.dim() == 1
        and value.dtype in (torch.int32, torch.int64)
        and bool((value >= 0).all()),
        f"{where}: the sentence gate rule needs {END_IDS} (token ids >= 0) in {TENSORS_FILE}: fit it again",
    )
    assert value is not None
    return tuple(int(i) for i in value.tolist())


def _window_calibration(
    meta: dict, tensors: dict[str, torch.Tensor], config: FitConfig, where: str
) -> tuple[dict[str, torch.Tensor], tuple[float, ...]]:
    """The multiscale or sentence rule's rho per column (role -> (n, S)) and scales (S,),
    checked (the scales must be what the retain rho give); empty for the other rules."""
    rule = gate_rule_for(config)
    if not rule.scaled:
        return {}, ()
    names, count = rule.column_names, rule.columns
    stored = meta.get("scale_columns")  # absent in artifacts written before it was recorded
    require(
        stored is None or stored == _scale_columns(config),
        f"{where}: the config's gate rule reads columns {_scale_columns(config)} but the scales were "
        f"calibrated on {stored}: the config was edited; fit it again",
    )
    raw = meta.get("window_scales")
    scales: list = raw if isinstance(raw, list) else []
    require(
        isinstance(raw, list)
        and len(raw) == count
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in raw
        ),
        f"{where}: window_scales must be {count} positive numbers (one per column {names}), "
        f"got {raw!r}: fit it again",
    )
    window_rho = {}
    for key, value in tensors.items():
        if key.startswith("window_rho."):
            require(
                value.dim() == 2 and value.shape[1] == count and value.is_floating_point(),
                f"{where}: {key} in {TENSORS_FILE} must be an (n, {count}) matrix of numbers "
                f"(one column per {names}), got shape {tuple(value.shape)}",
            )
            require(  # NaN marks a size longer than the input (GateRule.window_rho)
                not bool(torch.isinf(value).any()) and not bool((value < 0).any()),
                f"{where}: {key} holds infinite or negative values: fit it again",
            )
            window_rho[key.removeprefix("window_rho.")] = value.double()
    if "retain" in window_rho:
        expected = window_scales(window_rho["retain"], config.gate_percentile)
        require(
            all(
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(scales, expected, strict=True)
            ),
            f"{where}: window_scales {[round(float(v), 6) for v in scales]} are not what the stored retain "
            f"rho give at gate_percentile {config.gate_percentile:g} "
            f"({[round(v, 6) for v in expected]}): the file was edited; fit it again or use saeguard retune",
        )
    return window_rho, tuple(float(v) for v in scales)


def _scale_columns(config: FitConfig) -> list[str] | None:
    """What each scaled column reads (window sizes, the sentence minimum), None for other rules."""
    rule = gate_rule_for(config)
    if not rule.scaled:
        return None
    names = list(rule.column_names)
    return names[:-1] + [f"sentence (min {rule.min_sentence})"] if rule.kind == "sentence" else names


def _check_selection(provenance: Provenance, ids: list[int], where: str) -> None:
    """The recorded selection must describe the stored latents: same ids, one value per latent."""
    selection = provenance.selection
    require(
        selection.latent_ids == ids,
        f"{where}: provenance.selection.latent_ids {selection.latent_ids[:8]} differ from the stored "
        f"latents {ids[:8]}: the artifact is inconsistent, fit it again",
    )
    for name in (
        "forget_importance",
        "retain_importance",
        "ratio",
        "forget_frequency",
        "retain_frequency",
        "forget_mean_nonzero",
    ):
        values = getattr(selection, name)
        require(
            not values or len(values) == len(ids),
            f"{where}: provenance.selection.{name} has {len(values)} values for {len(ids)} latents: "
            "the artifact is inconsistent, fit it again",
        )


def _integer(meta: dict, key: str, where: str, *, minimum: int) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SaeguardError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite(meta: dict, key: str, where: str) -> float:
    value = meta.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SaeguardError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _check_latent_tensors(tensors: dict[str, torch.Tensor], architecture: str, where: str) -> None:
    expected = (*_LATENT_TENSORS, "threshold") if architecture == "jumprelu" else _LATENT_TENSORS
    missing = [k for k in expected if k not in tensors]
    require(
        not missing, f"{where}: tensors {', '.join(missing)} are missing from {TENSORS_FILE}: fit it again"
    )
    ids, encoder = tensors["latent_ids"], tensors["encoder"]
    require(ids.dim() == 1 and ids.numel() >= 1, f"{where}: latent_ids must be a non-empty vector")
    require(
        not ids.is_floating_point() and bool((ids >= 0).all()),
        f"{where}: latent_ids must be non-negative integers",
    )
    n = int(ids.numel())
    require(
        encoder.dim() == 2 and encoder.shape[1] == n,
        f"{where}: encoder must have shape (d_in, {n}), got {tuple(encoder.shape)}",
    )
    d = int(encoder.shape[0])
    shapes = {"encoder_bias": (n,), "decoder": (n, d), "decoder_bias": (d,), "threshold": (n,)}
    for key, shape in shapes.items():
        if key in expected:
            got = tuple(tensors[key].shape)
            require(
                got == shape, f"{where}: {key} must have shape {shape} to match encoder {(d, n)}, got {got}"
            )
    for key in expected[1:]:
        value = tensors[key]
        require(value.is_floating_point(), f"{where}: {key} must be floating point, got {value.dtype}")
        require(
            bool(torch.isfinite(value).all()), f"{where}: {key} holds NaN or infinite values: fit it again"
        )


def _explicit_sae(sae: Any, provenance: Provenance | None, where: str) -> Any:
    if sae is None:
        hint = ""
        if provenance is not None:
            record = provenance.sae
            pretrained = f"{record.release}:{record.sae_id}" if record.release else None
            hint = f" (it was fitted with {record.path or pretrained or 'an SAE object'})"
        raise SaeguardError(
            f"{where}: a TopK guardrail needs its full SAE{hint}: pass it explicitly "
            "(Guardrail.load(..., sae=PATH) or --sae PATH)"
        )
    loaded = load_sae(sae)
    if provenance is not None:
        found = sae_fingerprint(loaded)
        require(
            found == provenance.sae.fingerprint,
            f"the SAE given for this TopK guardrail differs from the one it was fitted with "
            f"(fingerprint {found} != {provenance.sae.fingerprint}): pass the same SAE",
        )
    return loaded
