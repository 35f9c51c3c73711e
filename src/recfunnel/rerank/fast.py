"""The re-rank stage's serving kernel: MMR or DPP over one request's ranked list.

The re-ranker is numpy already and reads nothing of the request but its list, so the kernel
is the same arithmetic as `MMRReranker.rerank` (the same functions, so the same list) on
one `Row`; what the fast path saves here is the one-row `Requests` the batch call would
need and the frozen `Candidates` values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from recfunnel.errors import ConfigError
from recfunnel.kernel import Row, UserRequest
from recfunnel.rerank.dpp import dpp
from recfunnel.rerank.mmr import mmr_one, relevance_scale
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
        cfg = reranker.config
        k = k or reranker.default_k
        lam = cfg.lambda_mmr if lambda_mmr is None else lambda_mmr
        if lam is None:
            raise ConfigError(
                "rerank.lambda_mmr is none and has not been chosen yet: train the funnel "
                "(it chooses lambda on valid), or pass lambda_mmr or set it"
            )
        valid = row.valid[None, :]  # (1, N): the re-rankers' batch shapes, for B = 1
        score = row.scores["rank.prob" if cfg.relevance == "probability" else "rank"][None, :]
        relevance = relevance_scale(np.where(valid, score, 0.0), valid, cfg.relevance)
        safe = np.where(valid, row.items[None, :], 0)
        if cfg.similarity == "genre":
            vectors = reranker.genres_[safe]
        else:
            if row.embeddings is None:
                raise ConfigError("rerank.similarity=embedding needs candidates with embeddings")
            vectors = row.embeddings.items[safe]
        method = dpp if cfg.method == "dpp" else mmr_one
        return row.take(method(relevance, vectors, k, lam, valid)[0])
