"""Strong simple baselines every stage must beat: popularity and EASE.

Both follow the scikit-learn shape: the constructor only stores parameters, `fit` learns from
train ratings and returns `self`, learned attributes end with `_`, and `score` before `fit`
raises a clear error. Both implement the evaluator's `Scorer` protocol.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.data.schema import ITEM, USER
from recfunnel.data.split import liked
from recfunnel.errors import ConfigError, NotFittedError
from recfunnel.evaluation.protocol import interaction_matrix
from recfunnel.scale import (
    ScaleConfig,
    dense_bytes,
    keep_largest,
    plan,
    require_memory,
    sparse_ease,
)
from recfunnel.types import History


def _check_fitted(model: object, attribute: str) -> None:
    if not hasattr(model, attribute):
        raise NotFittedError(f"{type(model).__name__} is not fitted yet; call fit(train, item_ids)")


class Popularity:
    """Scores every item by its number of liked train ratings; the same list for every user.

    Items of the catalogue that have no liked train rating score 0 (ties are the evaluator's).
    """

    def fit(self, train: pd.DataFrame, item_ids: np.ndarray) -> Popularity:
        """train: ratings (only rating >= 4 count); item_ids (n_items,): the catalogue."""
        self.item_ids_ = np.asarray(item_ids, dtype=np.int64)
        counts = liked(train)[ITEM].value_counts()
        self.counts_ = counts.reindex(self.item_ids_, fill_value=0).to_numpy(dtype=np.float64)
        return self

    def score(self, user_ids: np.ndarray, history: History) -> np.ndarray:
        """(n_users, n_items): the popularity row repeated for every user."""
        _check_fitted(self, "counts_")
        return np.broadcast_to(self.counts_, (len(user_ids), len(self.counts_)))


class EASE:
    """EASE (Steck, 2019): a closed-form item-item linear model with a zero diagonal.

    With X (n_users, n_items) the binary matrix of liked train ratings and G = X^T X,
    P = (G + lambda I)^-1 and B = I - P / diag(P) (column-wise), i.e. B_ij = -P_ij / P_jj and
    B_jj = 0. A user's scores are x_u B, with x_u the user's liked items. Computed in float64.
    Catalogue items with no liked train rating get a zero column, hence score 0.

    `scale` (`recfunnel.scale`) decides from the catalogue size whether B is this dense
    matrix (ML-1M, ML-10M) or, where that would not fit, a sparse CSR: EASE over the most
    liked items with each row cut to its largest weights (`plan_` says which).

    `neighbours` > 0 keeps only the largest weights of each row of the dense B (ties at the
    cut kept), zeroing the rest: the funnel's channel and item-to-item score can, with
    `recall.ease.neighbours` and `item_to_item.neighbours` (default 0, off); at 200 a
    request's liked-row sum reads ~9 x fewer bytes (`kernel.PaddedRows`). The baseline
    keeps every weight (0).
    """

    def __init__(
        self, lam: float = 1000.0, scale: ScaleConfig | None = None, neighbours: int = 0
    ) -> None:
        self.lam = lam
        self.scale = scale
        self.neighbours = neighbours

    def fit(self, train: pd.DataFrame, item_ids: np.ndarray) -> EASE:
        """train: ratings (only rating >= 4 count); item_ids (n_items,): the catalogue."""
        if not self.lam > 0:
            raise ConfigError(f"EASE lambda must be > 0, got {self.lam}")
        if self.neighbours < 0:
            raise ConfigError(f"EASE neighbours must be >= 0, got {self.neighbours}")
        self.item_ids_ = np.asarray(item_ids, dtype=np.int64)
        self.plan_ = plan(len(self.item_ids_), self.scale)
        positives = liked(train)
        users = np.unique(positives[USER].to_numpy())
        x = interaction_matrix(positives, users, self.item_ids_)
        x.data[:] = 1.0
        if self.plan_["mode"] == "sparse":
            neighbours = int(self.plan_["neighbours"])
            neighbours = min(neighbours, self.neighbours) if self.neighbours else neighbours
            self.weights_ = sparse_ease(x, self.lam, int(self.plan_["ease_items"]), neighbours)
            return self
        require_memory(dense_bytes(len(self.item_ids_)), f"EASE over {len(self.item_ids_):,} items")
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.lam
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))  # divides column j by -P_jj
        b[np.diag_indices_from(b)] = 0.0
        self.weights_ = keep_largest(b, self.neighbours)
        return self

    def score(self, user_ids: np.ndarray, history: History) -> np.ndarray:
        """(n_users, n_items) = liked(history) @ B."""
        _check_fitted(self, "weights_")
        scores = history.liked() @ self.weights_
        return scores.toarray() if sp.issparse(scores) else np.asarray(scores)


def ease_weights(
    train: pd.DataFrame,
    item_ids: np.ndarray,
    lam: float,
    scale: ScaleConfig | None = None,
    neighbours: int = 0,
) -> np.ndarray | sp.csr_matrix:
    """EASE's item-item weights (n_items, n_items) as float32, the form the funnel's
    item-to-item score and recall channel keep (half the memory of float64): dense (each
    row cut to its `neighbours` largest, 0: all), or a sparse CSR where `scale` chooses the
    sparse model for this catalogue."""
    return EASE(lam, scale, neighbours).fit(train, item_ids).weights_.astype(np.float32)


BASELINES = {"pop": Popularity, "ease": EASE}
