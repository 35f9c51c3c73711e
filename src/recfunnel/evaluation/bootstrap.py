"""Paired bootstrap intervals over users, as `shared/docs/protocol.md` asks for.

About 1,000 users are evaluated, so a difference of 0.01-0.02 NDCG@20 between two lists can
be noise. Every list is scored per user (one number per evaluated user); a comparison of two
lists on the same users resamples the users with replacement, `draws` times with a fixed
seed, recomputes the mean difference per draw, and reports the 2.5 % and 97.5 % quantiles.
Pairing (the same resampled users for both lists) is what makes the interval narrow: most of
the spread between users is shared by the two lists and cancels out.

    scores = per_user_scores(topk, users)             # {"ndcg@20": (n_users,), ...}
    interval(scores["ndcg@20"])                        # mean with its 95 % interval
    difference(a["ndcg@20"], b["ndcg@20"])             # mean(a - b) with its interval
"""

from __future__ import annotations

import numpy as np

from recfunnel.evaluation import metrics
from recfunnel.evaluation.protocol import EvalUsers, metric_cutoff

DRAWS = 1000  # the protocol's minimum
SEED = 0
METRICS = ("ndcg@20", "recall@20")


def per_user_scores(topk: np.ndarray, users: EvalUsers, k: int = 20) -> dict[str, np.ndarray]:
    """NDCG@k and Recall@k of each user's list: topk (n_users, >= k) catalogue positions ->
    {"ndcg@k": (n_users,), "recall@k": (n_users,)} float64, the protocol's binary gains."""
    return {
        name: per_user_metric(topk[:, :k], users, name) for name in (f"ndcg@{k}", f"recall@{k}")
    }


def per_user_metric(topk: np.ndarray, users: EvalUsers, name: str) -> np.ndarray:
    """One list metric of each user's list (n_users,) float64: `name` is "ndcg@20",
    "recall@100", "hit_rate@10" or "precision@20"; its mean is `Evaluator.list_metrics`'s."""
    metric, k = name.split("@")[0], metric_cutoff(name, "metric")
    hits = metrics.hit_matrix(topk, users.truth)
    n_relevant = np.diff(users.truth.indptr)
    k_eff = min(k, topk.shape[1])
    if metric == "ndcg":
        return metrics.ndcg_at_k(hits, n_relevant, k_eff).astype(np.float64)
    if metric == "recall":
        return metrics.recall_at_k(hits, n_relevant, k_eff).astype(np.float64)
    if metric == "hit_rate":
        return metrics.hit_rate_at_k(hits, k_eff)
    return metrics.precision_at_k(hits, k_eff)


def _resampled_means(values: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """(draws,) means of `values` (n,) over users drawn with replacement, in blocks so that
    memory stays at a few MB for any n."""
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty(draws)
    block = max(1, 2_000_000 // max(n, 1))
    for start in range(0, draws, block):
        size = min(block, draws - start)
        index = rng.integers(0, n, size=(size, n))
        out[start : start + size] = values[index].mean(axis=1)
    return out


def interval(values: np.ndarray, *, draws: int = DRAWS, seed: int = SEED) -> dict[str, float]:
    """{"mean", "low", "high"}: the mean of per-user `values` (n,) and its bootstrap 95 %
    interval. With the same seed, every call resamples the same users, so intervals of
    different lists on the same users are paired."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
    means = _resampled_means(values, draws, seed)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def difference(
    a: np.ndarray, b: np.ndarray, *, draws: int = DRAWS, seed: int = SEED
) -> dict[str, float]:
    """mean(a - b) over the same users (n,) each, with its paired bootstrap 95 % interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same users: {a.shape} vs {b.shape}")
    return interval(a - b, draws=draws, seed=seed)


def intervals_report(
    lists: dict[str, dict[str, np.ndarray]],
    comparisons: list[tuple[str, str]],
    *,
    draws: int = DRAWS,
    seed: int = SEED,
) -> dict[str, dict[str, dict[str, float]]]:
    """The report section: for every named list its metrics' intervals ("lists"), and for
    every (a, b) in `comparisons` the paired interval of a - b ("differences", keyed
    "a - b"). `lists` maps a name to `per_user_scores` of the same users."""
    out: dict[str, dict[str, dict[str, float]]] = {"lists": {}, "differences": {}}
    for name, scores in lists.items():
        out["lists"][name] = {m: interval(v, draws=draws, seed=seed) for m, v in scores.items()}
    for a, b in comparisons:
        out["differences"][f"{a} - {b}"] = {
            m: difference(lists[a][m], lists[b][m], draws=draws, seed=seed) for m in lists[a]
        }
    return out


__all__ = ["difference", "interval", "intervals_report", "per_user_scores"]
