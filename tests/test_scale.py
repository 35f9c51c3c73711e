"""Item x item models at large catalogues: the dense / sparse choice and the sparse models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recfunnel import scale
from recfunnel.errors import ConfigError
from recfunnel.evaluation.baselines import EASE
from recfunnel.scale import MemoryRefused, ScaleConfig, plan, sparse_ease, top_k_rows


def test_plan_is_dense_for_ml1m_and_ml10m_and_sparse_beyond() -> None:
    # Catalogue sizes of ML-1M, ML-10M, ML-20M and ML-32M (rated movies).
    assert plan(3_706)["mode"] == "dense" and plan(3_706)["neighbours"] is None
    assert plan(10_677)["mode"] == "dense"  # 32 x 10,677^2 bytes = 3.4 GB <= 4 GB
    big = plan(26_744)
    assert big["mode"] == "sparse" and big["neighbours"] == 200
    # As many EASE items as 4 GB allow: 32 x n^2 <= 4 GiB.
    assert big["ease_items"] == 11_585 and 32 * 11_585**2 <= 4 << 30 < 32 * 11_586**2
    assert plan(87_585)["ease_items"] == 11_585
    assert plan(26_744, ScaleConfig(ease_items=5_000))["ease_items"] == 5_000
    assert plan(100, ScaleConfig(item_item="sparse", ease_items=5_000))["ease_items"] == 100
    assert "scale.item_item=sparse" in scale.describe(plan(100, ScaleConfig(item_item="sparse")))


def test_forcing_dense_past_the_budget_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match=r"needs ~21\.3 GB for 26,744 items.*memory_gb=4"):
        plan(26_744, ScaleConfig(item_item="dense"))
    assert plan(26_744, ScaleConfig(item_item="dense", memory_gb=32))["mode"] == "dense"
    with pytest.raises(ConfigError, match="memory_gb must be > 0"):
        plan(10, ScaleConfig(memory_gb=0))


def test_memory_is_checked_against_what_the_system_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "available_bytes", lambda: 1 << 30)
    scale.require_memory(1 << 29, "small")
    with pytest.raises(MemoryRefused, match=r"big needs ~2\.0 GB but only 1\.0 GB is available"):
        scale.require_memory(2 << 30, "big")


def test_top_k_rows_keeps_each_rows_largest() -> None:
    rows = np.array([[0.1, 0.5, -1.0, 0.3], [0.0, 0.0, 2.0, 0.0]])
    kept = top_k_rows(rows, 2).toarray()
    # Row 0 keeps 0.5 and 0.3; row 1's second largest is a 0, which is dropped.
    np.testing.assert_array_equal(kept, [[0, 0.5, 0, 0.3], [0, 0, 2.0, 0]])
    np.testing.assert_array_equal(top_k_rows(rows, 9).toarray(), rows)


def _liked(n_users: int, n_items: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(n_users, 3)) @ rng.normal(size=(3, n_items))
    users, items = np.nonzero(taste + rng.normal(size=taste.shape) > 1.0)
    return pd.DataFrame({"user_id": users + 1, "item_id": items + 1, "rating": 5, "timestamp": 0})


def test_sparse_ease_over_every_item_with_every_neighbour_is_ease() -> None:
    train = _liked(300, 40)
    items = np.arange(1, 41)
    dense = EASE(50.0).fit(train, items)
    cfg = ScaleConfig(item_item="sparse", ease_items=40, neighbours=40)
    sparse = EASE(50.0, cfg).fit(train, items)
    assert dense.plan_["mode"] == "dense" and sparse.plan_["mode"] == "sparse"
    assert sp.issparse(sparse.weights_)
    # The zero diagonal and any exact zeros are not stored; everything else matches.
    np.testing.assert_allclose(sparse.weights_.toarray(), dense.weights_, rtol=1e-5, atol=1e-7)


def test_sparse_ease_restricts_to_the_most_liked_items() -> None:
    train = _liked(300, 40)
    x = sp.csr_matrix(
        (np.ones(len(train)), (train["user_id"] - 1, train["item_id"] - 1)), shape=(300, 40)
    )
    weights = sparse_ease(x, 50.0, head_items=10, neighbours=3)
    head = np.sort(np.argsort(-np.asarray(x.sum(axis=0)).ravel(), kind="stable")[:10])
    touched = np.union1d(*weights.nonzero())
    assert set(touched) <= set(head)  # nothing outside the 10 most liked
    assert np.diff(weights.indptr).max() <= 3  # at most 3 neighbours per row
    # The kept weights are EASE's on the head alone.
    xh = x[:, head].toarray()
    p = np.linalg.inv(xh.T @ xh + 50.0 * np.eye(10))
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0)
    rows, cols = weights.nonzero()
    local = {h: j for j, h in enumerate(head)}
    expected = b[[local[r] for r in rows], [local[c] for c in cols]]
    np.testing.assert_allclose(weights[rows, cols].A1, expected, rtol=1e-5)
    top3 = np.sort(b, axis=1)[:, -3:]
    np.testing.assert_allclose(
        np.sort(weights[head][:, head].toarray(), axis=1)[:, -3:], top3, rtol=1e-5, atol=1e-9
    )


def test_sparse_ease_scores_users_as_a_matrix() -> None:
    from recfunnel.types import History

    train = _liked(200, 30)
    model = EASE(10.0, ScaleConfig(item_item="sparse", ease_items=20, neighbours=5))
    model.fit(train, np.arange(1, 31))
    first = train[train["user_id"] <= 4]
    ratings = sp.csr_matrix(
        (first["rating"].astype(float), (first["user_id"] - 1, first["item_id"] - 1)),
        shape=(4, 30),
    )
    history = History(ratings, ratings.copy())
    scores = model.score(np.arange(1, 5), history)
    assert isinstance(scores, np.ndarray) and scores.shape == (4, 30)
    np.testing.assert_allclose(scores, (history.liked() @ model.weights_).toarray())


def test_item_to_item_scores_agree_for_dense_and_sparse_weights() -> None:
    from recfunnel.features import item_to_item_scores

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(30, 30)).astype(np.float32)
    weights[rng.random((30, 30)) < 0.7] = 0  # a sparse model's zeros
    liked = sp.csr_matrix((rng.random((5, 30)) < 0.2).astype(np.float64))
    items = rng.integers(0, 30, 40)
    dense, inverse = item_to_item_scores(weights, liked, items)
    sparse, inverse_sparse = item_to_item_scores(sp.csr_matrix(weights), liked, items)
    assert np.array_equal(inverse, inverse_sparse)
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dense, (liked.toarray() @ weights)[:, np.unique(items)], rtol=1e-5)
