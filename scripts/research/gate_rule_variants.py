"""Two gate variants tried on cached evidence (issue 13, third pass), validation text only.

    .venv/bin/python scripts/research/gate_rule_variants.py RULE_CHOICE_DIR

Reads ``evidence.pt`` (validation sets, from ``gate_rule_choice.py``) and
``calibration_evidence.pt`` (the demo's retain calibration inputs, from ``shape_calibration.py``)
and prints, per variant and p_dyn, the firing rate on every validation set:

- ``hybrid``: the multiscale rule with the whole-input mean as one more scaled column;
- ``length-levels``: rho divided by the retain level of inputs of the same length (log2
  buckets of counted tokens, p-th percentile per bucket, non-decreasing), then one tau: a
  length-dependent threshold, as scan statistics over inputs of different lengths need.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from saeguard.core.gate import GateRule

sys.path.insert(0, str(Path(__file__).parent))
from gate_rule_choice import rates_line  # noqa: E402

EDGES = [0, 8, 16, 32, 64, 128, 256, 512, 1024, 10**9]
RULES = {
    "mean": GateRule("mean"),
    "window16": GateRule("window", window=16),
    "multiscale16/4": GateRule("multiscale", window=16, min_window=4),
    "multiscale16/8": GateRule("multiscale", window=16, min_window=8),
}


def columns(rows: list, rule: GateRule, with_mean: bool) -> tuple[torch.Tensor, np.ndarray]:
    """(n, S) unscaled values (window sizes, then the mean when asked) and (n,) counted tokens."""
    values, lengths = [], []
    for e, c in rows:
        parts = [rule.window_rho(e[None], c[None])[0]] if rule.kind == "multiscale" else []
        if with_mean or rule.kind != "multiscale":
            base = GateRule("mean") if with_mean else rule
            parts.append(base.rho(e[None], c[None]))
        values.append(torch.cat(parts))
        lengths.append(int(c.sum()))
    return torch.stack(values), np.array(lengths)


def levels(x: np.ndarray, percentile: float) -> torch.Tensor:
    out = []
    for column in x.T:
        column = column[~np.isnan(column)]
        level = np.percentile(column, percentile)
        out.append(level if level > 0 else column[column > 0].min())
    return torch.tensor(out, dtype=torch.float64)


def length_levels(x: np.ndarray, n: np.ndarray, percentile: float, minimum: int = 30) -> np.ndarray:
    bucket = np.searchsorted(EDGES, n, side="right") - 1
    level = np.full(len(EDGES) - 1, np.nan)
    for i in range(len(level)):
        if (bucket == i).sum() >= minimum:
            level[i] = np.percentile(x[bucket == i], percentile)
    known = [i for i in range(len(level)) if not np.isnan(level[i])]
    for i in range(len(level)):
        if np.isnan(level[i]):
            below = [k for k in known if k < i]
            level[i] = level[below[-1]] if below else level[known[0]]
    level = np.maximum.accumulate(level)
    return np.where(level > 0, level, x[x > 0].min())


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/gate-rule-choice")
    calibration = torch.load(out / "calibration_evidence.pt")
    validation = torch.load(out / "evidence.pt")
    for variant in ("hybrid", "length-levels"):
        for name, rule in RULES.items():
            if variant == "hybrid" and rule.kind != "multiscale":
                continue
            with_mean = variant == "hybrid"
            cal, cal_n = columns(calibration, rule, with_mean)
            val = {k: columns(v, rule, with_mean) for k, v in validation.items()}
            for percentile in (80.0, 85.0, 90.0):
                scale = levels(cal.numpy(), percentile)

                def combined(x: torch.Tensor, scale: torch.Tensor = scale) -> np.ndarray:
                    return (x / scale).nan_to_num(0.0).amax(-1).numpy()

                cal_rho = combined(cal)
                if variant == "length-levels":
                    by_length = length_levels(cal_rho, cal_n, percentile)

                    def norm(x: np.ndarray, n: np.ndarray, by_length: np.ndarray = by_length) -> np.ndarray:
                        return x / by_length[np.searchsorted(EDGES, n, side="right") - 1]
                else:

                    def norm(x: np.ndarray, n: np.ndarray) -> np.ndarray:
                        return x

                tau = np.percentile(norm(cal_rho, cal_n), percentile)
                rates = {k: float((norm(combined(x), n) > tau).mean()) for k, (x, n) in val.items()}
                print(rates_line(f"{variant} {name} p{percentile:g}", rates))


if __name__ == "__main__":
    main()
