"""Re-rank: a determinantal point process, by the fast greedy MAP inference of Chen, Zhang
and Zhou (NeurIPS 2018), in numpy.

A DPP scores a whole list Y by det(L_Y), with the kernel

    L = diag(q) S diag(q)        q_i = exp(alpha * relevance_i)   (quality)
                                 S   = cosine of the items' vectors + ridge * I (similarity)

so det(L_Y) = prod(q_i^2) * det(S_Y): relevant items raise it, similar ones shrink it (two
identical items make S_Y singular). Finding the best list is NP-hard; the greedy adds, at
each step, the item with the largest gain in log det, which Chen et al. compute without any
determinant. With the Cholesky factor of the chosen set, each candidate i keeps a row c_i
and d_i^2 = L_ii - |c_i|^2 (its gain); after picking j:

    e_i   = (L_ji - <c_j, c_i>) / d_j
    c_i  <- [c_i, e_i],   d_i^2 <- d_i^2 - e_i^2

O(N k) per step and user instead of a determinant per candidate. The trade-off uses MMR's
lambda (1 = relevance only): alpha = lambda / (2 (1 - lambda)), Chen et al.'s theta. The
ridge keeps every det positive: genre vectors span only 18 dimensions, so without it every
list longer than 18 would have det 0 and the greedy would stop choosing by quality.
"""

from __future__ import annotations

import numpy as np

from recfunnel.rerank.mmr import _unit, check_rerank_inputs

__all__ = ["dpp"]

RIDGE = 1e-3


def dpp(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    lambda_dpp: float,
    valid: np.ndarray | None = None,
    *,
    ridge: float = RIDGE,
) -> np.ndarray:
    """Greedy DPP MAP lists: (B, k) int64 positions into each user's N candidates, best
    first. `relevance` (B, N) on [0, 1] (see `mmr.relevance_scale`), `vectors` (B, N, d),
    `valid` (B, N) bool (None: all valid; padding is never picked, -1 pads a short list).
    lambda = 1 gives the descending-relevance order exactly (ties: smaller position)."""
    rel, vectors, valid, lam = check_rerank_inputs(
        relevance, vectors, k, lambda_dpp, valid, lambda_name="lambda"
    )
    n_users, n = rel.shape
    k = int(k)
    out = np.full((n_users, k), -1, dtype=np.int64)
    if n == 0 or n_users == 0:
        return out
    rel = np.where(valid, rel, 0.0)
    if lam == 1.0:  # alpha is infinite: quality alone, which is the relevance order
        order = np.argsort(np.where(valid, -rel, np.inf), axis=1, kind="stable")[:, :k]
        return np.where(np.take_along_axis(valid, order, axis=1), order, -1)

    # log q, centred per user: the kernel's scale cancels in the argmax, and centring keeps
    # exp() in range for large alpha.
    alpha = lam / (2.0 * (1.0 - lam))
    log_q = alpha * (rel - rel.max(axis=1, keepdims=True))
    q = np.exp(log_q)  # (B, N), in (0, 1]
    unit = _unit(vectors).astype(np.float64)
    rows = np.arange(n_users)
    d2 = q**2 * (1.0 + ridge)  # L_ii
    c = np.zeros((n_users, k, n))  # the Cholesky rows c_i, one column per step
    available = valid.copy()
    for t in range(k):
        # The gain of adding i is log d_i^2; d^2 > 0 always thanks to the ridge.
        gain = np.where(available, np.log(np.maximum(d2, 1e-300)), -np.inf)
        pick = np.argmax(gain, axis=1)  # first maximum: ties go to the smaller position
        has = available[rows, pick]
        if not has.any():
            break
        out[:, t] = np.where(has, pick, -1)
        available[rows, pick] = False
        if t + 1 == k:
            break
        # L_ji for every i: q_j q_i (cos(j, i) + ridge [i == j]).
        cos = np.einsum("bnd,bd->bn", unit, unit[rows, pick])
        l_ji = q[rows, pick][:, None] * q * cos
        l_ji[rows, pick] += q[rows, pick] ** 2 * ridge
        c_j = c[rows, :t, pick]  # (B, t)
        dot = np.einsum("bt,btn->bn", c_j, c[:, :t, :])
        d_j = np.sqrt(np.maximum(d2[rows, pick], 1e-300))[:, None]
        e = (l_ji - dot) / d_j
        c[:, t, :] = e
        d2 = d2 - e**2
    return out
