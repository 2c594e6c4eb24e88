"""Pooled vs per-shape tau (issue 13): does calibrating each input shape separately hold the
false-positive rate under long benign context? Validation text only.

    .venv/bin/python scripts/research/shape_calibration.py RULE_CHOICE_DIR

Reads the guards and the validation evidence ``gate_rule_choice.py`` left in RULE_CHOICE_DIR,
computes the evidence of the demo's retain calibration inputs once (the candidates share
their latents and statistic), labelled by shape (prompt pieces, long runs, multi-turn), and
for each candidate rule and p_dyn compares tau = the p-th percentile of all calibration rho
(pooled: what the fit does) with tau = the largest per-shape p-th percentile (every shape's
benign rate <= 100 - p on the calibration inputs). Writes ``shape_calibration.md``/``.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from saeguard.config import preset
from saeguard.core.calibration import calibration_prompts, prompt_texts, scaled_rho, window_scales
from saeguard.core.gate import GateRule
from saeguard.core.guardrail import Guardrail
from saeguard.demo import DemoConfig, retain_documents
from saeguard.hf.models import load_default_model
from saeguard.io import write_json

sys.path.insert(0, str(Path(__file__).parent))
from gate_rule_choice import PERCENTILES, Evidence, evidence  # noqa: E402


def rule_values(ev: Evidence, rule: GateRule, per_window: bool) -> torch.Tensor:
    rows = [(rule.window_rho if per_window else rule.rho)(e[None], c[None])[0] for e, c in ev.rows]
    return torch.stack(rows) if per_window else torch.tensor([float(r) for r in rows], dtype=torch.float64)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/gate-rule-choice")
    model, tokenizer = load_default_model()
    config = replace(preset("demo"), calibration_long_tokens=2000)
    docs = retain_documents(DemoConfig(), "train")
    shape = config.prompt_shape()
    inputs = calibration_prompts(docs, tokenizer, shape)
    pieces = len(
        prompt_texts(
            docs,
            tokenizer,
            min_tokens=shape.min_tokens,
            max_tokens=shape.max_tokens,
            limit=shape.limit,
            seed=shape.seed,
        )
    )
    extra = (len(inputs) - pieces) // 2
    labels = ["pieces"] * pieces + ["long"] * extra + ["turns"] * (len(inputs) - pieces - extra)
    guards = {p.name: Guardrail.load(p, model) for p in sorted((out / "guards").iterdir())}
    first = next(iter(guards.values()))
    stored = out / "calibration_evidence.pt"
    if stored.is_file():
        cal = Evidence(torch.load(stored))
    else:
        cal = evidence(model, tokenizer, first, inputs, "retain calibration")
        torch.save(cal.rows, stored)
    validation = {k: Evidence(v) for k, v in torch.load(out / "evidence.pt").items()}
    shapes = sorted(set(labels))
    rows = []
    for name, fitted in guards.items():
        rule = replace(fitted.rule, scales=())
        multiscale = rule.kind == "multiscale"
        cal_values = rule_values(cal, rule, multiscale)
        val_values = {k: rule_values(v, rule, multiscale) for k, v in validation.items()}
        for percentile in PERCENTILES:
            if multiscale:
                scales = window_scales(cal_values, percentile)
                cal_rho = scaled_rho(cal_values, scales)
                val_rho = {k: scaled_rho(v, scales) for k, v in val_values.items()}
            else:
                cal_rho, val_rho = cal_values, val_values
            pooled = float(np.percentile(cal_rho.numpy(), percentile))
            by_shape = {
                s: float(
                    np.percentile(
                        cal_rho[[i for i, lab in enumerate(labels) if lab == s]].numpy(), percentile
                    )
                )
                for s in shapes
            }
            for mode, tau in (("pooled", pooled), ("per-shape", max(by_shape.values()))):
                rates = {k: float((v > tau).double().mean()) for k, v in val_rho.items()}
                row = {
                    "candidate": f"{name} p{percentile:g} {mode}",
                    "tau": tau,
                    "shape_levels": by_shape,
                    **rates,
                    "worst_tpr": min(v for k, v in rates.items() if k.startswith("forget")),
                    "worst_fpr": max(v for k, v in rates.items() if k.startswith("benign")),
                }
                rows.append(row)
                print(json.dumps(row))
    write_json(out / "shape_calibration.json", {"rows": rows})
    keys = list(validation)
    lines = ["| candidate | tau | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['tau']:.3g} | " + " | ".join(f"{100 * r[k]:.0f}%" for k in keys) + " |"
        )
    (out / "shape_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
