"""Save and load an unlearned model: safetensors weights (or a peft adapter) plus one JSON record.

No pickle: weights go through ``save_pretrained`` (safetensors), and how the
model was made (method, config, training record) through ``unlearning.json``.
The folder is written through :func:`saeguard.io.staged_folder`, so a crash
never leaves half an artifact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from saeguard.baselines.registry import MethodConfig, get
from saeguard.baselines.training import TrainResult, is_lora
from saeguard.errors import SaeguardError, require
from saeguard.io import staged_folder

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

__all__ = ["RECORD_NAME", "UnlearnedRecord", "config_from_dict", "load_unlearned", "save_unlearned"]

RECORD_NAME = "unlearning.json"
FORMAT_VERSION = 1
SavedFormat = Literal["full", "lora"]
"""``full``: the whole model as safetensors; ``lora``: a peft adapter for a base model."""


@dataclass
class UnlearnedRecord:
    """What ``load_unlearned`` returns beside the model: how it was made."""

    method: str
    config: MethodConfig
    result: TrainResult
    format: SavedFormat


def config_from_dict(method: str, data: dict[str, Any]) -> MethodConfig:
    """The registered config of ``method`` rebuilt from its saved ``asdict`` form.

    Raises:
        SaeguardError: unknown method, or settings of another saeguard version.
    """
    return get(method).config.from_dict(data)


def _is_ours(path: Path) -> bool:
    return (path / RECORD_NAME).is_file()


def save_unlearned(
    model: nn.Module,
    path: str | Path,
    result: TrainResult,
    config: MethodConfig,
    *,
    tokenizer: Any = None,
) -> Path:
    """Write weights (or the LoRA adapter) as safetensors plus ``unlearning.json``; return the folder.

    An existing folder is replaced only if it is empty or a previous ``save_unlearned`` output.

    Raises:
        SaeguardError: ``path`` exists and is something else.
    """
    path = Path(path).expanduser()
    if path.exists():
        require(
            path.is_dir() and (not any(path.iterdir()) or _is_ours(path)),
            f"{path} exists and is not a saved unlearned model: choose a new output path",
        )
    record = {
        "saeguard_unlearned": FORMAT_VERSION,
        "method": result.method,
        "format": "lora" if is_lora(model) else "full",
        "config": asdict(config),
        "result": asdict(result),
    }
    with staged_folder(path, replace=_is_ours) as staging:
        saved = cast("PreTrainedModel | PeftModel", model)  # what unlearn trains
        saved.save_pretrained(staging)  # type: ignore[arg-type]  # peft annotates str; it takes a Path
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / RECORD_NAME).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return path


def load_unlearned(
    path: str | Path,
    base_model: nn.Module | str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, UnlearnedRecord]:
    """Load what ``save_unlearned`` wrote; a LoRA adapter needs ``base_model`` (object or path).

    Raises:
        SaeguardError: no ``unlearning.json`` in ``path``, a LoRA adapter with no base model,
            or a record of an unknown method or another saeguard version.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path).expanduser()
    record_file = path / RECORD_NAME
    require(
        record_file.is_file(),
        f"{path} has no {RECORD_NAME}: point at a folder written by save_unlearned",
    )
    data = json.loads(record_file.read_text(encoding="utf-8"))
    method = data["method"]
    record = UnlearnedRecord(
        method=method,
        config=config_from_dict(method, data["config"]),
        result=TrainResult(**data["result"]),
        format=data["format"],
    )
    if record.format == "full":
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), record
    from peft import PeftModel

    if base_model is None:
        adapter = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base_model = adapter.get("base_model_name_or_path") or None
    if base_model is None:
        raise SaeguardError(f"{path} holds a LoRA adapter: pass base_model= (the model it was trained on)")
    if not isinstance(base_model, nn.Module):
        base_model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return PeftModel.from_pretrained(base_model, path), record
