"""Re-rank: Maximal Marginal Relevance (Carbonell & Goldstein, 1998), in numpy.

MMR builds each user's final list greedily: the next item is the candidate that maximises
`lambda * relevance - (1 - lambda) * max cosine to the items already chosen`, so lambda = 1
keeps the ranker's order and lambda = 0 only seeks novelty. Relevance is first brought to
[0, 1] per user (`relevance_scale`), the range of the (genre) similarity it is traded
against. Everything is vectorised over a batch of users; only the k picks are a loop.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Literal

import numpy as np

__all__ = [
    "RELEVANCES",
    "check_rerank_inputs",
    "cosine_similarity",
    "mmr",
    "mmr_one",
    "relevance_scale",
]

RELEVANCES = ("minmax", "rank", "probability")  # how rank scores become [0, 1] relevance

# ----------------------------------------------------------------------------- inputs


def _check_scores(
    scores: np.ndarray, valid: np.ndarray | None, name: str
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_users, n_candidates), got shape {scores.shape}")
    if valid is None:
        valid = np.ones(scores.shape, dtype=bool)
    else:
        valid = np.asarray(valid)
        if valid.dtype != bool:
            raise ValueError(f"valid must be a bool mask, got dtype {valid.dtype}")
        if valid.shape != scores.shape:
            raise ValueError(f"valid has shape {valid.shape} but {name} has {scores.shape}")
    # A nan or inf would win or lose every argmax silently; padding may hold anything.
    if not np.isfinite(scores[valid]).all():
        raise ValueError(f"{name} must be finite on valid candidates")
    return scores, valid


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (cosine 0 with everything)."""
    vectors = np.asarray(vectors)
    # Keep float32 inputs in float32: 6,000 users x 100 candidates x 64 dims is 150 MB.
    dtype = np.result_type(vectors.dtype, np.float32)
    vectors = vectors.astype(dtype, copy=False)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def check_rerank_inputs(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lam: float,
    valid: np.ndarray | None,
    lambda_name: str = "lambda_mmr",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The checks every greedy re-ranker (MMR, DPP) makes of its inputs: (relevance as
    float64 (B, N), vectors (B, N, d), valid (B, N) bool, lambda as a float); a ValueError
    naming the first bad one."""
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if isinstance(lam, bool) or not isinstance(lam, Real):
        raise ValueError(f"{lambda_name} must be a number, got {type(lam).__name__}")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"{lambda_name} must lie in [0, 1], got {lam}")
    rel, valid = _check_scores(relevance, valid, "relevance")
    vectors = np.asarray(vectors)
    if vectors.ndim != 3 or vectors.shape[:2] != rel.shape:
        raise ValueError(
            f"vectors must have shape (n_users, n_candidates, d) = {rel.shape} + (d,), "
            f"got {vectors.shape}"
        )
    return rel, vectors, valid, float(lam)


# ----------------------------------------------------------------------------- pieces


def relevance_scale(
    scores: np.ndarray,
    valid: np.ndarray | None = None,
    how: Literal["minmax", "rank", "probability"] = "minmax",
) -> np.ndarray:
    """Per-user relevance in [0, 1] from rank scores, float64 (B, N).

    `scores` (B, N) on any scale (logits, ...); `valid` (B, N) bool, None = all valid.
    "minmax": (s - min) / (max - min) over the user's valid candidates, 1.0 for all if they
    tie. "rank": 1 - position / (n_valid - 1) by descending score, ties broken by the
    smaller position, 1.0 for a single candidate. "probability": the scores are already
    probabilities (the rank model's calibrated P(liked)); they are kept as they are, so a
    user whose best candidate is a coin flip gets more variety than one with a sure hit.
    Invalid slots get 0.

    Why: MMR subtracts a cosine in [0, 1] from the relevance. Raw logits are unbounded and
    their spread differs from user to user, so the same lambda would mean "mostly relevance"
    for one user and "mostly diversity" for another; on [0, 1] it means the same for all.
    """
    if how not in RELEVANCES:
        raise ValueError(f"how must be one of {RELEVANCES}, got {how!r}")
    scores, valid = _check_scores(scores, valid, "scores")
    n_users, n = scores.shape
    if how == "minmax" and n and valid.all():
        # No padding (every served list, and most batches): the same float64 arithmetic as
        # below, (s - min) / (max - min) per row, without the masks padding needs.
        lo = scores.min(axis=1, keepdims=True)
        span = scores.max(axis=1, keepdims=True) - lo
        return np.divide(scores - lo, span, out=np.ones(scores.shape), where=span > 0)
    out = np.zeros(scores.shape)
    if how == "probability":
        if np.any(valid & ((scores < 0) | (scores > 1))):
            raise ValueError('relevance "probability" needs scores in [0, 1]')
        out = np.where(valid, scores, 0.0)
    elif how == "minmax":
        lo = np.where(valid, scores, np.inf).min(axis=1, initial=np.inf, keepdims=True)
        hi = np.where(valid, scores, -np.inf).max(axis=1, initial=-np.inf, keepdims=True)
        span = hi - lo
        spread = np.broadcast_to(span > 0, scores.shape) & valid
        # Shifted in place only where there is a spread: elsewhere lo may be inf (no valid).
        out = np.divide(scores - np.where(np.isfinite(lo), lo, 0.0), span, out=out, where=spread)
        out[valid & ~spread] = 1.0
    else:
        # Invalid slots sort last; the stable sort puts the smaller position first on ties.
        key = np.where(valid, -scores, np.inf)
        order = np.argsort(key, axis=1, kind="stable")
        position = np.empty((n_users, n), dtype=np.float64)
        np.put_along_axis(position, order, np.arange(n, dtype=np.float64)[None, :], axis=1)
        n_valid = valid.sum(axis=1, keepdims=True).astype(np.float64)
        denom = np.maximum(n_valid - 1.0, 1.0)  # n_valid == 1: position 0 -> 1.0
        out = np.where(valid, 1.0 - position / denom, 0.0)
    return out


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine within each user's candidates: (B, N, d) -> (B, N, N).

    A zero vector has similarity 0 with everything, itself included. Float32 in, float32
    out. `mmr` does not call this (B x N x N is large); it is for tests and small batches.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 3:
        raise ValueError(f"vectors must be 3-D (n_users, n_candidates, d), got {vectors.shape}")
    unit = _unit(vectors)
    return np.matmul(unit, unit.transpose(0, 2, 1))


def mmr(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lambda_mmr: float,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy MMR lists: (B, k) int64 positions into each user's N candidates, best first.

    `relevance` (B, N) float, already on [0, 1] (see `relevance_scale`); `vectors`
    (B, N, d) the candidates' feature vectors (genre multi-hot or embeddings); `valid`
    (B, N) bool, None = all valid; invalid slots are padding and never picked. Step t picks
    the not-yet-chosen valid candidate maximising `lambda * rel - (1 - lambda) * max cosine
    to the chosen` (0 while nothing is chosen); ties go to the smaller position. A user with
    fewer than k valid candidates gets -1 padding.

    lambda = 1 gives exactly the stable descending-relevance order; lambda = 0 starts from
    the first valid position (all objectives are 0), then takes the least similar.
    """
    rel, vectors, valid, lam = check_rerank_inputs(relevance, vectors, k, lambda_mmr, valid)
    n_users, n = rel.shape
    k = int(k)
    out = np.full((n_users, k), -1, dtype=np.int64)
    if n == 0 or n_users == 0:
        return out
    unit = _unit(vectors)
    rows = np.arange(n_users)
    available = valid.copy()
    weighted_rel = lam * np.where(valid, rel, 0.0)  # padding may hold inf or nan
    penalty = np.zeros((n_users, n))  # max cosine to the chosen; 0 for the empty set
    for t in range(k):
        # With lam = 1.0 the second term is 0.0 * finite = 0.0 exactly, so the objective is
        # the relevance itself and the order cannot drift by a rounding.
        objective = weighted_rel - (1.0 - lam) * penalty
        objective = np.where(available, objective, -np.inf)
        pick = np.argmax(objective, axis=1)  # first maximum: ties go to the smaller position
        has = available[rows, pick]
        if not has.any():
            break
        out[:, t] = np.where(has, pick, -1)
        available[rows, pick] = False
        if t + 1 < k:
            # One similarity row per step, (B, N), instead of the (B, N, N) matrix: memory
            # stays O(B N) and the work O(k B N d).
            sim = np.matmul(unit, unit[rows, pick][:, :, None])[:, :, 0]
            # The first chosen item sets the max outright: cosines of embeddings may be < 0.
            penalty = sim.astype(np.float64) if t == 0 else np.maximum(penalty, sim)
    return out


def mmr_one(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lambda_mmr: float,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """`mmr` for one user (B = 1), the serving fast path: the same arithmetic in the same
    order (so the same list, bit for bit), without the batch's per-step fancy indexing.
    Shapes as `mmr`: relevance (1, N), vectors (1, N, d), valid (1, N) -> (1, k)."""
    rel, vectors, valid, lam = check_rerank_inputs(relevance, vectors, k, lambda_mmr, valid)
    if rel.shape[0] != 1:
        raise ValueError(f"mmr_one serves one user, got {rel.shape[0]}")
    k = int(k)
    out = np.full((1, k), -1, dtype=np.int64)
    n = rel.shape[1]
    if n == 0:
        return out
    unit = _unit(vectors)  # (1, N, d)
    available = valid[0].copy()
    weighted_rel = lam * np.where(valid[0], rel[0], 0.0)
    penalty = np.zeros(n)
    for t in range(min(k, int(available.sum()))):
        objective = np.where(available, weighted_rel - (1.0 - lam) * penalty, -np.inf)
        pick = int(np.argmax(objective))  # first maximum: ties go to the smaller position
        out[0, t] = pick
        available[pick] = False
        if t + 1 < k:
            # The batch call's matmul shapes, (1, N, d) @ (1, d, 1), for identical rounding.
            sim = np.matmul(unit, unit[:, pick][:, :, None])[0, :, 0]
            penalty = sim.astype(np.float64) if t == 0 else np.maximum(penalty, sim)
    return out
