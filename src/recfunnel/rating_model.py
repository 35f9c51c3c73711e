"""How many stars a user would give a movie: a biased matrix factorisation of the ratings.

    stars(u, i) = mu + b_u + b_i + p_u . q_i

The rank stage's like head predicts P(liked | rated), that is whether the stars will be
>= 4. Its own inputs carry the user's and the item's like rates, and those two alone
already give the head's AUC (on ML-1M's test, summing their logits gives 0.757; the head
gave 0.753). What they miss is the interaction: *this* user's taste against *this* movie.
A factorisation of the stars learns that from all of train's ratings (the 1-2 star ones
too, which the recall channels never read), where the like head has only its replayed
requests. So the item-to-item component computes it for every candidate and the rank model
reads it as a dense input (`rank.use_rating`).

Only the item side (mu, b_i, q_i) is a fitted model, by alternating least squares (ALS)
with an L2 penalty lam. The user side is *folded in* from whatever history a request
brings, as the ridge solution of the user's own ratings against the fixed item side:

    [p_u; b_u] = (X^T X + lam I)^-1 X^T (r - mu - b_h),    X = [q_h, 1] over the rated h

So a rating recorded a second ago moves the prediction at once, a replayed training
request reads its history and never its targets, and a user without history gets
mu + b_i. Like the EASE score, the item side is fitted on the early part of train for the
later stages' examples and refitted on all of train for serving (`training.recipe`); a
refit rotates q but not what a predicted star means, so the feature keeps its scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.data.schema import ITEM, RATING, USER
from recfunnel.types import Requests

_INIT_SEED = 0  # ALS's starting item factors; ridge ALS barely depends on them


@dataclass(frozen=True)
class RatingModel:
    """The item side of the factorisation: mean (a float), item_bias (n_items,) and
    item_factors (n_items, d) float64, catalogue positions (zero for items without a train
    rating), and the penalty lam used again when folding a user in."""

    mean: float
    item_bias: np.ndarray
    item_factors: np.ndarray
    lam: float

    @property
    def dim(self) -> int:
        return int(self.item_factors.shape[1])

    def fold_in(self, items: np.ndarray, ratings: np.ndarray) -> tuple[np.ndarray, float]:
        """(p (d,), b_u) of one user from their rated catalogue positions (h,), ascending,
        and those stars (h,)."""
        if not len(items):
            return np.zeros(self.dim), 0.0
        x = _design(self.item_factors[items])
        return _ridge(x, ratings - self.mean - self.item_bias[items], self.lam)

    def predict(self, items: np.ndarray, ratings: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Predicted stars (n,) float64 of the candidates (n,) for one user's history."""
        p, b = self.fold_in(items, ratings)
        q = self.item_factors[candidates]
        return self.mean + b + self.item_bias[candidates] + (q * p).sum(axis=1)

    def pair_scores(self, requests: Requests, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted stars (n,) of the pairs (rows index `requests`), each request's user
        folded in once from its history: the same arithmetic as one `predict` per request,
        so the fast path gives the same floats."""
        ratings = requests.history.ratings.tocsr()
        if not ratings.has_sorted_indices:
            ratings = ratings.sorted_indices()
        out = np.empty(len(rows), dtype=np.float64)
        order = np.argsort(rows, kind="stable")
        bounds = np.searchsorted(rows[order], np.arange(len(requests) + 1))
        for b in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[b] : bounds[b + 1]]
            lo, hi = ratings.indptr[b], ratings.indptr[b + 1]
            out[sel] = self.predict(ratings.indices[lo:hi], ratings.data[lo:hi], items[sel])
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """What a run directory stores (see `of_arrays`)."""
        return {
            "mean": np.array(self.mean),
            "item_bias": self.item_bias,
            "item_factors": self.item_factors,
            "lam": np.array(self.lam),
        }

    @classmethod
    def of_arrays(cls, arrays: dict[str, np.ndarray]) -> RatingModel:
        return cls(
            float(arrays["mean"]),
            np.asarray(arrays["item_bias"], dtype=np.float64),
            np.asarray(arrays["item_factors"], dtype=np.float64),
            float(arrays["lam"]),
        )


def fit_ratings(
    train: pd.DataFrame, item_ids: np.ndarray, *, dim: int, lam: float, iters: int
) -> RatingModel:
    """ALS on every rating of `train` (stars as they are, centred by their mean): `iters`
    rounds of solving all users given the items, then all items given the users."""
    user_codes, users = pd.factorize(train[USER], sort=True)
    item_codes = np.searchsorted(item_ids, train[ITEM].to_numpy())
    stars = train[RATING].to_numpy(dtype=np.float64)
    mean = float(stars.mean())
    by_user = _groups(user_codes, len(users))
    by_item = _groups(item_codes, len(item_ids))
    rng = np.random.default_rng(_INIT_SEED)
    item_factors = 0.1 * rng.standard_normal((len(item_ids), dim))
    item_bias = np.zeros(len(item_ids))
    for _ in range(iters):
        user_factors, user_bias = _solve_side(
            by_user, item_codes, item_factors, item_bias, stars - mean, lam
        )
        item_factors, item_bias = _solve_side(
            by_item, user_codes, user_factors, user_bias, stars - mean, lam
        )
    return RatingModel(mean, item_bias, item_factors, lam)


def _groups(codes: np.ndarray, n: int) -> sp.csr_matrix:
    """Row g lists the positions of the ratings whose code is g (a CSR of positions)."""
    order = np.argsort(codes, kind="stable")
    indptr = np.searchsorted(codes[order], np.arange(n + 1))
    return sp.csr_matrix((np.ones(len(order)), order, indptr), shape=(n, len(codes)))


def _solve_side(
    groups: sp.csr_matrix,
    other: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    centred: np.ndarray,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One ALS half-step: for each group g (a user or an item), the ridge solution of its
    ratings' centred stars minus the other side's bias, against [other side's factors, 1].
    Groups without ratings get zeros."""
    dim = factors.shape[1]
    out, out_bias = np.zeros((groups.shape[0], dim)), np.zeros(groups.shape[0])
    for g in np.flatnonzero(np.diff(groups.indptr)):
        sel = groups.indices[groups.indptr[g] : groups.indptr[g + 1]]
        idx = other[sel]
        out[g], out_bias[g] = _ridge(_design(factors[idx]), centred[sel] - bias[idx], lam)
    return out, out_bias


def _design(factors: np.ndarray) -> np.ndarray:
    """[factors, 1] (h, d + 1): the bias is the last coefficient."""
    x = np.empty((factors.shape[0], factors.shape[1] + 1))
    x[:, :-1] = factors
    x[:, -1] = 1.0
    return x


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """argmin_w |x w - y|^2 + lam |w|^2, split as (w[:-1], w[-1])."""
    gram = x.T @ x
    gram.flat[:: gram.shape[0] + 1] += lam
    w = np.linalg.solve(gram, x.T @ y)
    return w[:-1], float(w[-1])
