"""A sentence-segment gate statistic tried on validation text (issue 13, third pass).

    .venv/bin/python scripts/research/segment_rule.py RULE_CHOICE_DIR

A short question is usually a sentence of its own: the largest mean evidence over *sentences*
(runs of counted tokens ended by a token holding ``.``, ``?``, ``!`` or a newline, or by an
uncounted token such as a turn boundary) is not diluted by benign sentences around it, however
short the question. The columns are computed by the shipped rule (``GateRule("sentence")``; a
sentence shorter than the minimum is read over the tokens before it). This script recomputes
the validation sets of ``gate_rule_choice.py`` and
the demo's retain calibration inputs with their token ids (the demo guard's latents and
statistic), and prints the firing rates of the segment rule alone and as one more scaled
column of the multiscale rule, with tau pooled at p_dyn as the fit computes it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeguard.config import preset
from saeguard.core.calibration import calibration_prompts, gate_evidence, prompt_batches
from saeguard.core.gate import GateRule
from saeguard.core.guardrail import Guardrail
from saeguard.demo import DemoConfig, retain_documents
from saeguard.hf.models import load_default_model
from saeguard.progress import progress_bar

sys.path.insert(0, str(Path(__file__).parent))
from gate_rule_choice import rates_line, validation_sets  # noqa: E402

Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # evidence (T,), counted (T,), boundary (T,)


def rows_of(
    model: Any, tokenizer: Any, guard: Guardrail, inputs: list[Any], label: str, ends: torch.Tensor
) -> list[Row]:
    batches = list(prompt_batches(inputs, tokenizer, 4))
    rows: list[Row] = []
    with progress_bar(label, total=len(inputs), unit="inputs") as advance:
        for batch, (values, counted) in zip(
            batches,
            gate_evidence(model, guard.layer, guard.latents, batches, statistic=guard.statistic),
            strict=True,
        ):
            boundary = torch.isin(batch.input_ids, ends)
            for i in range(values.shape[0]):
                rows.append((values[i].cpu(), counted[i].cpu(), boundary[i]))
            advance(values.shape[0])
    return rows


def columns(rows: list[Row], minimum: int, window: GateRule) -> torch.Tensor:
    """(n, 3) unscaled columns of the shipped sentence rule (``core/gate_rule.py``): windows 8
    and 16, then the largest sentence mean (shorter sentences read over the last ``minimum``)."""
    rule = replace(window, kind="sentence", min_sentence=minimum)
    return torch.cat([rule.window_rho(e[None], c[None], b[None]) for e, c, b in rows])


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/gate-rule-choice")
    model, tokenizer = load_default_model()
    guard = Guardrail.load(out / "guards" / "window16", model)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    texts = [tokenizer.convert_tokens_to_string([t]) for t in vocab]
    ends = torch.tensor([i for i, t in enumerate(texts) if any(ch in t for ch in ".?!\n")])
    stored = out / "segment_rows.pt"
    if stored.is_file():
        data = torch.load(stored)
    else:
        config = replace(preset("demo"), calibration_long_tokens=2000, calibration_answer_tokens=0)
        calibration = calibration_prompts(
            retain_documents(DemoConfig(), "train"), tokenizer, config.prompt_shape()
        )
        data = {"calibration": rows_of(model, tokenizer, guard, calibration, "calibration", ends)}
        for label, inputs in validation_sets(tokenizer).items():
            data[label] = rows_of(model, tokenizer, guard, inputs, label, ends)
        torch.save(data, stored)
    multiscale = GateRule("multiscale", window=16, min_window=8)
    for minimum in (1, 3, 5):
        cal = columns(data["calibration"], minimum, multiscale)
        val = {k: columns(v, minimum, multiscale) for k, v in data.items() if k != "calibration"}
        for name, picked in (("sentence only", [-1]), ("sentence rule (windows 16/8 + sentence)", [0, 1, 2])):
            for percentile in (80.0, 85.0, 90.0):
                chosen = cal[:, picked]
                scale = []
                for column in chosen.numpy().T:
                    column = column[~np.isnan(column)]
                    level = np.percentile(column, percentile)
                    scale.append(level if level > 0 else column[column > 0].min())
                divisor = torch.tensor(scale, dtype=torch.float64)

                def rho(
                    x: torch.Tensor, picked: list[int] = picked, divisor: torch.Tensor = divisor
                ) -> np.ndarray:
                    return (x[:, picked] / divisor).nan_to_num(0.0).amax(-1).numpy()

                tau = np.percentile(rho(cal), percentile)
                rates = {k: float((rho(x) > tau).mean()) for k, x in val.items()}
                print(rates_line(f"{name} min{minimum} p{percentile:g}", rates))


if __name__ == "__main__":
    main()
