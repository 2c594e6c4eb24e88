"""Evaluation: MCQ accuracy on known items, text metrics, the unlearning score, sweeps, reports.

``write_report`` (matplotlib) and ``run_lm_eval`` (lm-eval) are imported lazily so
that importing this package stays cheap and lm-eval stays optional.
"""

from __future__ import annotations

from typing import Any

from saeguard.eval.items import McqItem, load_mcq
from saeguard.eval.known import KnownConfig, KnownSet, known_items
from saeguard.eval.mcq import McqConfig, McqResult, evaluate_mcq, gate_decisions, score_items
from saeguard.eval.score import Outcome, UnlearningScore, pooled_accuracy, unlearning_score
from saeguard.eval.text import TextConfig, TextMetricsResult, text_metrics

_LAZY = {
    "write_report": "saeguard.runs.sweep_report",
    "run_lm_eval": "saeguard.eval.lm_eval_adapter",
    "guarded_lm": "saeguard.eval.lm_eval_adapter",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "KnownConfig",
    "KnownSet",
    "McqConfig",
    "McqItem",
    "McqResult",
    "Outcome",
    "TextConfig",
    "TextMetricsResult",
    "UnlearningScore",
    "evaluate_mcq",
    "gate_decisions",
    "guarded_lm",
    "known_items",
    "load_mcq",
    "pooled_accuracy",
    "run_lm_eval",
    "score_items",
    "text_metrics",
    "unlearning_score",
    "write_report",
]
