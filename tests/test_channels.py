"""The catalogue-scoring recall channels on tiny data with hand-worked expectations."""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.recall.content import item_terms
from recfunnel.recall.trending import TrendingChannel, TrendingConfig
from recfunnel.types import History, Requests


def test_content_terms_are_unit_rows_and_shared_terms_make_neighbours():
    items = pd.DataFrame(
        {
            "title": ["Star Wars", "Star Trek", "Toy Story", "Heat"],
            "genres": ["Sci-Fi", "Sci-Fi", "Animation", "Crime"],
            "year": [1977, 1979, 1995, 1995],
        }
    )
    x = item_terms(items, genre_weight=2.0, min_df=1)
    np.testing.assert_allclose(np.asarray(x.multiply(x).sum(axis=1)).ravel(), 1.0)
    cos = (x @ x.T).toarray()
    # "star" and "Sci-Fi" tie the first two; "Heat" shares only the 1990s with "Toy Story".
    assert cos[0, 1] > cos[2, 3] > 0 and cos[0, 2] == 0


def test_trending_shares_the_window_and_removes_known_items():
    day = 86_400
    train = pd.DataFrame(
        {
            "user_id": [1, 2, 3, 1, 2],
            "item_id": [10, 20, 20, 30, 30],
            "rating": [5, 5, 4, 5, 2],  # the last is not a like
            "timestamp": [0, 9 * day, 10 * day, 10 * day, 10 * day],
        }
    )
    channel = TrendingChannel(TrendingConfig(window_days=2))
    channel.item_ids_ = np.array([10, 20, 30])
    channel.refresh(train)
    # Window (8, 10] days: item 20 liked twice, item 30 once; item 10 (day 0) is out.
    np.testing.assert_allclose(channel.shares_, [0.0, 2 / 3, 1 / 3])
    seen = History(
        sp.csr_matrix(([4.0], ([0], [1])), (1, 3)), sp.csr_matrix(([1.0], ([0], [1])), (1, 3))
    )
    channel._fitted()
    out = channel(Requests(np.array([7]), seen, np.array([11 * day])), k=3)
    assert out.items.tolist() == [[2, 0, -1]]  # 20 is known; then 30 (1 like), then 10


def test_content_channel_reads_tags_applied_before_the_end_of_train():
    from recfunnel.recall.content import top_tags

    tags = pd.DataFrame(
        {
            "user_id": [1, 2, 3, 1, 2, 9],
            "item_id": [10, 10, 10, 11, 11, 11],
            "tag": ["Funny", "funny ", "dark", "dark", "", "late"],
            "timestamp": [5, 6, 7, 8, 9, 100],
        }
    )
    # Distinct users per (movie, normalised tag); empty tags and tags from t >= 50 dropped.
    assert top_tags(tags, before=50, k=5) == {10: ["funny", "dark"], 11: ["dark"]}
    assert top_tags(tags, before=50, k=1) == {10: ["funny"], 11: ["dark"]}
    assert top_tags(tags, before=200, k=5)[11] == ["dark", "late"]
    items = pd.DataFrame(
        {
            "item_id": [10, 11, 12],
            "title": ["Alpha", "Beta", "Gamma"],
            "genres": ["Drama", "Drama", "Drama"],
            "year": [1990, 1990, 1990],
        }
    )
    plain = item_terms(items, genre_weight=2.0, min_df=1)
    tagged = item_terms(items, 2.0, 1, {10: ["dark"], 11: ["dark"]}, tag_weight=1.0)
    assert tagged.shape[1] == plain.shape[1] + 1  # the one tag term "t:dark"
    # A shared tag pulls 10 and 11 closer than either is to 12.
    cos = (tagged @ tagged.T).toarray()
    assert cos[0, 1] > cos[0, 2] and cos[0, 1] > (plain @ plain.T).toarray()[0, 1]
    off = item_terms(items, 2.0, 1, {10: ["dark"]}, tag_weight=0.0)
    assert (off != plain).nnz == 0  # weight 0: exactly the terms without tags
