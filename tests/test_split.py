"""The protocol's splits, and proof that nothing from valid or test reaches a fitted model."""

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.split import (
    Split,
    global_temporal_split,
    make_split,
    per_user_temporal_split,
)
from recfunnel.errors import ConfigError
from recfunnel.evaluation.baselines import EASE, Popularity
from recfunnel.evaluation.protocol import Evaluator, catalogue


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def test_global_split_cuts_and_tie_order():
    # 10 ratings: int(0.8 * 10) = 8 train, int(0.9 * 10) = 9 -> 1 valid, 1 test.
    # Three ratings share timestamp 50: order (50, user 1, item 9), (50, 2, 1), (50, 2, 3),
    # so with cut 8 the last train row is (50, 2, 1) and (50, 2, 3) is valid.
    rows = [
        (u, i, 4, t)
        for u, i, t in [
            (3, 1, 10),
            (1, 2, 20),
            (2, 2, 30),
            (1, 3, 40),
            (3, 2, 45),
            (3, 4, 48),
            (2, 3, 50),
            (1, 9, 50),
            (2, 1, 50),
            (1, 4, 70),
        ]
    ]
    rows = rows[::-1]  # file order must not matter
    split = global_temporal_split(frame(rows))
    assert (len(split.train), len(split.valid), len(split.test)) == (8, 1, 1)
    assert split.train.iloc[-1][["user_id", "item_id"]].tolist() == [2, 1]
    assert split.valid.iloc[0][["user_id", "item_id"]].tolist() == [2, 3]
    assert split.test.iloc[0][["user_id", "item_id"]].tolist() == [1, 4]
    assert split.kind == "global"


def test_per_user_split_keeps_each_users_latest_ratings_for_test():
    # User 1 has 20 ratings: floor(2.0) = 2 test, 2 valid, 16 train; user 2 has 25:
    # floor(2.5) = 2 test, 2 valid, 21 train.
    rows = [(1, i, 3, 1000 + i) for i in range(20)] + [(2, i, 5, 5000 - i) for i in range(25)]
    split = per_user_temporal_split(frame(rows))
    counts = {
        name: getattr(split, name).groupby("user_id").size().to_dict()
        for name in ("train", "valid", "test")
    }
    assert counts == {"train": {1: 16, 2: 21}, "valid": {1: 2, 2: 2}, "test": {1: 2, 2: 2}}
    # User 1's two latest (items 18, 19) are test; user 2's latest are the smallest item ids.
    assert sorted(split.test.query("user_id == 1")["item_id"]) == [18, 19]
    assert sorted(split.test.query("user_id == 2")["item_id"]) == [0, 1]
    for u in (1, 2):
        assert split.train.query(f"user_id == {u}")["timestamp"].max() <= (
            split.valid.query(f"user_id == {u}")["timestamp"].min()
        )
    assert split.kind == "per_user"


def test_unknown_split_kind_and_part_are_clear_errors():
    ratings = frame([(1, 1, 4, 1), (1, 2, 4, 2)])
    with pytest.raises(ConfigError, match="unknown split"):
        make_split(ratings, "random")
    with pytest.raises(ConfigError, match="train, valid or test"):
        make_split(ratings).part("dev")
    with pytest.raises(ConfigError):
        global_temporal_split(ratings, train_frac=1.5)


def test_global_split_on_synthetic_is_a_partition_in_time(synthetic_ml):
    split = make_split(synthetic_ml.ratings)
    assert len(split.train) + len(split.valid) + len(split.test) == len(synthetic_ml.ratings)
    assert split.train["timestamp"].max() <= split.valid["timestamp"].min()
    assert split.valid["timestamp"].max() <= split.test["timestamp"].min()
    keys = pd.concat([split.train, split.valid, split.test])[["user_id", "item_id"]]
    assert not keys.duplicated().any()


def test_backtest_split_lies_inside_train_and_valid(synthetic_ml):
    real = make_split(synthetic_ml.ratings)
    back = make_split(synthetic_ml.ratings, "backtest")
    assert back.kind == "backtest"
    key = ["user_id", "item_id", "timestamp"]
    inside = pd.concat([back.train, back.valid, back.test])[key]
    known = pd.concat([real.train, real.valid])[key]
    # Exactly the protocol's train + valid, in time order: no real test rating is read.
    pd.testing.assert_frame_equal(inside.reset_index(drop=True), known.reset_index(drop=True))
    n = len(synthetic_ml.ratings)
    assert (len(back.train), len(back.valid)) == (int(0.4 * n), int(0.45 * n) - int(0.4 * n))
    assert back.train["timestamp"].max() <= back.valid["timestamp"].min()
    assert back.valid["timestamp"].max() <= back.test["timestamp"].min()


def _scramble(part: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same shape of ratings with other users, items and ratings."""
    rng = np.random.default_rng(seed)
    out = part.copy()
    out["user_id"] = rng.permutation(out["user_id"].to_numpy())
    out["item_id"] = rng.permutation(out["item_id"].to_numpy())
    out["rating"] = rng.integers(1, 6, len(out))
    return out.drop_duplicates(["user_id", "item_id"])


def test_no_valid_or_test_rating_reaches_a_fitted_model(synthetic_ml):
    split = make_split(synthetic_ml.ratings)
    items = catalogue(synthetic_ml.ratings)
    other = Split(split.train, _scramble(split.valid, 1), _scramble(split.test, 2), "global")
    for make in (Popularity, lambda: EASE(50.0)):
        a = make().fit(split.train, items)
        b = make().fit(other.train, items)
        for name, value in vars(a).items():
            if name.endswith("_"):
                np.testing.assert_array_equal(value, vars(b)[name], err_msg=name)


class SpyScorer:
    """Records the history the evaluator hands over; scores by item position."""

    def __init__(self, item_ids):
        self.item_ids_ = item_ids
        self.seen = []

    def score(self, user_ids, history):
        self.seen.append((user_ids, history.ratings.tocoo()))
        return np.zeros((len(user_ids), len(self.item_ids_)))


@pytest.mark.parametrize(
    "history, allowed_parts", [("train", ["train"]), ("known", ["train", "valid"])]
)
def test_scorer_input_history_never_contains_the_evaluated_part(
    synthetic_ml, history, allowed_parts
):
    split = make_split(synthetic_ml.ratings)
    items = catalogue(synthetic_ml.ratings)
    spy = SpyScorer(items)
    Evaluator(split, items, ks=(10,), history=history).evaluate(spy, "test")
    allowed = pd.concat([split.part(p) for p in allowed_parts])
    allowed_keys = set(zip(allowed["user_id"], allowed["item_id"], strict=True))
    test_keys = set(zip(split.test["user_id"], split.test["item_id"], strict=True))
    n_seen = 0
    for user_ids, coo in spy.seen:
        pairs = set(zip(user_ids[coo.row], items[coo.col], strict=True))
        assert pairs <= allowed_keys
        assert not pairs & test_keys
        n_seen += len(pairs)
    assert n_seen > 0


@pytest.mark.realdata
def test_global_split_matches_protocol_on_ml1m(ml1m):
    split = make_split(ml1m.ratings)
    assert (len(split.train), len(split.valid), len(split.test)) == (800_167, 100_021, 100_021)
    assert split.train["timestamp"].max() == 975768738
    assert split.valid["timestamp"].max() == 978133367
