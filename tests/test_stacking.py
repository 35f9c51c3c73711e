"""Leakage-free training data for pre-rank and rank: the time slice, the replayed requests, the
labelled examples and the cross-fitted pre-rank logits. Hand-sized inputs, no training."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recfunnel.data.split import Split
from recfunnel.errors import ConfigError
from recfunnel.features import DAY
from recfunnel.prerank import PreRankStage
from recfunnel.stage import Stacked
from recfunnel.training.recipe import cross_fit_prerank
from recfunnel.training.stacking import (
    StackingConfig,
    add_like_pairs,
    build_examples,
    sample_slice_users,
    slice_requests,
    time_slice,
)
from recfunnel.types import Candidates, Embeddings, History, Pairs, Requests


def ratings(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def test_time_slice_never_cuts_a_timestamp_in_two():
    train = ratings([(1, 10, 5, t) for t in (1, 2, 3, 3, 3, 4, 5, 6, 7, 8)])
    early, late = time_slice(Split(train, train[:0], train[:0], "global"), 0.7)
    # int(0.3 * 10) = 3: the cut lands inside the three ratings at t=3, which all go late.
    assert early.train["timestamp"].max() < late["timestamp"].min()
    assert len(early.train) + len(late) == len(train) and late["timestamp"].min() == 3
    with pytest.raises(ConfigError, match="empty"):
        time_slice(Split(train[:1], train[:0], train[:0], "global"), 0.5)


def test_sample_slice_users_keeps_whole_users_and_all_at_one():
    late = ratings([(u, 10 + j, 4, 100 * u + j) for u in range(1, 11) for j in range(3)])
    assert sample_slice_users(late, 1.0, np.random.default_rng(0)) is late
    half = sample_slice_users(late, 0.5, np.random.default_rng(0))
    counts = half.groupby("user_id").size()
    # Five of the ten users, each with all three of their slice ratings.
    assert len(counts) == 5 and (counts == 3).all()
    again = sample_slice_users(late, 0.5, np.random.default_rng(0))
    assert again.equals(half)  # seeded
    with pytest.raises(ConfigError, match="user_fraction"):
        StackingConfig(user_fraction=0).validate()


def test_return_replay_asks_when_a_user_comes_back_after_a_pause():
    d = DAY
    early = ratings([(1, 10, 5, 0), (1, 11, 2, 10), (2, 10, 4, 5)])
    late = ratings(
        [
            # user 1: last early rating at t=10, back 3 days later -> request at 3d + 10.
            (1, 12, 5, 3 * d + 10),
            (1, 13, 1, 3 * d + 20),
            # user 2: rates again 1 s later (no pause), then again 2 days later.
            (2, 12, 4, 6),
            (2, 13, 5, 2 * d + 6),
            # user 3: new in the slice, one burst: never replayed.
            (3, 10, 5, 100),
            (3, 11, 5, 101),
            # user 4: new in the slice, comes back twice: one request, at the first return.
            (4, 10, 5, 200),
            (4, 11, 4, 5 * d),
            (4, 12, 3, 9 * d),
        ]
    )
    items = np.array([10, 11, 12, 13])
    replay = slice_requests(early, late, items, StackingConfig(replay="return", min_gap_days=1))
    req = replay.requests
    assert req.user_ids.tolist() == [1, 2, 4]
    assert req.now.tolist() == [3 * d + 10, 2 * d + 6, 5 * d]
    assert replay.targets[2].toarray().tolist() == [[0, 4, 3, 0]]
    # History: everything before "now"; targets: everything from it on.
    assert sorted(req.history.ratings[0].indices.tolist()) == [0, 1]
    assert sorted(req.history.ratings[1].indices.tolist()) == [0, 2]
    assert replay.targets[0].toarray().tolist() == [[0, 0, 5, 1]]
    assert replay.targets[1].toarray().tolist() == [[0, 0, 0, 5]]
    # Every history timestamp is before the request, every target at or after it.
    times = req.history.timestamps.toarray()
    assert (times[0][times[0] > 0] < req.now[0]).all()


def test_both_replay_adds_a_split_request_for_users_who_never_return():
    d = DAY
    early = ratings([(1, 10, 5, 0)])
    # user 1 returns after 3 days; user 2 rates in one burst (never returns).
    late = ratings([(1, 11, 5, 3 * d), (1, 12, 4, 3 * d + 5), (2, 10, 4, 7), (2, 13, 5, 8)])
    items = np.array([10, 11, 12, 13])
    config = StackingConfig(replay="both", min_gap_days=1, history_fraction=0.5)
    replay = slice_requests(early, late, items, config)
    back = slice_requests(early, late, items, StackingConfig(replay="return", min_gap_days=1))
    assert back.requests.user_ids.tolist() == [1]
    assert replay.requests.user_ids.tolist() == [1, 2]
    # The return request is unchanged; user 2's is the split one: 1 of 2 ratings as history.
    assert replay.targets[0].toarray().tolist() == back.targets[0].toarray().tolist()
    assert replay.requests.now.tolist() == [3 * d, 8]
    assert replay.targets[1].toarray().tolist() == [[0, 0, 0, 5]]
    assert sorted(replay.requests.history.ratings[1].indices.tolist()) == [0]
    # Every slice user is replayed, so the like head gets no extra users (and nothing fails).
    examples = Pairs(np.array([0]), np.array([1]))

    def never(*_):
        raise AssertionError("no extra users to score")

    assert add_like_pairs(replay, examples, never, early, late, items, config) == (
        replay,
        examples,
    )


def test_split_replay_uses_a_share_of_slice_ratings_as_history():
    early = ratings([(1, 10, 5, 0)])
    late = ratings([(1, 11, 5, 10), (1, 12, 5, 11), (1, 13, 2, 12), (2, 10, 4, 13)])
    items = np.array([10, 11, 12, 13])
    config = StackingConfig(replay="split", history_fraction=0.5)
    replay = slice_requests(early, late, items, config)
    assert replay.requests.user_ids.tolist() == [1, 2]
    # user 1: floor(0.5 * 3) = 1 slice rating joins the early one in the history.
    assert sorted(replay.requests.history.ratings[0].indices.tolist()) == [0, 1]
    assert replay.targets[0].toarray().tolist() == [[0, 0, 5, 2]]
    assert replay.requests.now.tolist() == [11, 13]


def test_build_examples_labels_candidates_and_adds_missed_rated_pairs():
    # 2 users x 4 candidates (catalogue positions), user 1 has one padded slot.
    cands = Candidates(
        np.array([[0, 1, 2, 3], [4, 5, 6, -1]]),
        {"recall": np.array([[4.0, 3.0, 2.0, 1.0], [3.0, 2.0, 1.0, np.nan]])},
    )
    targets = sp.csr_matrix(np.array([[5, 0, 2, 0, 0, 0, 0, 4], [0, 0, 0, 0, 0, 1, 0, 0]]))
    seen = {}

    def missed(pairs):
        seen["pairs"] = list(zip(pairs.rows.tolist(), pairs.items.tolist(), strict=True))
        return pairs.with_scores("recall", np.full(len(pairs), -9.0))

    ex = build_examples(
        cands, targets, missed, unrated_negatives=1, rated_pairs=True, rng=np.random.default_rng(0)
    )
    # Candidates: rated ones kept (0: liked, 2: disliked, 5: disliked), one unrated per user.
    cand = ex.candidate
    kept = sorted(zip(ex.rows[cand].tolist(), ex.items[cand].tolist(), strict=True))
    rated_kept = [(0, 0), (0, 2), (1, 5)]
    assert all(p in kept for p in rated_kept) and len(kept) == 5
    label = {
        (r, i): lab
        for r, i, lab in zip(ex.rows.tolist(), ex.items.tolist(), ex.labels.tolist(), strict=True)
    }
    assert label[(0, 0)] == 1 and label[(0, 2)] == 0 and label[(1, 5)] == 0
    # The missed rated pair (user 0, item 7, rating 4) is added with the callable's logit.
    assert seen["pairs"] == [(0, 7)]
    extra = ~cand
    assert ex.items[extra].tolist() == [7] and ex.labels[extra].tolist() == [1.0]
    recall = ex.scores["recall"]
    assert recall[extra].tolist() == [-9.0] and ex.rated[extra].all()
    # Recall logits travel with their pairs.
    assert recall[cand][ex.items[cand] == 0].tolist() == [4.0]


def test_build_examples_when_recall_proposed_every_rated_item():
    # No missed pair (a topk_recall near the catalogue size): the empty fancy index of the
    # missed ratings came back as a sparse-matrix object and labelling them raised.
    cands = Candidates(np.array([[0, 1, 2]]), {"recall": np.array([[3.0, 2.0, 1.0]])})
    targets = sp.csr_matrix(np.array([[5.0, 0.0, 2.0]]))
    ex = build_examples(
        cands,
        targets,
        lambda pairs: pairs.with_scores("recall", np.zeros(len(pairs))),
        unrated_negatives=1,
        rated_pairs=True,
        rng=np.random.default_rng(0),
    )
    assert ex.candidate.all() and sorted(ex.items.tolist()) == [0, 1, 2]
    assert ex.labels[np.argsort(ex.items)].tolist() == [1.0, 0.0, 0.0]


def test_cross_fitted_logits_never_come_from_a_model_that_saw_the_request(monkeypatch):
    rng = np.random.default_rng(0)
    n_req, n_items, d = 12, 30, 4
    rows = np.repeat(np.arange(n_req), 10)
    pairs = Pairs(
        rows,
        rng.integers(0, n_items, len(rows)),
        {"recall": rng.normal(size=len(rows)), "item_to_item": rng.normal(size=len(rows))},
        Embeddings(
            rng.normal(size=(n_req, d)).astype(np.float32),
            rng.normal(size=(n_items, d)).astype(np.float32),
        ),
        labels=(rng.random(len(rows)) < 0.3).astype(np.float32),
        rated=np.ones(len(rows), bool),
        candidate=np.ones(len(rows), bool),
    )
    history = History(sp.csr_matrix((n_req, n_items)), sp.csr_matrix((n_req, n_items)))
    stacked = Stacked(Requests(np.arange(1, n_req + 1), history, np.zeros(n_req)), pairs)
    trained_on, scored = [], []
    fit, score = PreRankStage.fit, PreRankStage.score_pairs

    def spy_fit(self, data, stacked, *args, **kwargs):
        trained_on.append(set(stacked.pairs.rows.tolist()))
        return fit(self, data, stacked, *args, **kwargs)

    def spy_score(self, requests, pairs):
        scored.append(set(pairs.rows.tolist()))
        return score(self, requests, pairs)

    monkeypatch.setattr(PreRankStage, "fit", spy_fit)
    monkeypatch.setattr(PreRankStage, "score_pairs", spy_score)
    from recfunnel.prerank import PreRankConfig

    oof = cross_fit_prerank(PreRankConfig(batch_size=32), stacked, folds=3, epochs=1, seed=0)
    assert len(trained_on) == len(scored) == 3 and np.isfinite(oof).all()
    for seen, held in zip(trained_on, scored, strict=True):
        assert seen and held and not (seen & held)
    assert set().union(*scored) == set(range(n_req))


def test_like_pairs_add_only_rated_non_candidate_pairs_of_other_users():
    from recfunnel.training.stacking import add_like_pairs

    def score(requests, pairs):  # what add_like_pairs reads of the recall stage
        emb = Embeddings(np.zeros((len(requests), 2), np.float32), np.zeros((3, 2), np.float32))
        return pairs.with_embeddings(emb).with_scores("recall", np.full(len(pairs), 0.5))

    d = DAY
    early = ratings([(1, 10, 5, 0)])
    late = ratings([(1, 11, 4, 3 * d), (2, 10, 5, 10), (2, 11, 2, 11), (2, 12, 4, 12)])
    items = np.array([10, 11, 12])
    config = StackingConfig(history_fraction=0.5)
    replay = slice_requests(early, late, items, config)  # user 1 only
    none = np.zeros(0, np.int64)
    empty = Pairs(
        none,
        none,
        {"recall": none * 1.0},
        Embeddings(np.zeros((1, 2), np.float32), np.zeros((3, 2), np.float32)),
        labels=none.astype(np.float32),
        rated=none.astype(bool),
        candidate=none.astype(bool),
    )
    merged, ex = add_like_pairs(replay, empty, score, early, late, items, config)
    assert merged.requests.user_ids.tolist() == [1, 2] and ex.embeddings.users.shape == (2, 2)
    # user 2: floor(0.5 * 3) = 1 rating of history, the two later ones become pairs (row 1).
    pairs = zip(ex.rows.tolist(), ex.items.tolist(), ex.labels.tolist(), strict=True)
    assert sorted(pairs) == [
        (1, 1, 0.0),
        (1, 2, 1.0),
    ]
    assert ex.rated.all() and not ex.candidate.any() and (ex.scores["recall"] == 0.5).all()


def test_stack_examples_numbers_the_requests_of_each_cut_after_the_one_before():
    from recfunnel.training.recipe import stack_examples

    def part(users, rows, items, score, dim):
        n = len(users)
        history = History(sp.csr_matrix((n, 5)), sp.csr_matrix((n, 5)))
        emb = Embeddings(np.zeros((n, dim), np.float32), np.zeros((5, dim), np.float32))
        pairs = Pairs(
            np.array(rows),
            np.array(items),
            {"recall": np.array(score, float), "prerank": np.array(score, float) + 1},
            emb,
            labels=np.ones(len(rows), np.float32),
            rated=np.ones(len(rows), bool),
            candidate=np.array([True] * len(rows)),
        )
        return Stacked(Requests(np.array(users), history, np.arange(n) * 10), pairs)

    latest = part([7, 8], [0, 1, 1], [0, 1, 2], [0.1, 0.2, 0.3], dim=4)
    earlier = part([7, 9, 10], [2, 0], [3, 4], [0.4, 0.5], dim=8)  # its own vector size
    both = stack_examples([latest, earlier])
    assert both.requests.user_ids.tolist() == [7, 8, 7, 9, 10]
    assert both.requests.now.tolist() == [0, 10, 0, 10, 20]
    # The earlier cut's pair rows point at its own requests, now rows 2..4.
    assert both.pairs.rows.tolist() == [0, 1, 1, 4, 2]
    assert both.pairs.items.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(both.pairs.scores["prerank"], [1.1, 1.2, 1.3, 1.4, 1.5])
    # Recall vectors of different fits do not mix: none are carried.
    assert both.pairs.embeddings is None and len(both.pairs.labels) == 5


@pytest.mark.parametrize("cuts,fraction", [(0, 0.2), (5, 0.2), (3, 0.4)])
def test_cuts_must_leave_train_before_the_earliest(cuts, fraction):
    with pytest.raises(ConfigError, match="stacking.cuts"):
        StackingConfig(cuts=cuts, slice_fraction=fraction).validate()
    StackingConfig(cuts=2, slice_fraction=0.2).validate()
