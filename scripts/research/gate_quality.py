"""How well the gate separates forget-topic inputs from everything else.

The gate decides everything (docs/method.md §9): when it fires answers are destroyed,
when it does not they are untouched. So the first number to look at for a
layer/SAE choice is rho's held-out ROC: AUC and TPR at a fixed FPR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saeguard.core.calibration import guard_prompt_rho


@dataclass
class GateQuality:
    auc: float
    tpr_at_fpr05: float
    tpr_at_tau: float
    fpr_at_tau: float
    positives: int
    negatives: int


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[: len(positive)].sum()
    return float((rank_sum - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float) -> float:
    """TPR with the threshold at the (1 - fpr) quantile of negatives (strictly greater flags)."""
    cut = float(np.quantile(negative, 1 - fpr))
    return float((positive > cut).mean())


def gate_quality(
    model,
    tokenizer,
    guard,
    positive_docs: list[str],
    negative_docs: list[str],
    *,
    limit: int = 400,
    seed: int = 1,
) -> GateQuality:
    """ROC of rho on held-out prompt-shaped pieces of forget vs other text."""
    shape = guard.config.prompt_shape(limit=limit, seed=seed)

    def rho(docs: list[str]) -> np.ndarray:
        return guard_prompt_rho(model, tokenizer, guard, docs, shape, show_progress=False).numpy()

    pos, neg = rho(positive_docs), rho(negative_docs)
    return GateQuality(
        auc=roc_auc(pos, neg),
        tpr_at_fpr05=tpr_at_fpr(pos, neg, 0.05),
        tpr_at_tau=float((pos > guard.threshold).mean()),
        fpr_at_tau=float((neg > guard.threshold).mean()),
        positives=len(pos),
        negatives=len(neg),
    )
