"""Shrinking a data-starved learned stage towards the order of the list it was handed.

A learned stage after recall trains on a few hundred replayed requests; its own order can be
worse than the incoming one (on ML-1M pre-rank's kept 100 held fewer liked movies than
recall's fused list cut to 100). The stage's list is therefore sorted by

    key = logit / scale + w * prior(position),    prior(p) = -log(1 + p)

over the incoming list's 0-based positions p, with `scale` the spread of the stage's logits
on its training candidates (so logit / scale has about unit spread). w = 0 is the learned
order (exactly: the logits themselves, not divided, so not even a tie moves), w = inf the
incoming order (the stage becomes a pass-through cut), w chosen on a holdout in between.

Why the position and not the incoming score: the order a stage is handed is not any one
score (recall's list is a reciprocal-rank fusion of channels; scores["recall"] is only the
two-tower logit), while the position exists for every list, in the batch path and the
one-request kernels alike, and is free of any score's scale. Why -log(1 + p): the log of a
uniform rank has a spread of about 1 over a list, the spread of the scaled logit, so w reads
as "how much the incoming order is trusted relative to the model"; and like a DCG discount
it separates the top positions more than the tail's.

Shared by the stages (and their kernels) that blend; the functions are elementwise over the
last axis, so a (B, N) batch and one (N,) row get bit-identical keys.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from recfunnel.evaluation.metrics import clearly_better

# The weights tried when a stage chooses w on its holdout: 0 (the learned order) to inf
# (the incoming order), about doubling in between.
GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, math.inf)


@functools.lru_cache(maxsize=16)
def position_prior(n: int) -> np.ndarray:
    """(n,) float64: -log(1 + p) for the positions p = 0..n-1 of the incoming list. Made
    once per length (the serving kernels ask for it on every request) and read-only."""
    prior = -np.log1p(np.arange(n, dtype=np.float64))
    prior.flags.writeable = False
    return prior


def blend_key(logits: np.ndarray, weight: float, scale: float) -> np.ndarray:
    """The sort key (..., N) of lists whose learned scores are `logits` (..., N), in the
    incoming order along the last axis (NaN on padding stays NaN or is masked by the caller).
    weight 0: the logits as they are; inf: the prior alone (the incoming order)."""
    if weight == 0:
        return logits
    prior = position_prior(logits.shape[-1])
    if math.isinf(weight):
        return np.broadcast_to(prior, logits.shape)
    return np.asarray(logits, np.float64) / scale + weight * prior


def logit_scale(logits: np.ndarray) -> float:
    """The spread (std, > 0) of a stage's logits (n,): what `blend_key` divides them by."""
    logits = np.asarray(logits, np.float64)
    logits = logits[np.isfinite(logits)]
    std = float(logits.std()) if len(logits) else 0.0
    return std if std > 1e-6 else 1.0


def weight_label(weight: float) -> str:
    """'0', '0.25', ..., 'inf': a weight as a JSON-safe string (JSON has no infinity)."""
    return "inf" if math.isinf(weight) else f"{weight:g}"


def weight_from_json(value: object) -> float | None:
    """The weight a saved state holds (a number, or "inf"), None when it is neither."""
    if value == "inf":
        return math.inf
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def weight_to_json(weight: float) -> float | str:
    return "inf" if math.isinf(weight) else float(weight)


def choose_weight(
    evaluate: Callable[[float], float | np.ndarray],
    grid: tuple[float, ...] = GRID,
    *,
    anchor: float | None = None,
) -> tuple[float, dict[str, float]]:
    """The weight of `grid` with the best mean `evaluate(weight)` (a holdout metric, higher
    is better: one number, or one per holdout user), and every weight's mean by
    `weight_label`. A tie goes to the smaller weight.

    With an `anchor` (a weight of the grid) and per-user results (n,), the anchor stays
    unless the best weight beats it clearly (`metrics.clearly_better`: by 3 standard errors
    of the paired difference); with one number per weight there is no spread to judge by,
    and the best mean wins."""
    metrics: dict[str, float] = {}
    scores: dict[float, np.ndarray] = {}
    best, best_metric = grid[0], -math.inf
    for weight in grid:
        scores[weight] = np.asarray(evaluate(weight), dtype=np.float64)
        metric = float(scores[weight].mean())
        metrics[weight_label(weight)] = metric
        if metric > best_metric:
            best, best_metric = weight, metric
    judged = anchor is not None and best != anchor and scores[best].ndim == 1
    if judged and not clearly_better(scores[best], scores[anchor]):
        best = anchor
    return best, metrics


__all__ = [
    "GRID",
    "blend_key",
    "choose_weight",
    "logit_scale",
    "position_prior",
    "weight_from_json",
    "weight_label",
    "weight_to_json",
]
