"""Item-to-item recall channels: EASE and RP3beta.

Both score an item for a user as the sum of its similarities to the items the user liked,
`score(u, i) = sum over liked h of W[h, i]`, with W (n_items, n_items) learned from the liked
train ratings (X, users x items, binary):

- **EASE** (Steck, 2019): the closed-form linear model with a zero diagonal,
  W = I - P / diag(P), P = (X^T X + lambda I)^-1.
- **RP3beta** (Paudel et al., 2017): a three-step random walk item -> user -> item,
  W[h, i] = sum_u P(u | h)^alpha P(i | u)^alpha, each column divided by popularity(i)^beta so
  that the walk does not always end on the most popular movies; only the `neighbours` largest
  entries of each row are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recfunnel.config import param
from recfunnel.data.schema import USER
from recfunnel.data.split import liked
from recfunnel.errors import ConfigError
from recfunnel.evaluation.baselines import ease_weights
from recfunnel.evaluation.protocol import interaction_matrix
from recfunnel.features import check_decay_days, liked_pair_scores
from recfunnel.recall.channel import CatalogueChannel
from recfunnel.scale import (
    NEIGHBOURS,
    dense_bytes,
    keep_largest,
    load_weights_matrix,
    plan,
    require_memory,
    save_weights,
    sparse_product_top_k,
)
from recfunnel.stage import FitData, Stacked, Validate
from recfunnel.types import Pairs, Requests, pair_values


class _WeightsChannel(CatalogueChannel):
    """A channel whose state is one item-item matrix `weights_` (n_items, n_items)."""

    fitted_attribute = "weights_"

    def catalogue_scores(self, requests: Requests) -> np.ndarray:
        # The history in the weights' dtype: a float64 one would make scipy upcast the whole
        # (n_items, n_items) matrix on every call (28 ms for one user on ML-1M, not 0.3 ms).
        liked = requests.history.recency_liked(self.config.decay_days).astype(self.weights_.dtype)
        scores = liked @ self.weights_
        if sp.issparse(scores):  # the sparse model of a large catalogue (recfunnel.scale)
            return scores.toarray().astype(np.float64)
        return np.asarray(scores, dtype=np.float64)

    def score_pairs(self, requests: Requests, pairs: Pairs) -> Pairs:
        self.check_fitted()
        scores = partial(liked_pair_scores, self.weights_, decay_days=self.config.decay_days)
        return pairs.with_scores(self.name, pair_values(requests, pairs, scores))

    def _save(self, directory: Path) -> None:
        save_weights(directory, self.weights_)

    def _load(self, directory: Path, data: FitData) -> None:
        self.weights_ = load_weights_matrix(directory, len(data.item_ids))


@dataclass(frozen=True)
class EASEChannelConfig:
    """EASE as a recall channel."""

    lam: float = param(1000.0, "L2 regularisation of the item-item regression")
    decay_days: float = param(
        0.0,
        "recency of the user's liked movies: each weighs exp(-age / decay_days), age in days "
        "before the user's latest rating (0: 1 each)",
        saved_without=0.0,  # runs saved before the field summed their liked rows, 1 each
    )
    neighbours: int = param(
        0,
        "largest weights kept per item row, the rest set to 0 (0: all, the full EASE)",
        saved_without=0,  # runs saved before the field kept every weight
    )

    def validate(self) -> None:
        if not self.lam > 0:
            raise ConfigError(f"lam must be > 0, got {self.lam}")
        if self.neighbours < 0:
            raise ConfigError(f"recall.ease.neighbours must be >= 0, got {self.neighbours}")
        check_decay_days(self.decay_days)


class EASEChannel(_WeightsChannel):
    """EASE's top-K of each request."""

    name = "ease"
    config_class = EASEChannelConfig

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> EASEChannel:
        cfg = self.config
        cfg.validate()
        self.weights_ = ease_weights(
            data.split.train, data.item_ids, cfg.lam, data.scale, cfg.neighbours
        )
        self._fitted()
        return self


@dataclass(frozen=True)
class RP3betaConfig:
    """RP3beta as a recall channel."""

    alpha: float = param(1.0, "exponent of the walk's transition probabilities")
    beta: float = param(0.5, "popularity penalty: column i is divided by popularity(i)^beta")
    neighbours: int = param(NEIGHBOURS, "largest similarities kept per item (0: all)")
    decay_days: float = param(
        0.0,
        "recency of the user's liked movies, as recall.ease.decay_days (0: 1 each)",
        saved_without=0.0,
    )

    def validate(self) -> None:
        if self.alpha <= 0 or self.beta < 0 or self.neighbours < 0:
            raise ConfigError("alpha must be > 0, beta >= 0 and neighbours >= 0")
        check_decay_days(self.decay_days)


class RP3betaChannel(_WeightsChannel):
    """RP3beta's top-K of each request."""

    name = "rp3beta"
    config_class = RP3betaConfig

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> RP3betaChannel:
        cfg = self.config
        cfg.validate()
        positives = liked(data.split.train)
        users = np.unique(positives[USER].to_numpy())
        x = interaction_matrix(positives, users, data.item_ids)
        x.data[:] = 1.0
        popularity = np.asarray(x.sum(axis=0)).ravel()
        p_ui = sp.diags(1.0 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1)) @ x
        p_iu = sp.diags(1.0 / np.maximum(popularity, 1)) @ x.T.tocsr()
        if cfg.alpha != 1.0:
            p_ui, p_iu = p_ui.power(cfg.alpha), p_iu.power(cfg.alpha)
        chosen = plan(len(data.item_ids), data.scale)
        if chosen["mode"] == "sparse":
            # Never the dense (n_items, n_items) product: row blocks, each cut as it is built.
            neighbours = min(n for n in (cfg.neighbours, chosen["neighbours"]) if n)
            self.weights_ = sparse_product_top_k(
                p_iu, p_ui, int(neighbours), 1.0 / np.maximum(popularity, 1) ** cfg.beta
            )
            self._fitted()
            return self
        require_memory(
            dense_bytes(len(data.item_ids)), f"RP3beta over {len(data.item_ids):,} items"
        )
        weights = (p_iu @ p_ui).toarray()
        weights /= np.maximum(popularity, 1)[None, :] ** cfg.beta
        np.fill_diagonal(weights, 0.0)
        # Keep each row's largest entries (a sparse neighbourhood), zero the rest.
        self.weights_ = keep_largest(weights, cfg.neighbours).astype(np.float32)
        self._fitted()
        return self
