"""Shared helpers for evaluation: fingerprints, the cache folder, atomic JSON writes.

Every evaluation result records which model, tokenizer and data produced it, so
cached results (known sets, statistics, sweep records) are never reused for a
different setup by accident.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from saeguard.errors import SaeguardError
from saeguard.fingerprint import tensors_fingerprint, text_fingerprint

if TYPE_CHECKING:
    from saeguard.guardrail import Guardrail


T = TypeVar("T")


def model_identity(model: nn.Module) -> dict[str, str]:
    """Name and a fingerprint of every weight (not only those up to the hook layer)."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "unknown"))
    return {"name": name, "fingerprint": tensors_fingerprint(model.state_dict())}


def tokenizer_fingerprint(tokenizer) -> str:
    """Vocabulary size, special tokens and chat template: what changes a prompt's ids."""
    parts = [
        str(len(tokenizer)),
        str(getattr(tokenizer, "name_or_path", "")),
        str(getattr(tokenizer, "chat_template", "") or ""),
        str(sorted(getattr(tokenizer, "all_special_ids", []) or [])),
        json.dumps(tokenizer("The quick brown fox. A B C D")["input_ids"]),
    ]
    return text_fingerprint(parts)


def json_fingerprint(value: Any) -> str:
    return text_fingerprint([json.dumps(to_jsonable(value), sort_keys=True)])


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` or ``$SAEGUARD_CACHE`` (else ~/.cache/saeguard), subfolder eval/."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from saeguard.models import cache_dir as saeguard_cache

    return saeguard_cache() / "eval"


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tensors, paths and tuples as plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write via a temporary file in the same folder and ``os.replace`` it into place."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, value: Any) -> Path:
    return write_text_atomic(path, json.dumps(to_jsonable(value), indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    lines = [json.dumps(to_jsonable(row), sort_keys=False) for row in rows]
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def guard_identity(guard: Guardrail | None) -> dict[str, Any] | None:
    """The parts of a guardrail that decide its behaviour, for result records."""
    if guard is None:
        return None
    return {
        "layer": int(guard.layer),
        "latent_ids": [int(i) for i in guard.latents.ids],
        "tau": float(guard.threshold),
        "clamp": float(guard.clamp),
        "architecture": guard.latents.architecture,
    }


def read_jsonl_records(path: str | Path, parse: Callable[[dict], T], what: str) -> list[T]:
    """Records of a resumable JSONL file; a torn last line (interrupted write) is ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(parse(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError):
            if number == len(lines):
                break
            raise SaeguardError(f"{path}:{number} is not a {what} record: fix or delete the file") from None
    return records
