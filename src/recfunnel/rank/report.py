"""The rank stage's report: pointwise CTR metrics of a score on rated pairs.

AUC and GAUC measure any score's order; LogLoss only means something for a head trained as a
probability of the label, here the rank model's P(liked | rated). The funnel report applies
this to the recall, pre-rank and rank scores of the same rated pairs, so the stages compare.
"""

from __future__ import annotations

import numpy as np

from recfunnel.evaluation import metrics


def pointwise_scores(
    labels: np.ndarray, rows: np.ndarray, logits: np.ndarray, *, calibrated: bool
) -> dict[str, float | None]:
    """AUC, GAUC (per request row, weighted by its pairs) and, when `calibrated`, LogLoss
    of `logits` (n,) against `labels` (n,) in {0, 1}; LogLoss is None otherwise."""
    out: dict[str, float | None] = {
        "auc": metrics.auc(labels, logits),
        "gauc": metrics.gauc(rows, labels, logits),
        "logloss": None,
    }
    if calibrated:
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        out["logloss"] = metrics.log_loss(labels, probs)
    return out
