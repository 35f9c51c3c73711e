"""The re-rank stage's report: the accuracy / diversity trade-off as lambda moves.

For each lambda the re-ranker reorders the same ranked lists (its own call, nothing
re-implemented) and the final lists are scored with the protocol's list metrics; lambda = 1
keeps the rank order, lambda = 0 seeks only diversity. `choose_lambda` picks the operating
point from such a sweep (on a holdout, never on test).
"""

from __future__ import annotations

from collections.abc import Sequence

from recfunnel.evaluation.protocol import Evaluator, EvalUsers
from recfunnel.stage import Component
from recfunnel.types import Candidates, Requests


def lambda_sweep(
    rerank: Component,
    requests: Requests,
    ranked: Candidates,
    evaluator: Evaluator,
    users: EvalUsers,
    *,
    k: int,
    lambdas: Sequence[float],
    keys: Sequence[str],
) -> list[dict[str, float]]:
    """One row per lambda: {"lambda", *keys} of the top-k final lists of the ranked lists."""
    out = []
    for lam in lambdas:
        final = rerank(requests, ranked, k=k, lambda_mmr=float(lam))
        row = evaluator.list_metrics(final.items, users)
        out.append({"lambda": float(lam), **{key: row[key] for key in keys if key in row}})
    return out


# The lambdas training chooses among: steps of 0.05, finer (0.01) from 0.8 up, where a small
# change matters most (with probability relevance, likes are rare and relevances small, so
# the useful lambdas sit between 0.9 and 1; the ILD greedy's 2 % NDCG budget ends near 0.85).
CHOICE_GRID: tuple[float, ...] = tuple(
    sorted(
        {round(0.05 * i, 2) for i in range(21)}
        | {round(0.8 + 0.01 * i, 2) for i in range(20)}
        | {0.995, 0.998}
    )
)


def choose_lambda(sweep: Sequence[dict[str, float]], max_ndcg_loss: float) -> float:
    """The operating point of a sweep (rows with "lambda", "ndcg@20", "ild@20", lambda 1
    among them): the most varied list (highest ILD@20) whose NDCG@20 is at least
    (1 - max_ndcg_loss) times lambda 1's, the rank order's. Ties go to the larger lambda
    (closer to the rank order). Lambda 1 itself always qualifies."""
    by_lambda = {row["lambda"]: row for row in sweep}
    if 1.0 not in by_lambda:
        raise ValueError("the sweep needs lambda = 1 (the rank order) as its reference")
    floor = (1.0 - max_ndcg_loss) * by_lambda[1.0]["ndcg@20"]
    eligible = [row for row in sweep if row["ndcg@20"] >= floor] or [by_lambda[1.0]]
    best = max(eligible, key=lambda row: (row["ild@20"], row["lambda"]))
    return float(best["lambda"])


def operating_point(
    rerank: Component,
    requests: Requests,
    ranked: Candidates,
    evaluator: Evaluator,
    users: EvalUsers,
    *,
    k: int,
    max_ndcg_loss: float,
) -> tuple[float, dict[float, dict[str, float]]]:
    """(the lambda `choose_lambda` picks from `rerank`'s sweep over CHOICE_GRID, that sweep's
    rows by lambda): the rule training applies, for anyone who wants to apply it elsewhere.
    `evaluator` must report ILD@20 (item_features set)."""
    sweep = lambda_sweep(
        rerank,
        requests,
        ranked,
        evaluator,
        users,
        k=k,
        lambdas=CHOICE_GRID,
        keys=("ndcg@20", "ild@20"),
    )
    return choose_lambda(sweep, max_ndcg_loss), {row["lambda"]: row for row in sweep}
