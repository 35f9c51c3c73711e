"""Full-ranking evaluation: tie rule, masking, warm/cold users, hand-computed metrics."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recfunnel.data.split import Split
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.evaluation.protocol import Evaluator, returning, top_k


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


class FixedScorer:
    def __init__(self, item_ids, scores):
        self.item_ids_ = np.asarray(item_ids)
        self.scores = np.asarray(scores, dtype=float)

    def score(self, user_ids, history):
        return np.broadcast_to(self.scores, (len(user_ids), len(self.item_ids_)))


def test_top_k_breaks_ties_by_smaller_id_and_masks_known():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    known = sp.csr_matrix(np.array([[0, 0, 1, 0, 0]]))
    # Candidates 0,1,3,4; score 3 at positions 1 and 4 (tie -> 1 first), then 3 (2.0), 0 (1.0).
    assert top_k(scores, known, 4).tolist() == [[1, 4, 3, 0]]
    # Asking for more than the 4 candidates pads with -1.
    assert top_k(scores, known, 5).tolist() == [[1, 4, 3, 0, -1]]


def test_top_k_rejects_nan():
    with pytest.raises(RecfunnelError, match="NaN"):
        top_k(np.array([[np.nan, 1.0]]), sp.csr_matrix((1, 2)), 1)


@pytest.fixture
def tiny_split():
    # Catalogue: items 10, 20, 30, 40, 50 (positions 0..4).
    train = frame([(1, 10, 5, 1), (1, 20, 2, 2), (2, 30, 4, 3)])
    valid = frame([(1, 30, 4, 4), (3, 10, 4, 5)])
    # Liked test items: user 1 -> {40, 50}; user 2 -> {20}; user 3 (cold) -> {40}.
    # User 2's 10 is a dislike: it stays a candidate and counts as a miss.
    test = frame([(1, 40, 5, 6), (1, 50, 4, 7), (2, 20, 5, 8), (2, 10, 2, 9), (3, 40, 4, 10)])
    return Split(train, valid, test, "global")


def test_hand_computed_metrics_warm_and_cold(tiny_split):
    items = np.array([10, 20, 30, 40, 50])
    # Scores by position: 10 > 40 > 20 > 50 > 30.
    scorer = FixedScorer(items, [5.0, 3.0, 1.0, 4.0, 2.0])
    result = Evaluator(tiny_split, items, ks=(1, 2)).evaluate(scorer, "test")
    warm, cold = result.groups["warm"], result.groups["cold"]
    # User 1 knows 10, 20, 30 (train + valid) -> list [40, 50]: hits at ranks 1 and 2.
    # User 2 knows 30 -> list [10, 40, 20, 50]: top-2 = [10, 40], no hit (20 is 3rd).
    assert warm["users"] == 2 and warm["relevant"] == 3
    assert warm["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert warm["recall@2"] == pytest.approx((2 / 2 + 0) / 2)
    assert warm["precision@2"] == pytest.approx((2 / 2 + 0) / 2)
    assert warm["hit_rate@2"] == pytest.approx(0.5)
    # NDCG@2 of user 1: (1 + 1/log2 3) / (1 + 1/log2 3) = 1; user 2: 0.
    assert warm["ndcg@2"] == pytest.approx(0.5)
    # Coverage@2: items 40, 50, 10 appear -> 3 of 5.
    assert warm["coverage@2"] == pytest.approx(3 / 5)
    # Cold user 3 knows 10 (valid) -> list [40, 20]: hit at rank 1.
    assert cold["users"] == 1
    assert cold["recall@1"] == 1.0 and cold["ndcg@2"] == pytest.approx(1.0)


def test_valid_part_uses_train_as_known_history(tiny_split):
    items = np.array([10, 20, 30, 40, 50])
    scorer = FixedScorer(items, [5.0, 3.0, 1.0, 4.0, 2.0])
    ev = Evaluator(tiny_split, items, ks=(2,))
    result = ev.evaluate(scorer, "valid")
    # Valid: user 1 liked 30 (knows 10, 20 from train) -> list [40, 50]: miss.
    # User 3 is cold (no train rating): knows nothing -> list [10, 40]: hit at rank 1.
    assert result.groups["warm"]["users"] == 1
    assert result.groups["warm"]["recall@2"] == 0.0
    assert result.groups["cold"]["ndcg@2"] == pytest.approx(1.0)
    assert math.isclose(result.groups["cold"]["recall@2"], 1.0)


def test_returning_users_by_hand():
    day = 86400
    known = frame([(1, 10, 5, 0), (1, 20, 4, 10 * day), (2, 10, 4, 5 * day), (3, 30, 4, 0)])
    # User 1 last rated on day 10 and comes back on day 24 (a 14-day pause: returning); user
    # 2 last rated on day 5 and rates again on day 18 (13 days: not returning); user 3 has
    # no rating in the part.
    part = frame([(1, 30, 4, 24 * day), (1, 40, 4, 25 * day), (2, 20, 5, 18 * day)])
    users = np.array([1, 2, 3])
    assert returning(part, known, users).tolist() == [True, False, False]
    assert returning(part, known, users, gap_days=13).tolist() == [True, True, False]


def test_return_group_is_a_subset_of_warm(tiny_split):
    items = np.array([10, 20, 30, 40, 50])
    ev = Evaluator(tiny_split, items, ks=(2,))
    # Timestamps of tiny_split are seconds apart: nobody pauses for two weeks.
    assert ev.users("test", "warm").user_ids.tolist() == [1, 2]
    assert ev.users("test", "return").user_ids.tolist() == []
    later = Split(
        tiny_split.train,
        tiny_split.valid,
        tiny_split.test.assign(timestamp=tiny_split.test["timestamp"] + 15 * 86400),
        "global",
    )
    back = Evaluator(later, items, ks=(2,)).users("test", "return")
    assert back.user_ids.tolist() == [1, 2]
    assert back.truth.shape == (2, 5)
    with pytest.raises(ConfigError, match="user group"):
        ev.users("test", "lapsed")


def test_errors_are_clear(tiny_split):
    items = np.array([10, 20, 30, 40, 50])
    with pytest.raises(ConfigError, match="catalogue"):
        Evaluator(tiny_split, items, ks=(2,)).evaluate(FixedScorer(items[:4], [1] * 4))
    with pytest.raises(ConfigError):
        Evaluator(tiny_split, items, ks=(0,))
    with pytest.raises(ConfigError):
        Evaluator(tiny_split, items, history="test")
    with pytest.raises(ConfigError):
        Evaluator(tiny_split, items).evaluate(FixedScorer(items, [1] * 5), "train")
    with pytest.raises(ConfigError, match="sorted"):
        Evaluator(tiny_split, items[::-1])


def test_ild_reported_with_item_features(tiny_split):
    items = np.array([10, 20, 30, 40, 50])
    features = np.array([[1, 0], [0, 1], [1, 1], [1, 0], [0, 1]], dtype=float)
    scorer = FixedScorer(items, [5.0, 3.0, 1.0, 4.0, 2.0])
    ev = Evaluator(tiny_split, items, ks=(2,), item_features=features, ild_ks=(2,))
    warm = ev.evaluate(scorer, "test").groups["warm"]
    # User 1: [40, 50] -> orthogonal, distance 1; user 2: [10, 40] -> identical, distance 0.
    assert warm["ild@2"] == pytest.approx(0.5)
