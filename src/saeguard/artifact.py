"""Guardrail artifacts: safetensors for tensors, JSON for everything else.

A ReLU/JumpReLU guardrail is self-contained: the selected encoder columns,
biases, thresholds and decoder rows are enough at inference. A TopK guardrail
also needs its SAE, reloaded from the recorded source. Writes go to a
temporary folder that is renamed into place, so a failure never leaves half an
artifact. No pickle anywhere.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from saeguard.errors import SaeguardError, require
from saeguard.sae import SelectedLatents, load_sae

FORMAT_VERSION = 1
TENSORS_FILE = "guardrail.safetensors"
META_FILE = "guardrail.json"


def save_guardrail(guard, directory: Path) -> Path:
    directory = directory.expanduser()
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "saeguard-guardrail",
        "format_version": FORMAT_VERSION,
        "layer": guard.layer,
        "threshold": guard.threshold,
        "clamp": guard.clamp,
        "architecture": guard.latents.architecture,
        "subtract_decoder_bias": guard.latents.subtract_decoder_bias,
        "special_ids": guard.special_ids,
        "config": asdict(guard.config),
        "info": guard.info,
    }
    tensors = {k: v.contiguous() for k, v in guard.latents.tensors().items()}
    tensors.update({f"distribution.{k}": v.contiguous() for k, v in guard.distributions.items()})
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(staging / TENSORS_FILE), metadata={"format": "saeguard-guardrail"})
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        if directory.exists():
            require(
                (directory / META_FILE).is_file() or not any(directory.iterdir()),
                f"{directory} exists and is not a guardrail folder: choose another output path",
            )
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def load_guardrail(directory: Path):
    from saeguard.fit import FitConfig
    from saeguard.guardrail import Guardrail

    directory = directory.expanduser()
    meta_path, tensor_path = directory / META_FILE, directory / TENSORS_FILE
    require(
        meta_path.is_file() and tensor_path.is_file(),
        f"{directory} is not a saeguard guardrail (needs {META_FILE} and {TENSORS_FILE}): "
        "create one with `saeguard fit`",
    )
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensor_path))
    except (OSError, ValueError) as error:
        raise SaeguardError(f"guardrail in {directory} is unreadable ({error}): fit it again") from None
    require(
        meta.get("format_version", 0) <= FORMAT_VERSION,
        f"guardrail format {meta.get('format_version')} is newer than this saeguard: upgrade saeguard",
    )
    full_sae = None
    if meta["architecture"] not in ("standard", "jumprelu"):
        full_sae = load_sae(_sae_spec(meta["info"].get("sae", {})))
    latents = SelectedLatents.from_tensors(
        {k: v for k, v in tensors.items() if not k.startswith("distribution.")},
        architecture=meta["architecture"],
        subtract_decoder_bias=meta["subtract_decoder_bias"],
        full_sae=full_sae,
    )
    distributions = {
        k.removeprefix("distribution."): v for k, v in tensors.items() if k.startswith("distribution.")
    }
    return Guardrail(
        latents=latents,
        layer=int(meta["layer"]),
        threshold=float(meta["threshold"]),
        clamp=float(meta["clamp"]),
        config=FitConfig(**meta["config"]),
        special_ids=[int(i) for i in meta["special_ids"]],
        info=meta["info"],
        distributions=distributions,
    )


def _sae_spec(source: dict):
    if source.get("kind") == "disk":
        return source["path"]
    if source.get("kind") == "pretrained":
        return (source["release"], source["sae_id"])
    raise SaeguardError(
        "this TopK guardrail needs its SAE but the artifact does not say where it came from: "
        "fit it from an SAE folder or release"
    )
