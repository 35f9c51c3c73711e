"""The re-rank stage's serving kernel: MMR or DPP over one request's ranked list.

The re-ranker is numpy already and reads nothing of the request but its list, so the kernel
is the same arithmetic as `MMRReranker.rerank` (the same functions, so the same list) on
one `Row`; what the fast path saves here is the one-row `Requests` the batch call would
need and the frozen `Candidates` values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recfunnel.kernel import Row, UserRequest
from recfunnel.types import Candidates

if TYPE_CHECKING:
    from recfunnel.rerank.stage import MMRReranker


class RerankKernel:
    """`MMRReranker.__call__` for one request."""

    def __init__(self, reranker: MMRReranker) -> None:
        reranker.check_fitted()
        self.reranker = reranker

    def __call__(
        self,
        request: UserRequest,
        candidates: Candidates,
        *,
        k: int | None = None,
        lambda_mmr: float | None = None,
        **_: Any,
    ) -> Candidates:
        return self.row(request, Row.of(candidates), k=k, lambda_mmr=lambda_mmr).candidates()

    def row(
        self,
        request: UserRequest,
        row: Row,
        *,
        k: int | None = None,
        lambda_mmr: float | None = None,
        **_: Any,
    ) -> Row:
        """The first k (N,) -> (k,) after MMR (or DPP) at `lambda_mmr`, as `rerank`."""
        reranker = self.reranker
        order = reranker.order(
            row.items[None, :],  # (1, N): the batch shapes, for B = 1
            row.scores[reranker.score_name][None, :],
            row.valid[None, :],
            row.embeddings,
            k=k,
            lambda_mmr=lambda_mmr,
        )
        return row.take(order[0])
