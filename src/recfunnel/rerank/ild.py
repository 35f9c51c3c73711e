"""Re-rank: a greedy list built for the two numbers it is judged by, NDCG and ILD.

Step t fills place t + 1 with the not-yet-chosen valid candidate that maximises

    lambda * rel / log2(t + 2)  +  (1 - lambda) * mean over the chosen of (1 - cosine)

(the second term is 0 while nothing is chosen). Two differences from MMR, each taken from
the metrics themselves:

- **the diversity term is the candidate's share of the list's ILD.** ILD is the mean
  pairwise dissimilarity of the list, so what a new item adds to it is its summed (here,
  mean) dissimilarity to the items already there. MMR's max cosine punishes a candidate for
  its single nearest chosen item, however different it is from all the others.
- **relevance carries NDCG's discount of the place being filled.** A swap near the top costs
  more NDCG than one at place 20, so the greedy keeps the first places for the most relevant
  items and diversifies mostly the tail.

lambda = 1 keeps the relevance order exactly (the second term is 0.0 times a finite number),
lambda = 0 seeks only diversity. On ML-1M's valid and backtest holdouts this gives about
twice MMR's ILD gain at the same NDCG cost (README, "Re-rank").
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from recfunnel.rerank.mmr import _unit, check_rerank_inputs

__all__ = ["ild_greedy"]


def ild_greedy(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lambda_mmr: float,
    valid: np.ndarray | None = None,
    *,
    normalised: bool = False,
) -> np.ndarray:
    """Greedy lists for discounted relevance + ILD: (B, k) int64 positions into each user's
    N candidates, best first; -1 pads a user with fewer than k valid candidates.

    `relevance` (B, N) on [0, 1] (`relevance_scale`); `vectors` (B, N, d) the candidates'
    feature vectors (genre multi-hot or embeddings); `valid` (B, N) bool, None = all valid.
    `normalised`: the vectors are unit rows already, `_unit`'s output (e.g. gathered from
    a catalogue's rows normalised once), so they are not normalised again.
    Ties go to the smaller position. The same arithmetic serves one request (B = 1) and a
    batch, so the fast path's list is the batch path's."""
    rel, vectors, valid, lam = check_rerank_inputs(relevance, vectors, k, lambda_mmr, valid)
    n_users, n = rel.shape
    k = int(k)
    out = np.full((n_users, k), -1, dtype=np.int64)
    if n == 0 or n_users == 0:
        return out
    unit = vectors if normalised else _unit(vectors)
    if n_users == 1:
        return _one(rel, unit, valid, k, lam, out)
    rows = np.arange(n_users)
    available = valid.copy()
    rel = np.where(valid, rel, 0.0)  # padding may hold inf or nan
    dissimilarity = np.zeros((n_users, n))  # summed (1 - cosine) to the chosen, float64
    for t in range(min(k, n)):
        # lam = 1: the relevance itself, so no rounding of the discount can reorder a tie.
        gain = rel if lam == 1.0 else (lam / np.log2(t + 2.0)) * rel
        if t:
            gain = gain + ((1.0 - lam) / t) * dissimilarity
        objective = np.where(available, gain, -np.inf)
        pick = np.argmax(objective, axis=1)  # first maximum: ties go to the smaller position
        has = available[rows, pick]
        if not has.any():
            break
        out[:, t] = np.where(has, pick, -1)
        available[rows, pick] = False
        if t + 1 < k:
            # One similarity row per step, (B, N): memory O(B N), work O(k B N d).
            sim = np.matmul(unit, unit[rows, pick][:, :, None])[:, :, 0]
            dissimilarity += 1.0 - sim.astype(np.float64)
    return out


def _one(
    rel: np.ndarray, unit: np.ndarray, valid: np.ndarray, k: int, lam: float, out: np.ndarray
) -> np.ndarray:
    """`ild_greedy` for one list (the serving fast path): the same arithmetic in the same
    order and the batch's matmul shapes, (1, N, d) @ (1, d, 1), for identical rounding
    (`_dissimilarity_rows`); only the bookkeeping differs: the discounts of every step are
    made at once, and a step is five numpy calls on (N,) rows instead of a dozen.
    rel (1, N), unit (1, N, d), valid (1, N)."""
    available = valid[0]
    n = rel.shape[1]
    rel_row = np.where(available, rel[0], 0.0)
    steps = min(k, int(available.sum()))
    if steps == 0:
        return out
    # Every step's discounted relevance at once, (steps, N): the same one multiplication
    # per element as the batch loop's `(lam / log2(t + 2)) * rel`.
    if lam == 1.0:
        gains = np.broadcast_to(rel_row, (steps, n))
    else:
        coefs = lam / _log2_places(steps)  # each lam / log2(t + 2), as the batch divides
        gains = coefs[:, None] * rel_row[None, :]
    # -inf where a candidate may not be chosen (padding, and each pick for the later steps):
    # finite + -inf is -inf, so this is the batch loop's np.where(available, gain, -inf).
    gains = np.where(available, gains, -np.inf)
    dissimilarity_row = _dissimilarity_rows(unit, steps)
    dissimilarity = np.zeros(n)  # summed (1 - cosine) to the chosen, float64
    objective = np.empty(n)
    picks = []
    for t in range(steps):
        if t:
            # ((1 - lam) / t) * dissimilarity + gains[t], the batch's order (a + b is b + a).
            np.multiply((1.0 - lam) / t, dissimilarity, out=objective)
            objective += gains[t]
            pick = int(objective.argmax())  # the first maximum: ties go to the smaller position
        else:
            pick = int(gains[0].argmax())
        picks.append(pick)
        gains[t + 1 :, pick] = -np.inf
        if t + 1 < steps:
            dissimilarity += dissimilarity_row(pick)
    out[0, :steps] = picks
    return out


@functools.lru_cache(maxsize=16)
def _log2_places(steps: int) -> np.ndarray:
    """(steps,) float64 log2(t + 2) for t < steps, each the batch loop's scalar `np.log2`
    (kept: twenty scalar ufunc calls cost ~3 us a request). Read-only: it is shared."""
    logs = np.array([np.log2(t + 2.0) for t in range(steps)])
    logs.flags.writeable = False
    return logs


def _dissimilarity_rows(unit: np.ndarray, steps: int) -> Callable[[int], np.ndarray]:
    """pick -> (N,) float64 1 - cosine of candidate `pick` to all, as the batch loop computes
    it: the float32 matmul (N, d) @ (d, 1) of the same arrays, then `1.0 - sim` in float64.

    When the whole (N, N) costs little more than the steps' rows, it is one matmul call
    that broadcasts (N, d) over the N right-hand sides (N, d, 1): the very product the
    step would make (the same operands, shapes and BLAS call), N times in C instead of
    once per step through Python. A long list with few steps computes each row on demand."""
    n = unit.shape[1]
    if n <= 8 * steps:
        sim = np.matmul(unit, unit[0][:, :, None])[:, :, 0]  # (N, N): row p = step p's
        return np.subtract(1.0, sim, dtype=np.float64).__getitem__

    def row(pick: int) -> np.ndarray:
        sim = np.matmul(unit, unit[:, pick][:, :, None])[0, :, 0]
        return np.subtract(1.0, sim, dtype=np.float64)

    return row
