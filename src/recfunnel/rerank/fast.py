"""The re-rank stage's serving kernel: MMR or DPP over one request's ranked list.

The re-ranker is numpy already and reads nothing of the request but its list, so the kernel
is its own call on a one-row `Candidates` (the same functions, so the same list); what the
fast path saves here is the one-row `Requests` the batch call would need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recfunnel.kernel import UserRequest
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
        return self.reranker.rerank(candidates, k=k, lambda_mmr=lambda_mmr)
