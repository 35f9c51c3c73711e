"""The re-rank stage: MMR, a DPP or the ILD greedy over the ranked list, for a more varied
final list.

    rerank/mmr.py     the MMR algorithm, vectorised in numpy (relevance scaling, cosine)
    rerank/dpp.py     the DPP's fast greedy MAP inference (Chen et al., 2018)
    rerank/ild.py     the greedy for NDCG-discounted relevance + the list's ILD
    rerank/stage.py   MMRReranker and RerankConfig: the component the funnel chains

Relevance is the rank score brought to [0, 1] per user (min-max, the default) or the rank
model's probability of a like; similarity is the cosine of the items' genre vectors or of
their recall embeddings. The method chooses k items; `order = relevance` (the default) then
lists them by relevance (`by_relevance`), since ILD is a property of the set and NDCG
rewards the most relevant at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from recfunnel.config import param
from recfunnel.errors import ConfigError
from recfunnel.rerank.dpp import dpp
from recfunnel.rerank.ild import ild_greedy
from recfunnel.rerank.mmr import RELEVANCES, _unit, mmr, mmr_one, relevance_scale
from recfunnel.stage import Component, FitData, Stacked, Validate
from recfunnel.types import Candidates, Embeddings, Requests

if TYPE_CHECKING:
    from recfunnel.rerank.fast import RerankKernel

SIMILARITIES = ("genre", "embedding")
METHODS = ("ild", "mmr", "dpp")
ORDERS = ("greedy", "relevance")


@dataclass(frozen=True)
class RerankConfig:
    """MMR or DPP re-ranking of the ranker's top candidates."""

    method: Literal["ild", "mmr", "dpp"] = param(
        "ild",
        "ild: greedy NDCG-discounted relevance plus mean dissimilarity to the chosen (the "
        "list's ILD gain); mmr: greedy relevance minus max similarity to the chosen; dpp: "
        "greedy MAP of a determinantal point process with a quality x similarity kernel",
    )
    lambda_mmr: float | None = param(
        None,
        "trade-off in [0, 1] of either method: 1 keeps the ranker's order, lower is more "
        "varied (dpp: quality exp(alpha * relevance), alpha = lambda / (2 (1 - lambda))); "
        "none: chosen when training ends, on valid (see max_ndcg_loss), and saved",
    )
    max_ndcg_loss: float = param(
        0.02,
        "with lambda_mmr none: the chosen lambda gives the most varied final list (genre "
        "ILD@20) whose NDCG@20 is within this share of the rank order's, on valid's warm "
        "users",
    )
    similarity: Literal["genre", "embedding"] = param(
        "genre", "cosine of genre multi-hot vectors or of recall item embeddings"
    )
    relevance: Literal["minmax", "rank", "probability"] = param(
        "minmax",
        "how rank scores become [0, 1] relevance: per-user min-max, 1 - rank share, or the "
        "rank model's probability of a like (rank.prob), the same scale for every user",
    )
    order: Literal["relevance", "greedy"] = param(
        "relevance",
        "the order of the chosen k: relevance: sorted by relevance, best first (ILD@k is a "
        "property of the set, so it is unchanged, while the most relevant of the chosen take "
        "the top places that NDCG weighs most); greedy: the order the method picked them in",
        saved_without="greedy",  # runs saved before the field kept the pick order
    )

    def validate(self) -> None:
        if self.lambda_mmr is not None and not 0.0 <= self.lambda_mmr <= 1.0:  # rejects nan
            raise ConfigError(f"rerank.lambda_mmr must lie in [0, 1], got {self.lambda_mmr}")
        if not 0.0 <= self.max_ndcg_loss < 1.0:
            raise ConfigError(f"rerank.max_ndcg_loss must lie in [0, 1), got {self.max_ndcg_loss}")
        if self.method not in METHODS:
            raise ConfigError(f"rerank.method must be one of {METHODS}, got {self.method!r}")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(
                f"rerank.similarity must be one of {SIMILARITIES}, got {self.similarity!r}"
            )
        if self.relevance not in RELEVANCES:
            raise ConfigError(
                f"rerank.relevance must be one of {RELEVANCES}, got {self.relevance!r}"
            )
        if self.order not in ORDERS:
            raise ConfigError(f"rerank.order must be one of {ORDERS}, got {self.order!r}")


class MMRReranker(Component):
    """Re-orders the rank stage's list with MMR (or a DPP, `method`) and keeps the first k."""

    name = "rerank"
    config_class = RerankConfig
    fitted_attribute = "genres_"
    default_k = 20

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> MMRReranker:
        """Nothing to learn: keep the catalogue's genre vectors (n_items, 18) float32 (and
        their unit rows, `_keep_genres`)."""
        self.config.validate()
        self._keep_genres(data.ml.genre_matrix(data.item_ids).astype(np.float32))
        self._fitted()
        return self

    def __call__(
        self,
        requests: Requests,
        candidates: Candidates,
        *,
        k: int | None = None,
        lambda_mmr: float | None = None,
        **_: Any,
    ) -> Candidates:
        """The k (default 20) items of each list the configured method chooses at
        `lambda_mmr` (default the config's), in the configured order."""
        return self.rerank(candidates, k=k, lambda_mmr=lambda_mmr)

    def rerank(
        self, candidates: Candidates, *, k: int | None = None, lambda_mmr: float | None = None
    ) -> Candidates:
        """The call's work: it reads only the lists, never the requests."""
        self.check_fitted()
        order = self.order(
            candidates.items,
            candidates.scores[self.score_name],
            candidates.valid,
            candidates.embeddings,
            k=k,
            lambda_mmr=lambda_mmr,
        )
        return candidates.reorder(order)

    @property
    def score_name(self) -> str:
        """The earlier score the relevance is read from."""
        return "rank.prob" if self.config.relevance == "probability" else "rank"

    def order(
        self,
        items: np.ndarray,
        score: np.ndarray,
        valid: np.ndarray,
        embeddings: Embeddings | None,
        *,
        k: int | None = None,
        lambda_mmr: float | None = None,
    ) -> np.ndarray:
        """(B, k) positions into the lists items (B, N) after MMR or DPP at `lambda_mmr`
        (default the config's), relevance from `score` (B, N): the batch call's and the
        serving kernel's one arithmetic."""
        k = k or self.default_k
        lam = self.config.lambda_mmr if lambda_mmr is None else lambda_mmr
        if lam is None:
            raise ConfigError(
                "rerank.lambda_mmr is none and has not been chosen yet: train the funnel "
                "(it chooses lambda on valid), or pass lambda_mmr or set it"
            )
        relevance = relevance_scale(np.where(valid, score, 0.0), valid, self.config.relevance)
        safe = np.where(valid, items, 0)
        normalised = False  # whether `vectors` are unit rows already
        if self.config.similarity == "genre":
            # The ILD greedy reads unit vectors: gather those normalised once (`_keep_genres`).
            normalised = self.config.method == "ild"
            vectors = (self.unit_genres_ if normalised else self.genres_)[safe]
        else:
            if embeddings is None:
                raise ConfigError("rerank.similarity=embedding needs candidates with embeddings")
            vectors = embeddings.items[safe]
        one_list = len(items) == 1  # a served request: MMR without batch bookkeeping
        if self.config.method == "dpp":
            picks = dpp(relevance, vectors, k, lam, valid)
        elif self.config.method == "ild":
            picks = ild_greedy(relevance, vectors, k, lam, valid, normalised=normalised)
        else:
            picks = (mmr_one if one_list else mmr)(relevance, vectors, k, lam, valid)
        return by_relevance(picks, relevance) if self.config.order == "relevance" else picks

    def serving_kernel(self) -> RerankKernel:
        """The one-request fast path (`rerank.fast`): the same call, without Requests."""
        from recfunnel.rerank.fast import RerankKernel

        return RerankKernel(self)

    def with_method(self, method: str) -> MMRReranker:
        """A copy that re-ranks with `method` (one of METHODS), everything else the same."""
        return self.with_config(method=method)

    def with_config(self, **changes: Any) -> MMRReranker:
        """A fitted copy with config fields `changes` (e.g. method, lambda_mmr), validated."""
        self.check_fitted()
        other = MMRReranker(replace(self.config, **changes))
        other.config.validate()
        other._keep_genres(self.genres_)
        other._fitted()
        return other

    def _load(self, directory: Path, data: FitData) -> None:
        self._keep_genres(data.ml.genre_matrix(data.item_ids).astype(np.float32))

    def _keep_genres(self, genres: np.ndarray) -> None:
        """The catalogue's genre multi-hot rows (n_items, 18) float32, and the same as unit
        vectors for the ILD greedy, normalised once rather than per call. A row's norm is
        the square root of its genre count, an integer summed exactly in any order, so a
        gathered unit row is bit for bit what normalising the gathered row gives."""
        self.genres_ = genres
        self.unit_genres_ = _unit(genres)


def by_relevance(picks: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """The chosen positions `picks` (B, k) (-1 pads the end of a short list) re-ordered by
    their `relevance` (B, N), highest first, ties to the smaller position; padding stays last.

    Why: a diversifying re-ranker chooses a *set* (ILD@k is a mean over its pairs, whatever
    their order), but NDCG@k discounts by place. Sorting the chosen set by relevance keeps
    its diversity and gives its most relevant members the top places."""
    if len(picks) == 1 and picks.shape[1] and picks[0, -1] >= 0:
        # One served list without padding (padding sits at the end only): the same order in
        # three numpy calls (~4 us) instead of the masked batch arithmetic (~14 us).
        row = picks[0]
        return row[np.lexsort((row, -relevance[0, row]))][None, :]
    chosen = picks >= 0
    gathered = np.take_along_axis(relevance, np.where(chosen, picks, 0), axis=1)
    key = np.where(chosen, gathered, -np.inf)
    tiebreak = np.where(chosen, picks, np.iinfo(np.int64).max)
    order = np.lexsort((tiebreak, -key), axis=1)  # the last key is the primary one
    return np.take_along_axis(picks, order, axis=1)
