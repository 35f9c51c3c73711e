"""The star-rating model (`rating_model`) and its place in the item-to-item component."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recfunnel.artifacts import RunFileError
from recfunnel.data.schema import ITEM, RATING, TIME, USER
from recfunnel.errors import ConfigError
from recfunnel.item_to_item import RATING_SCORE, ItemToItem, ItemToItemConfig
from recfunnel.kernel import Row, UserRequest
from recfunnel.rating_model import RatingModel, fit_ratings
from recfunnel.types import Candidates, History, Pairs, Requests


def planted_ratings(n_users=300, n_items=80, dim=3, per_user=30, seed=0):
    """Stars from known factors (rounded, clipped to 1..5), each user rating a random subset:
    a factorisation can learn them, the item means alone cannot."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, dim)), rng.normal(size=(n_items, dim))
    bias = rng.normal(scale=0.5, size=n_items)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, per_user, replace=False):
            stars = np.clip(np.rint(3 + bias[i] + p[u] @ q[i]), 1, 5)
            rows.append((u + 1, i + 1, stars, 1000 + len(rows)))
    return pd.DataFrame(rows, columns=[USER, ITEM, RATING, TIME]), np.arange(1, n_items + 1)


def rmse(model, ratings, item_ids, held):
    """The held-out ratings' error, each user folded in from their other ratings."""
    errors = []
    for _, user in held.groupby(USER):
        known = ratings[(ratings[USER] == user[USER].iloc[0]) & ~ratings.index.isin(held.index)]
        items = np.searchsorted(item_ids, known[ITEM].to_numpy())
        order = np.argsort(items)
        stars = known[RATING].to_numpy(float)[order]
        pred = model.predict(items[order], stars, np.searchsorted(item_ids, user[ITEM]))
        errors.append(pred - user[RATING].to_numpy())
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def test_the_factorisation_predicts_held_out_stars_better_than_the_item_means():
    ratings, item_ids = planted_ratings()
    held = ratings.groupby(USER).tail(5)
    train = ratings.drop(held.index)
    model = fit_ratings(train, item_ids, dim=3, lam=5.0, iters=8)
    means_only = fit_ratings(train, item_ids, dim=1, lam=1e6, iters=8)  # factors shrunk to 0
    assert rmse(model, ratings, item_ids, held) < 0.8 * rmse(means_only, ratings, item_ids, held)


def test_fold_in_reads_the_history_at_request_time():
    ratings, item_ids = planted_ratings()
    model = fit_ratings(ratings, item_ids, dim=3, lam=5.0, iters=8)
    # No history: the mean plus the item bias.
    cold = model.predict(np.array([], dtype=np.int64), np.array([]), np.arange(5))
    np.testing.assert_allclose(cold, model.mean + model.item_bias[:5])
    # Five stars for the items most like item 0 raise item 0's prediction.
    similar = np.argsort(-(model.item_factors @ model.item_factors[0]))[1:6]
    items = np.sort(similar)
    low = model.predict(items, np.full(5, 1.0), np.array([0]))
    high = model.predict(items, np.full(5, 5.0), np.array([0]))
    assert high[0] > low[0] + 0.5


def test_pair_scores_are_the_one_request_predictions_bit_for_bit():
    ratings, item_ids = planted_ratings()
    model = fit_ratings(ratings, item_ids, dim=3, lam=5.0, iters=4)
    rng = np.random.default_rng(1)
    n_req, n_items = 6, len(item_ids)
    dense = np.where(rng.random((n_req, n_items)) < 0.2, rng.integers(1, 6, (n_req, n_items)), 0)
    dense[2] = 0  # a request without history
    history = History(sp.csr_matrix(dense.astype(float)), sp.csr_matrix((dense > 0) * 1.0))
    requests = Requests(np.arange(n_req), history, np.full(n_req, 10))
    rows = rng.integers(0, n_req, 50)
    items = rng.integers(0, n_items, 50)
    scores = model.pair_scores(requests, rows, items)
    for b in range(n_req):
        hist = np.flatnonzero(dense[b])
        sel = rows == b
        one = model.predict(hist, dense[b, hist].astype(float), items[sel])
        assert np.array_equal(scores[sel], one)


def test_the_item_to_item_kernel_adds_the_batch_paths_rating_score(tmp_path, synthetic_ml):
    from recfunnel.data.split import make_split
    from recfunnel.stage import FitData

    split = make_split(synthetic_ml.ratings)
    item_ids = np.unique(synthetic_ml.ratings[ITEM])
    data = FitData(synthetic_ml, split, item_ids, progress=False)
    component = ItemToItem(ItemToItemConfig(rating_dim=4)).fit(data)
    user = int(split.train[USER].iloc[0])
    own = split.train[split.train[USER] == user]
    request = UserRequest.build(
        user,
        np.searchsorted(item_ids, own[ITEM]),
        own[RATING].to_numpy(),
        own[TIME].to_numpy(),
        len(item_ids),
        0,
    )
    candidates = np.array([[3, 1, 4, 15, 9, -1]])
    batch = component(request.requests, Candidates(candidates, {}, {}))
    fast = component.serving_kernel().row(request, Row(candidates[0], {}, {}))
    np.testing.assert_array_equal(fast.scores[RATING_SCORE], batch.scores[RATING_SCORE][0])
    assert np.isnan(fast.scores[RATING_SCORE][-1])
    # A saved component loads with the same rating model; a missing file is named.
    component.save(tmp_path / "i2i")
    loaded = ItemToItem.load(tmp_path / "i2i", data)
    pairs = Pairs(np.zeros(5, dtype=np.int64), np.arange(5))
    np.testing.assert_array_equal(
        loaded.score_pairs(request.requests, pairs).scores[RATING_SCORE],
        component.score_pairs(request.requests, pairs).scores[RATING_SCORE],
    )
    (tmp_path / "i2i" / "rating_model.npz").unlink()
    with pytest.raises(RunFileError, match="rating_model.npz is missing"):
        ItemToItem.load(tmp_path / "i2i", data)
    # Without a rating model there is no rating score.
    plain = ItemToItem(ItemToItemConfig(rating_dim=None)).fit(data)
    assert RATING_SCORE not in plain.score_pairs(request.requests, pairs).scores


def test_a_rating_model_of_another_shape_is_a_run_file_error(tmp_path):
    from recfunnel.item_to_item import load_rating_model

    model = RatingModel(3.5, np.zeros(4), np.zeros((4, 2)), 1.0)
    np.savez(tmp_path / "rating_model.npz", **model.arrays())
    assert load_rating_model(tmp_path / "rating_model.npz", 4, 2).dim == 2
    with pytest.raises(RunFileError, match=r"expected item factors \(5, 2\)"):
        load_rating_model(tmp_path / "rating_model.npz", 5, 2)
    (tmp_path / "rating_model.npz").write_text("not numpy")
    with pytest.raises(RunFileError, match="not a rating model"):
        load_rating_model(tmp_path / "rating_model.npz", 4, 2)


def test_bad_rating_settings_are_config_errors():
    for bad in ({"rating_dim": 0}, {"rating_lam": 0.0}, {"rating_iters": 0}):
        with pytest.raises(ConfigError, match="item_to_item.rating"):
            ItemToItemConfig(**bad).validate()


def test_rank_reading_a_rating_score_nobody_computed_is_a_config_error(synthetic_ml):
    """rank.use_rating without item_to_item.rating_dim: one clear line, not a KeyError."""
    from recfunnel.data.split import make_split
    from recfunnel.rank.stage import RankConfig, RankStage
    from recfunnel.stage import FitData, Stacked

    split = make_split(synthetic_ml.ratings)
    data = FitData(synthetic_ml, split, np.unique(synthetic_ml.ratings[ITEM]), progress=False)
    n = len(data.item_ids)
    history = History(sp.csr_matrix((1, n)), sp.csr_matrix((1, n)))
    requests = Requests(np.array([1]), history, np.zeros(1, dtype=np.int64))
    pairs = Pairs(np.zeros(2, dtype=np.int64), np.arange(2), labels=np.ones(2, np.float32))
    for name in ("recall", "prerank", "item_to_item"):
        pairs = pairs.with_scores(name, np.zeros(2))
    pairs = dataclasses.replace(pairs, rated=np.ones(2, bool), candidate=np.ones(2, bool))
    with pytest.raises(ConfigError, match="item_to_item.rating_dim"):
        RankStage(RankConfig(use_rating=True)).fit(data, Stacked(requests, pairs))
