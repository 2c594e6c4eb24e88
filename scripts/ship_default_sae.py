"""Copy a trained default SAE into the package as fp16 (issue 17 §1; docs/default-sae.md).

    .venv/bin/python scripts/ship_default_sae.py [TRAINED_DIR]

TRAINED_DIR defaults to where ``ensure_default_sae`` trains it (``saeguard data status`` shows
the cache). The weights are stored in float16 (half the size; ``load_sae`` reads them back in the
dtype it is asked for, float32 by default) and ``cfg.json`` keeps the training provenance and
metrics, plus the command that reproduces the SAE.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saeguard.defaults import DEFAULT_K, DEFAULT_WIDTH, SHIPPED_SAE, trained_sae_dir
from saeguard.io import staged_folder

RECIPE = "saeguard train-sae --layer 6 --width 4096 --k 32 --tokens 800000 --batch-size 1024 --seed 0"


def ship(trained: Path, target: Path) -> Path:
    """Write ``trained`` (a SAELens folder) to ``target`` with float16 weights; atomic."""
    weights = load_file(str(trained / "sae_weights.safetensors"))
    cfg = json.loads((trained / "cfg.json").read_text())
    cfg.setdefault("metadata", {}).setdefault("saeguard", {})["shipped"] = {
        "weights_dtype": "float16",
        "reproduce": RECIPE,
    }
    with staged_folder(target, replace=lambda old: (old / "cfg.json").is_file()) as staging:
        half = {name: t.to(torch.float16).contiguous() for name, t in weights.items()}
        save_file(half, str(staging / "sae_weights.safetensors"))
        (staging / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return target


def main() -> None:
    layer = 6
    trained = Path(sys.argv[1]) if len(sys.argv) > 1 else trained_sae_dir(layer)
    target = SHIPPED_SAE / f"layer{layer}-w{DEFAULT_WIDTH}-k{DEFAULT_K}"
    ship(trained, target)
    size = (target / "sae_weights.safetensors").stat().st_size / 2**20
    print(f"shipped {trained} -> {target} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
