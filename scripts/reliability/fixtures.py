"""The probe's workspace: tiny models, SAEs, corpora, MCQ files and fitted guards in one folder.

Built once per run from ``saeguard.testing``'s builders (no hub): models with
``save_pretrained``, SAEs with SAELens ``save_model``. In-process cases use the
objects, CLI cases the folders.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saeguard import Guardrail
from saeguard.io import cache_dir
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_gpt2,
    tiny_llama,
    tiny_qwen2,
)

#: Small settings so each fit takes seconds on two busy cores.
FAST: dict[str, Any] = {
    "layer": 1,
    "n_features": 2,
    "ratio_percentile": 90,
    "seq_len": 32,
    "calibration_size": 48,
}
FAST_CLI = ["--layer", "1", "-n", "2", "--ratio-percentile", "90", "--seq-len", "32"]
FAST_CLI += ["--calibration-size", "48", "--device", "cpu"]


@dataclass
class Workspace:
    """Everything the cases read; ``root`` holds the on-disk copies."""

    root: Path
    model: Any
    tok: Any
    sae: Any
    guard: Guardrail
    forget: list[str]
    retain: list[str]
    gpt2: Any
    extra: dict[str, Any] = field(default_factory=dict)
    issued: set[Path] = field(default_factory=set)  # handed out by fresh(): cases are built before they run

    def path(self, name: str) -> Path:
        return self.root / name

    def fresh(self, name: str) -> Path:
        """A path under ``root/out`` that does not exist yet and was not handed out before."""
        out = self.root / "out"
        out.mkdir(exist_ok=True)
        index = 0
        while (out / f"{name}-{index}").exists() or out / f"{name}-{index}" in self.issued:
            index += 1
        self.issued.add(out / f"{name}-{index}")
        return out / f"{name}-{index}"


def mcq_rows(n: int = 6) -> list[dict[str, Any]]:
    """Question rows in the ``.jsonl`` MCQ format (question, choices, answer)."""
    rows = []
    for i in range(n):
        pool = FORGET_WORDS if i % 2 == 0 else RETAIN_WORDS
        rows.append(
            {
                "id": f"q{i}",
                "question": f"what is the {pool[i % len(pool)]} and the {pool[(i + 3) % len(pool)]}",
                "choices": [pool[(i + k) % len(pool)] for k in range(4)],
                "answer": i % 4,
            }
        )
    return rows


CORPUS_FILES: dict[str, bytes] = {
    "empty.txt": b"",
    "blank.txt": b"\n\n   \n\t\n",
    "binary.txt": bytes(range(256)) * 40,
    "latin1.txt": "caf\xe9 cell gene".encode("latin-1"),
    "bad.jsonl": b'{"text": "cell gene"}\n{not json\n',
    "nofield.jsonl": b'{"body": "cell gene"}\n',
    "number.jsonl": b'{"text": 5}\n{"text": "cell gene virus"}\n',
    "list.jsonl": b'["cell", "gene"]\n',
    "null.jsonl": b"null\n",
    "pickle.txt": pickle.dumps({"a": 1}),
    "emoji.txt": ("\U0001f9ec\U0001f9a0 \u200b\u202e zalgo c\u0334e\u0335l\u0336l " * 50).encode(),
    "one-token.txt": b"cell\n\ngene\n\nvirus",
}
"""Malformed corpus files (under ``corpora/``), by name."""


def build(root: Path) -> Workspace:
    """Write the workspace under ``root`` and fit the reference guards (about a minute on 2 cores)."""
    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    offline = cache_dir() / "data"  # the offline corpora, read (never written) by built-in names
    if offline.is_dir():
        (root / "cache").mkdir()
        (root / "cache" / "data").symlink_to(offline)
    tok = make_tokenizer()
    model, sae = plant_forget_direction(tiny_llama(max_positions=1024), random_sae("jumprelu"))
    model.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    gpt2 = tiny_gpt2(max_positions=256)
    others = {  # state cases: another model of the same width, another width, too few layers
        "gpt2": gpt2,
        "qwen2": tiny_qwen2(),
        "wide": tiny_llama(hidden_size=48),
        "shallow": tiny_llama(layers=1),
    }
    for name, other in others.items():
        other.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    sae.save_model(root / "sae")
    topk = random_sae("topk")
    topk.save_model(root / "topk_sae")
    forget, retain = corpus(FORGET_WORDS, 24, 40, 1), corpus(RETAIN_WORDS, 64, 40, 2)
    (root / "forget.txt").write_text("\n\n".join(forget), encoding="utf-8")
    (root / "retain.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in retain), encoding="utf-8")
    (root / "corpora").mkdir()
    for name, data in CORPUS_FILES.items():
        (root / "corpora" / name).write_bytes(data)
    (root / "mcq.jsonl").write_text("\n".join(json.dumps(r) for r in mcq_rows()), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guard = Guardrail.fit(model, tok, sae, forget=forget, retain=retain, show_progress=False, **FAST)
        guard.save(root / "guard")
        topk_guard = Guardrail.fit(
            model, tok, root / "topk_sae", forget=forget, retain=retain, show_progress=False, **FAST
        )
        topk_guard.save(root / "topk_guard")
        gpt2_guard = Guardrail.fit(gpt2, tok, sae, forget=forget, retain=retain, show_progress=False, **FAST)
        gpt2_guard.save(root / "gpt2_guard")
    extra = {
        "topk_guard": topk_guard,
        "gpt2_guard": gpt2_guard,
        **{k: v for k, v in others.items() if k != "gpt2"},
    }
    return Workspace(root, model, tok, sae, guard, forget, retain, gpt2, extra)
