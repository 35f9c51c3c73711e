"""The value types between stages: hand-worked expectations for Candidates, Pairs, Requests."""

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.types import Candidates, Embeddings, History, Pairs, Requests


def _cands() -> Candidates:
    return Candidates(
        np.array([[7, 3, 5], [2, 9, -1]]),
        {"recall": np.array([[3.0, 2.0, 1.0], [2.0, 1.0, np.nan]])},
        {"two_tower": np.array([[1, 2, 3], [1, 2, 0]])},
    )


def test_candidates_top_reorder_pairs_unflatten():
    c = _cands().with_scores("prerank", np.array([[0.1, 0.9, 0.9], [0.5, 0.7, np.nan]]))
    top = c.top("prerank", 2)
    # Row 0: 0.9 ties between columns 1 and 2 -> the earlier column (item 3) first.
    assert top.items.tolist() == [[3, 5], [9, 2]]
    assert top.scores["recall"].tolist() == [[2.0, 1.0], [1.0, 2.0]]
    # The channel ranks travel with their items.
    assert top.channels["two_tower"].tolist() == [[2, 3], [2, 1]]
    pairs = c.pairs()
    assert pairs.rows.tolist() == [0, 0, 0, 1, 1] and pairs.items.tolist() == [7, 3, 5, 2, 9]
    assert pairs.scores["recall"].tolist() == [3.0, 2.0, 1.0, 2.0, 1.0]
    back = c.unflatten(np.arange(5.0))
    assert back[0].tolist() == [0, 1, 2] and back[1, :2].tolist() == [3, 4]
    assert np.isnan(back[1, 2])
    # Asking for more than a row holds pads with -1, NaN and rank 0.
    wide = c.top("recall", 3)
    assert wide.items[1].tolist() == [2, 9, -1] and np.isnan(wide.scores["recall"][1, 2])
    assert wide.channels["two_tower"][1].tolist() == [1, 2, 0]


def test_candidates_are_immutable_and_with_scores_returns_a_new_value():
    c = _cands()
    with pytest.raises(TypeError):
        c.scores["prerank"] = c.scores["recall"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        c.items = c.items  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        c.items[0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        c.scores["recall"][0, 0] = 1.0
    d = c.with_scores("prerank", np.arange(5.0))  # flat values, in pairs() order
    assert "prerank" not in c.scores and d.scores["prerank"][1].tolist()[:2] == [3.0, 4.0]
    assert np.isnan(d.scores["prerank"][1, 2])


def test_concat_stacks_rows_with_their_embeddings():
    a = Candidates(
        np.array([[1, 2]]),
        {"s": np.array([[1.0, 0.5]])},
        {},
        Embeddings(np.ones((1, 2), np.float32), np.zeros((3, 2), np.float32)),
    )
    b = Candidates(
        np.array([[0, -1]]),
        {"s": np.array([[2.0, np.nan]])},
        {},
        Embeddings(np.full((1, 2), 2, np.float32), np.zeros((3, 2), np.float32)),
    )
    both = Candidates.concat([a, b])
    assert both.items.tolist() == [[1, 2], [0, -1]]
    assert both.embeddings.users[:, 0].tolist() == [1.0, 2.0]


def test_pairs_subset_and_concat_keep_labels_aligned():
    p = Pairs(
        np.array([0, 0, 1]),
        np.array([4, 5, 6]),
        {"s": np.array([1.0, 2.0, 3.0])},
        labels=np.array([1, 0, 1], np.float32),
        rated=np.array([True, False, True]),
        candidate=np.array([True, True, False]),
    )
    q = p.subset(np.array([False, True, True]))
    assert (
        q.items.tolist() == [5, 6]
        and q.labels.tolist() == [0, 1]
        and q.scores["s"].tolist() == [2.0, 3.0]
    )
    r = q.concat(p.subset(np.array([0])))
    assert r.items.tolist() == [5, 6, 4] and r.candidate.tolist() == [True, False, True]


def _history(rows: list[list[tuple[int, int, int]]], n_items: int = 4) -> History:
    """rows[b] = [(column, rating, time)]."""
    r, c, v, t = [], [], [], []
    for b, row in enumerate(rows):
        for col, rating, time in row:
            r.append(b), c.append(col), v.append(rating), t.append(time)
    shape = (len(rows), n_items)
    return History(sp.csr_matrix((v, (r, c)), shape), sp.csr_matrix((t, (r, c)), shape))


def test_requests_drop_history_after_now():
    """Causality lives in the value type: a rating dated after the request is invisible."""
    history = _history([[(0, 5, 10), (1, 4, 20), (2, 3, 30)], [(3, 5, 5)]])
    req = Requests(np.array([1, 2]), history, np.array([20, 4]))
    assert req.history.ratings.toarray().tolist() == [[5, 4, 0, 0], [0, 0, 0, 0]]
    assert req.history.timestamps.toarray().tolist() == [[10, 20, 0, 0], [0, 0, 0, 0]]


def test_requests_after_history_see_all_of_it():
    history = _history([[(0, 5, 10), (1, 4, 50)], []])
    req = Requests.after_history(np.array([1, 2]), history, floor=30)
    assert req.now.tolist() == [50, 30]
    assert req.history.ratings.nnz == 2
