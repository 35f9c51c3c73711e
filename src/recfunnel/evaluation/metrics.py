"""Evaluation metrics as small pure numpy functions (definitions: docs/protocol.md).

Top-N metrics take a boolean hit matrix built once by `hit_matrix`, so that computing
Recall, NDCG, ... at several K for 6,000 users costs a few array reductions. Pointwise
metrics (AUC, GAUC, LogLoss) take flat arrays of labels and scores. Diversity and
coverage take the top-K item matrix itself.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

__all__ = [
    "auc",
    "calibration_bins",
    "clearly_better",
    "coverage",
    "expected_calibration_error",
    "gauc",
    "hit_matrix",
    "hit_rate_at_k",
    "ild_at_k",
    "log_loss",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
]


# ----------------------------------------------------------------------------- top-N

# How many standard errors of the paired per-user difference a choice made on a holdout
# must win by before it leaves its default (the fusion's weights, pre-rank's blend).
MOVE_Z = 3.0


def clearly_better(new: np.ndarray, old: np.ndarray, z: float = MOVE_Z) -> bool:
    """Whether per-user scores `new` (n,) beat `old` (n,), on the same users, by more than
    z standard errors of their mean paired difference (False for fewer than 2 users).

    A few hundred users are a noisy judge: with a dozen alternatives tried, the best of
    them beats the default by chance more often than not; a z = 3 margin makes that rare."""
    gain = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
    if gain.ndim != 1 or len(gain) < 2:
        return False
    return bool(gain.mean() > z * gain.std(ddof=1) / np.sqrt(len(gain)))


def _check_topk(topk: np.ndarray, n_items: int) -> np.ndarray:
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-D (n_users, K), got shape {topk.shape}")
    if not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must hold integer item indices, got dtype {topk.dtype}")
    if topk.size and (topk.min() < -1 or topk.max() >= n_items):
        raise ValueError(f"topk indices must lie in [-1, {n_items}), -1 being padding")
    return topk.astype(np.int64, copy=False)


def hit_matrix(topk: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """Which recommended items are relevant: bool (n_users, K).

    `topk` is (n_users, K) int, column indices of `truth`, best first; -1 pads short lists
    and is never a hit. `truth` is (n_users, n_items) sparse with a non-zero for every
    relevant item. A list that repeats an item is a ValueError: it would count one relevant
    item twice and push Recall above 1.
    """
    truth = sp.csr_matrix(truth)
    n_users, n_items = truth.shape
    topk = _check_topk(topk, n_items)
    if topk.shape[0] != n_users:
        raise ValueError(f"topk has {topk.shape[0]} rows but truth has {n_users}")
    valid = topk >= 0

    # Duplicates: sort each row and compare neighbours, ignoring the -1 padding.
    ordered = np.sort(topk, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
        raise ValueError("a top-K list repeats an item")

    # Encode (row, column) as one int64 key, so one global searchsorted over the sorted
    # keys of the relevant entries answers every membership question without a row loop.
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(truth.indptr))
    keys = rows * n_items + truth.indices.astype(np.int64)
    keys = np.unique(keys[truth.data != 0])  # explicit zeros are not relevant
    if keys.size == 0:
        return np.zeros(topk.shape, dtype=bool)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + topk
    pos = np.searchsorted(keys, query)
    found = keys[np.minimum(pos, keys.size - 1)] == query
    return found & valid


def _check_hits(hits: np.ndarray, k: int) -> np.ndarray:
    hits = np.asarray(hits)
    if hits.ndim != 2:
        raise ValueError(f"hits must be 2-D (n_users, K), got shape {hits.shape}")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} must lie in [1, {hits.shape[1]}] (the hit matrix's width)")
    return hits[:, :k].astype(bool, copy=False)


def _check_relevant(n_relevant: np.ndarray, n_users: int) -> np.ndarray:
    n_relevant = np.asarray(n_relevant)
    if n_relevant.shape != (n_users,):
        raise ValueError(f"n_relevant must have shape ({n_users},), got {n_relevant.shape}")
    if np.any(n_relevant <= 0):
        raise ValueError("every user needs >= 1 relevant item (the evaluator drops the others)")
    return n_relevant.astype(np.float64)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user hits in the first k / number of relevant items, float64 (n_users,).

    `hits` (n_users, K) bool from `hit_matrix`; `n_relevant` (n_users,) counts of the whole
    ground truth (not capped at k, so Recall@k < 1 when a user has more than k).
    """
    h = _check_hits(hits, k)
    return h.sum(axis=1) / _check_relevant(n_relevant, h.shape[0])


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user hits in the first k / k, float64 (n_users,); padded slots count as misses."""
    h = _check_hits(hits, k)
    return h.sum(axis=1) / float(k)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user 1.0 if any of the first k items is relevant, else 0.0, float64 (n_users,)."""
    h = _check_hits(hits, k)
    return h.any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with binary gains, float64 (n_users,).

    DCG = sum over hit ranks r (1-based) of 1 / log2(r + 1); IDCG is the DCG of
    min(n_relevant, k) hits at the top.
    """
    h = _check_hits(hits, k)
    n_rel = _check_relevant(n_relevant, h.shape[0])
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = h @ discounts
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k).astype(np.int64) - 1]
    return dcg / ideal


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalogue's `n_items` items that appear in at least one list.

    `topk` (n_users, K) int item indices in [0, n_items), -1 padding ignored.
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    topk = _check_topk(topk, n_items)
    return np.unique(topk[topk >= 0]).size / n_items


def ild_at_k(topk: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Intra-list diversity per user: mean of 1 - cos(a, b) over unordered pairs, (n_users,).

    `topk` (n_users, K) int rows of `features` (-1 padding ignored); `features` (n_items, d),
    the genre multi-hot vectors in the protocol. A list with fewer than 2 items gives nan.
    A zero-norm feature row (a movie without genres) has cosine 0 with everything, so its
    pairs have distance 1.

    The pairwise cosines are summed without forming K x K Gram matrices: for unit rows x_i,
    sum_{i<j} x_i.x_j = (|sum_i x_i|^2 - sum_i |x_i|^2) / 2, which is O(K d) per user and
    exact (a zero row adds 0 to both terms, matching the cosine-0 rule).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n_items, d), got shape {features.shape}")
    topk = _check_topk(topk, features.shape[0])
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
    # An extra zero row at the end: index -1 (padding) then selects it and adds nothing.
    unit = np.vstack([unit, np.zeros((1, unit.shape[1]))])
    sq_norm = np.append(norms[:, 0] > 0, False).astype(np.float64)

    # Summing column by column keeps memory at (n_users, d) instead of (n_users, K, d).
    total = np.zeros((topk.shape[0], unit.shape[1]))
    for j in range(topk.shape[1]):
        total += unit[topk[:, j]]
    cos_sum = 0.5 * (np.einsum("ud,ud->u", total, total) - sq_norm[topk].sum(axis=1))
    m = (topk >= 0).sum(axis=1).astype(np.float64)
    out = np.full(topk.shape[0], np.nan)
    many = m >= 2
    out[many] = 1.0 - cos_sum[many] / (m[many] * (m[many] - 1) / 2)
    return out


# ----------------------------------------------------------------------------- pointwise


def _check_pointwise(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must be 1-D of one length, got {labels.shape}, {scores.shape}"
        )
    if labels.size == 0:
        raise ValueError("no labels given")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be binary (0/1 or bool)")
    if np.isnan(scores).any():
        raise ValueError("scores contain nan")
    return labels.astype(bool), scores


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC of (n,) `scores` against (n,) 0/1 `labels`, a tie counting one half.

    Rank form (Mann-Whitney U): (sum of positives' average ranks - P(P+1)/2) / (P N).
    ValueError if only one class is present.
    """
    y, s = _check_pointwise(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both a positive and a negative label")
    ranks = rankdata(s, method="average")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-user AUC averaged with weights = the user's number of (user, item) rows.

    All arrays (n,). Users with only one label class are left out, as in the protocol; if
    none is left, ValueError. Ties count one half within a user.
    """
    y, s = _check_pointwise(labels, scores)
    user_ids = np.asarray(user_ids)
    if user_ids.shape != y.shape:
        raise ValueError(f"user_ids has shape {user_ids.shape}, labels {y.shape}")

    # One sort by (user, score) gives every user's ranking as a contiguous block; tied
    # scores within a user form runs that share their average rank.
    order = np.lexsort((s, user_ids))
    u, s, y = user_ids[order], s[order], y[order]
    n = u.size
    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    new_user[1:] = u[1:] != u[:-1]
    new_run = new_user.copy()
    new_run[1:] |= s[1:] != s[:-1]

    user = np.cumsum(new_user) - 1  # dense user index per row
    user_start = np.flatnonzero(new_user)
    run = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)  # exclusive
    # Average 1-based rank of a run within its user: mean of positions start..end-1, plus 1.
    rank = (run_start[run] + run_end[run] + 1) / 2.0 - user_start[user]

    n_users = user_start.size
    n_rows = np.bincount(user, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(user, weights=y, minlength=n_users)
    n_neg = n_rows - n_pos
    rank_pos = np.bincount(user, weights=rank * y, minlength=n_users)
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        raise ValueError("GAUC needs at least one user with both a positive and a negative label")
    per_user = (rank_pos[both] - n_pos[both] * (n_pos[both] + 1) / 2) / (n_pos[both] * n_neg[both])
    weights = n_rows[both]
    return float(per_user @ weights / weights.sum())


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of (n,) probabilities against (n,) 0/1 labels, natural log.

    Probabilities are clipped to [eps, 1 - eps] so that one confident mistake gives a large,
    finite loss instead of inf.
    """
    y, p = _check_pointwise(labels, probs)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def calibration_bins(
    labels: np.ndarray, probs: np.ndarray, bins: int = 10
) -> dict[str, np.ndarray]:
    """A reliability diagram's data: (n,) probabilities cut into `bins` equal-width bins of
    [0, 1] (1.0 falls in the last). Per bin (bins,): "count", "mean_prob" (the average
    prediction) and "positive_rate" (the share of labels that are 1); both are nan in an
    empty bin. A calibrated model has mean_prob close to positive_rate in every bin."""
    y, p = _check_pointwise(labels, probs)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]")
    if bins <= 0:
        raise ValueError(f"bins must be > 0, got {bins}")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, weights=p, minlength=bins) / count
        positive_rate = np.bincount(which, weights=y, minlength=bins) / count
    return {"count": count, "mean_prob": mean_prob, "positive_rate": positive_rate}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean over equal-width bins of |positive rate - mean
    probability| (Guo et al., 2017). 0 is perfectly calibrated; a constant prediction of the
    base rate also scores 0, so read it beside AUC and LogLoss."""
    table = calibration_bins(labels, probs, bins)
    full = table["count"] > 0
    gap = np.abs(table["positive_rate"][full] - table["mean_prob"][full])
    return float(gap @ table["count"][full] / table["count"].sum())
