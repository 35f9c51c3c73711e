"""The re-rank stage's report: the accuracy / diversity trade-off as lambda moves.

For each lambda the re-ranker reorders the same ranked lists (its own call, nothing
re-implemented) and the final lists are scored with the protocol's list metrics; lambda = 1
keeps the rank order, lambda = 0 seeks only diversity.
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
