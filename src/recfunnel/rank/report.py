"""The rank stage's report: pointwise CTR metrics of a score on rated pairs.

AUC and GAUC measure any score's order; LogLoss, the expected calibration error (ECE) and the
reliability bins only mean something for a head trained as a probability of the label, here
the rank model's P(liked | rated). The funnel report applies this to the recall, pre-rank and
rank scores of the same rated pairs, so the stages compare.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recfunnel.evaluation import metrics

CALIBRATION_BINS = 10


def pointwise_scores(
    labels: np.ndarray, rows: np.ndarray, logits: np.ndarray, *, calibrated: bool
) -> dict[str, Any]:
    """AUC, GAUC (per request row, weighted by its pairs) and, when `calibrated`, LogLoss,
    ECE and the reliability bins of sigmoid(`logits`) (n,) against `labels` (n,) in {0, 1};
    those are None otherwise."""
    out: dict[str, Any] = {
        "auc": metrics.auc(labels, logits),
        "gauc": metrics.gauc(rows, labels, logits),
        "logloss": None,
        "ece": None,
        "reliability": None,
    }
    if calibrated:
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        out["logloss"] = metrics.log_loss(labels, probs)
        out["ece"] = metrics.expected_calibration_error(labels, probs, CALIBRATION_BINS)
        bins = metrics.calibration_bins(labels, probs, CALIBRATION_BINS)
        # JSON-able lists; an empty bin's nan means are written as None.
        out["reliability"] = {
            key: [None if v != v else float(v) for v in values] for key, values in bins.items()
        }
    return out
