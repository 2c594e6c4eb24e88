"""Choosing the default hook layer and SAE by measurement (issue: default SAE).

For each candidate SAE: fit the demo's guardrail, measure the gate's held-out
ROC on prompt-shaped forget vs other text, and the demo trade-off (known-item
accuracy before/after). Writes a JSON and a markdown table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from gate_quality import gate_quality  # scripts/research, on PYTHONPATH

from saeguard.demo import DemoConfig, fit_demo_guard, mcq_tradeoff, retain_documents


def evaluate_candidates(
    model, tokenizer, sae_dirs: list[Path], config: DemoConfig, output: Path, *, show_progress: bool = True
) -> list[dict[str, Any]]:
    from saeguard.data.corpora import load_corpus

    positives = load_corpus(config.forget, "heldout")
    negatives = [d for d in retain_documents(config, "heldout") if d not in set(positives)]
    rows = []
    for sae_dir in sae_dirs:
        cfg_json = json.loads((sae_dir / "cfg.json").read_text())
        provenance = cfg_json.get("metadata", {}).get("saeguard", {})
        layer = int(provenance.get("layer", config.layer))
        candidate = replace(config, layer=layer, sae=str(sae_dir))
        guard = fit_demo_guard(model, tokenizer, str(sae_dir), candidate, show_progress=show_progress)
        quality = gate_quality(model, tokenizer, guard, positives, negatives)
        accuracy = mcq_tradeoff(model, tokenizer, guard, candidate, show_progress=show_progress)
        rows.append(
            {
                "sae": str(sae_dir),
                "layer": layer,
                "width": int(cfg_json["d_sae"]),
                "sae_metrics": provenance.get("metrics", {}),
                "gate": asdict(quality),
                "accuracy": accuracy,
                "tau": guard.tau,
                "clamp": guard.clamp_value,
            }
        )
        _write(rows, output)
    return rows


def _pair(accuracy: dict[str, Any], group: str) -> str:
    base, guarded = accuracy[group]["base_accuracy"], accuracy[group]["guarded_accuracy"]
    return f"{100 * base:.0f}% → {100 * guarded:.0f}%"


def _write(rows: list[dict[str, Any]], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "candidates.json").write_text(json.dumps(rows, indent=2))
    header = [
        "layer",
        "width",
        "FVU",
        "dead",
        "LM loss +",
        "gate AUC",
        "TPR@5%FPR",
        "forget",
        "retain",
        "near",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    nan = float("nan")
    for row in rows:
        m, g, a = row["sae_metrics"], row["gate"], row["accuracy"]
        cells = [
            str(row["layer"]),
            str(row["width"]),
            f"{m.get('fraction_variance_unexplained', nan):.3f}",
            f"{100 * m.get('dead_fraction', nan):.1f}%",
            f"{m.get('lm_loss_increase', nan):.3f}",
            f"{g['auc']:.3f}",
            f"{g['tpr_at_fpr05']:.2f}",
            *(_pair(a, group) for group in ("forget", "retain", "near")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    (output / "candidates.md").write_text("\n".join(lines) + "\n")
