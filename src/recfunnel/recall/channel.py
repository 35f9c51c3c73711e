"""What a recall channel is: a component that starts candidate lists.

A channel retrieves each request's top-K unseen items from the whole catalogue on its own
(embedding search, item-to-item, a sequence model, trending, ...), records the rank at which
it proposed each one (`Candidates.channels[name]`), and can score any (request, item) pair, so
that candidates proposed by another channel get its score too. The recall stage
(`recall.stage`) merges the channels' lists.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import numpy as np
import pandas as pd

from recfunnel.evaluation.protocol import Evaluator, metric_cutoff, top_k
from recfunnel.stage import FitData, Scorer
from recfunnel.types import Candidates, Pairs, Requests, pair_values, request_blocks


class Channel(Scorer):
    """A recall channel. Subclasses implement `fit`, `retrieve` and `score_pairs`."""

    default_k = 200  # list length when the caller names none
    # Whether the training recipe may refit the channel on all of train for serving (see
    # `StackingConfig.refit`): true when the later stages read only its scores, which keep
    # their meaning; false when they read its vectors, whose space a refit would rotate.
    refit_for_serving: bool = True

    @abstractmethod
    def retrieve(self, requests: Requests, k: int) -> Candidates:
        """The top-k unseen items (B, k) of each request, best first, with
        scores[name] (-1 / NaN padding where fewer are left)."""

    def __call__(
        self, requests: Requests, candidates: Candidates | None = None, *, k: int | None = None
    ) -> Candidates:
        """New lists from the catalogue (incoming `candidates` are not read), with the rank
        at which this channel proposed each item."""
        self.check_fitted()
        k = k or self.default_k
        # Retrieval is dense in the catalogue for most channels: blocks of requests bound it.
        blocks = request_blocks(len(requests), requests.history.ratings.shape[1])
        if len(blocks) == 1:
            out = self.retrieve(requests, k)
        else:
            out = Candidates.concat([self.retrieve(requests[b], k) for b in blocks])
        ranks = np.where(out.valid, np.arange(1, out.items.shape[1] + 1)[None, :], 0)
        return Candidates(out.items, out.scores, {**out.channels, self.name: ranks}, out.embeddings)

    def refresh(self, train: pd.DataFrame) -> None:
        """Move the serving state to the end of `train` without refitting (default: none)."""

    def valid_metric(self, data: FitData, metric: str) -> Callable[[], float] | None:
        """A function measuring `metric` (e.g. "recall@200") of this channel's full-catalogue
        lists for the warm valid users (history: train): the early-stopping signal of a
        channel that trains in epochs; None when there is no such user. The channel must
        score like an evaluator `Scorer` (`score(user_ids, history)` and `item_ids_`)."""
        ks = (metric_cutoff(metric, "valid_metric"),)
        evaluator = Evaluator(data.split, data.item_ids, ks=ks)
        users = evaluator.users("valid", "warm")
        if not len(users.user_ids):
            return None

        def measure() -> float:
            top = evaluator.rank(self, users, max(evaluator.ks))  # type: ignore[arg-type]
            return evaluator.list_metrics(top, users)[metric]

        return measure


class CatalogueChannel(Channel):
    """A channel that scores the whole catalogue for each request (item-to-item models,
    trending, content): retrieval is an exact top-k of those scores with the known items
    removed, and a pair's score is read from the same row. Subclasses implement `fit` and
    `catalogue_scores`."""

    @abstractmethod
    def catalogue_scores(self, requests: Requests) -> np.ndarray:
        """(B, n_items) float64 scores of every catalogue position for each request."""

    def retrieve(self, requests: Requests, k: int) -> Candidates:
        self.check_fitted()
        scores = self.catalogue_scores(requests)
        items = top_k(scores, requests.history.ratings, k)
        values = np.take_along_axis(scores, np.maximum(items, 0), axis=1)
        return Candidates(items, {self.name: np.where(items >= 0, values, np.nan)})

    def score_pairs(self, requests: Requests, pairs: Pairs) -> Pairs:
        self.check_fitted()

        def values(block: Requests, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
            return np.asarray(self.catalogue_scores(block)[rows, items], dtype=np.float64)

        return pairs.with_scores(self.name, pair_values(requests, pairs, values))
