"""Popularity and EASE: hand-checked fits, clear errors, and learning on planted structure."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recfunnel.data.split import make_split
from recfunnel.errors import ConfigError, NotFittedError
from recfunnel.evaluation.baselines import EASE, Popularity, ease_weights
from recfunnel.evaluation.protocol import Evaluator, catalogue
from recfunnel.scale import keep_largest
from recfunnel.types import History


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def empty_history(n_users, n_items):
    return History(sp.csr_matrix((n_users, n_items)), sp.csr_matrix((n_users, n_items)))


def test_popularity_counts_liked_train_ratings_only():
    train = frame([(1, 10, 5, 1), (2, 10, 4, 2), (3, 10, 1, 3), (1, 20, 3, 4), (2, 30, 4, 5)])
    model = Popularity().fit(train, np.array([10, 20, 30, 40]))
    # 10: two likes (the 1 does not count); 20: a 3 does not count; 30: one; 40: unseen.
    assert model.counts_.tolist() == [2.0, 0.0, 1.0, 0.0]
    scores = model.score(np.array([7, 8]), empty_history(2, 4))
    assert scores.shape == (2, 4) and scores[1].tolist() == [2.0, 0.0, 1.0, 0.0]


def test_ease_matches_per_item_ridge_regression():
    # EASE's column j is the ridge regression of item j on all other items:
    # B[-j, j] = (G[-j, -j] + lam I)^-1 G[-j, j], B[j, j] = 0. Solve that directly per column.
    rng = np.random.default_rng(0)
    x = (rng.random((40, 6)) < 0.4).astype(float)
    users, cols = np.nonzero(x)
    train = frame([(u, 100 + c, 5, 0) for u, c in zip(users, cols, strict=True)])
    items = np.arange(100, 107)  # item 106 is never rated: its column must be zero
    model = EASE(lam=3.0).fit(train, items)
    gram = x.T @ x
    for j in range(6):
        rest = [i for i in range(6) if i != j]
        expected = np.linalg.solve(gram[np.ix_(rest, rest)] + 3.0 * np.eye(5), gram[rest, j])
        np.testing.assert_allclose(model.weights_[rest, j], expected, rtol=1e-10, atol=1e-12)
        assert model.weights_[j, j] == 0.0
    assert not model.weights_[:, 6].any() and not model.weights_[6].any()
    # Scores read liked history only: a rating of 2 for item 100 adds nothing.
    ratings = sp.csr_matrix(np.array([[2.0, 5.0, 0, 0, 0, 0, 0]]))
    history = History(ratings, ratings.copy())
    np.testing.assert_allclose(model.score(np.array([0]), history)[0], model.weights_[1])


def test_ease_neighbours_keep_each_rows_largest_weights():
    # The funnel's EASE keeps each row's `neighbours` largest weights (ties at the cut kept)
    # and zeroes the rest; the kept ones are the full model's own values.
    rng = np.random.default_rng(1)
    x = (rng.random((60, 12)) < 0.4).astype(float)
    users, cols = np.nonzero(x)
    train = frame([(u, 100 + c, 5, 0) for u, c in zip(users, cols, strict=True)])
    items = np.arange(100, 112)
    full = EASE(lam=3.0).fit(train, items).weights_
    cut = EASE(lam=3.0, neighbours=4).fit(train, items).weights_
    fourth = np.sort(full, axis=1)[:, -4][:, None]  # each row's 4th largest weight
    np.testing.assert_array_equal(cut, np.where(full >= fourth, full, 0.0))
    assert (np.count_nonzero(cut, axis=1) <= 4).all() and cut.any()
    assert ease_weights(train, items, 3.0, neighbours=4).dtype == np.float32
    np.testing.assert_array_equal(EASE(lam=3.0, neighbours=0).fit(train, items).weights_, full)
    np.testing.assert_array_equal(EASE(lam=3.0, neighbours=12).fit(train, items).weights_, full)
    with pytest.raises(ConfigError, match="neighbours"):
        EASE(lam=3.0, neighbours=-1).fit(train, items)


def test_keep_largest_keeps_ties_at_the_cut():
    weights = np.array([[3.0, 1.0, 2.0, 2.0], [0.5, -1.0, 4.0, 0.0]])
    out = keep_largest(weights.copy(), 2)
    np.testing.assert_array_equal(out, [[3.0, 0.0, 2.0, 2.0], [0.5, 0.0, 4.0, 0.0]])
    np.testing.assert_array_equal(keep_largest(weights.copy(), 0), weights)


def test_errors_before_fit_and_bad_lambda():
    with pytest.raises(NotFittedError, match="fit"):
        EASE().score(np.array([1]), empty_history(1, 3))
    with pytest.raises(NotFittedError):
        Popularity().score(np.array([1]), empty_history(1, 3))
    with pytest.raises(ConfigError, match="lambda"):
        EASE(lam=0).fit(frame([(1, 1, 5, 0)]), np.array([1]))


def test_baselines_learn_planted_structure(synthetic_ml):
    split = make_split(synthetic_ml.ratings)
    items = catalogue(synthetic_ml.ratings)
    ev = Evaluator(split, items, ks=(20,))
    pop = ev.evaluate(Popularity().fit(split.train, items), "valid").groups["warm"]
    ease = ev.evaluate(EASE(50.0).fit(split.train, items), "valid").groups["warm"]

    class Random:
        item_ids_ = items

        def score(self, user_ids, history):
            return np.random.default_rng(0).random((len(user_ids), len(items)))

    rand = ev.evaluate(Random(), "valid").groups["warm"]
    assert pop["ndcg@20"] > 1.5 * rand["ndcg@20"]
    assert ease["ndcg@20"] > pop["ndcg@20"]
