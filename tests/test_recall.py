"""Recall stage: causal training examples, the three losses, and the stage's contract."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recfunnel.data.split import make_split
from recfunnel.errors import ConfigError, NotFittedError
from recfunnel.evaluation.baselines import Popularity
from recfunnel.evaluation.protocol import Evaluator, catalogue
from recfunnel.features import FeatureSpace, ItemPopularity, Vocab, gather_ranges, share_bucket
from recfunnel.recall.two_tower.channel import TwoTowerChannel, TwoTowerConfig
from recfunnel.recall.two_tower.losses import bpr_loss, sampled_softmax_loss
from recfunnel.recall.two_tower.sampling import RecallExamples
from recfunnel.stage import FitData
from recfunnel.types import History


def test_vocab_maps_unknown_to_zero():
    vocab = Vocab.fit(np.array([30, 10, 20, 10]))
    assert len(vocab) == 4  # three ids + the unknown slot
    assert vocab.index(np.array([10, 20, 30, 25, 99])).tolist() == [1, 2, 3, 0, 0]


def test_gather_ranges():
    values = np.array([10, 11, 12, 13, 14])
    # [1, 3) + [0, 0) + [3, 5) -> 11, 12, 13, 14
    out = gather_ranges(values, np.array([1, 0, 3]), np.array([3, 0, 5]))
    assert out.tolist() == [11, 12, 13, 14]


def test_examples_see_only_strictly_earlier_history(synthetic_ml):
    train = pd.DataFrame(
        # user 1: liked 10 at t=1, liked 20 and disliked 30 at t=2, liked 40 at t=3.
        [(1, 10, 5, 1), (1, 20, 4, 2), (1, 30, 1, 2), (1, 40, 4, 3), (2, 20, 5, 7)],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    space = FeatureSpace(
        Vocab.fit(train["user_id"].to_numpy()),
        Vocab.fit(train["item_id"].to_numpy()),
        synthetic_ml.users.set_index("user_id"),
        synthetic_ml.items.set_index("item_id"),
    )
    ex = RecallExamples(train, space, history_kind="liked", max_history=10, with_dislikes=True)
    got = {}
    for i in range(len(ex)):
        hist = ex.history[ex.hist_begin[i] : ex.hist_end[i]]
        got[(int(ex.rows[i]), int(ex.items[i]))] = (hist.tolist(), float(ex.labels[i]))
    # Item vocab: 10 -> 1, 20 -> 2, 30 -> 3, 40 -> 4. Same-time events are not history.
    assert got == {
        (0, 1): ([], 1.0),
        (0, 2): ([1], 1.0),
        (0, 3): ([1], 0.0),
        (0, 4): ([1, 2], 1.0),
        (1, 2): ([], 1.0),
    }
    capped = RecallExamples(train, space, history_kind="rated", max_history=1, with_dislikes=False)
    # "rated" history with a cap of 1: item 40's history is the latest rated before t=3.
    last = {
        int(capped.items[i]): capped.history[capped.hist_begin[i] : capped.hist_end[i]]
        for i in range(len(capped))
        if capped.rows[i] == 0
    }
    assert last[4].tolist() in ([2], [3])  # 20 and 30 share t=2; ordered by item id -> 30
    assert last[4].tolist() == [3]


def test_sampled_softmax_by_hand():
    # Two users, two items, d = 1, temperature 1. u = [1, 2], v = [1, -1].
    users = torch.tensor([[1.0], [2.0]])
    items = torch.tensor([[1.0], [-1.0]])
    ids = torch.tensor([5, 6])
    zero = torch.zeros(2)
    # Logits rows: [1, -1] and [2, -2]; targets on the diagonal.
    expected = (
        -(1 - math.log(math.exp(1) + math.exp(-1))) - (-2 - math.log(math.exp(2) + math.exp(-2)))
    ) / 2
    got = sampled_softmax_loss(users, items, ids, zero, 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # logQ: subtracting log q_j from column j. With log q = [0, 1] the logits become
    # [1, -2] and [2, -3].
    expected_q = (
        -(1 - math.log(math.exp(1) + math.exp(-2))) - (-3 - math.log(math.exp(2) + math.exp(-3)))
    ) / 2
    got_q = sampled_softmax_loss(users, items, ids, torch.tensor([0.0, 1.0]), 1.0)
    assert got_q.item() == pytest.approx(expected_q, rel=1e-6)
    # An accidental hit (both rows have the same item) is not a negative: loss = 0 per row.
    same = sampled_softmax_loss(users, items, torch.tensor([5, 5]), zero, 1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_bpr_by_hand():
    users = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[2.0, 0.0]])
    neg = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])
    # Differences 2 - 1 = 1 and 2 - 3 = -1: mean of -log sigmoid(1), -log sigmoid(-1).
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert bpr_loss(users, pos, neg, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError):
        TwoTowerConfig(temperature=0).validate()
    with pytest.raises(ConfigError, match="valid_metric"):
        TwoTowerConfig(valid_metric="auc").validate()
    with pytest.raises(NotFittedError):
        TwoTowerChannel().item_embeddings()


FAST = dict(
    epochs=4,
    patience=4,
    batch_size=256,
    dim=16,
    out_dim=16,
    hidden=(32,),
    lr=5e-3,
    threads=1,
    valid_metric="recall@50",
)


@pytest.fixture(scope="module")
def setup(synthetic_ml):
    split = make_split(synthetic_ml.ratings)
    return synthetic_ml, split, catalogue(synthetic_ml.ratings)


@pytest.mark.parametrize("objective", ["softmax", "bpr", "bce"])
def test_each_objective_learns_beyond_popularity(setup, objective):
    ml, split, items = setup
    stage = TwoTowerChannel(TwoTowerConfig(objective=objective, **FAST))
    stage.fit(FitData(ml, split, items, progress=False))
    ev = Evaluator(split, items, ks=(50,))
    model = ev.evaluate(stage, "valid").groups["warm"]["recall@50"]
    pop = ev.evaluate(Popularity().fit(split.train, items), "valid").groups["warm"]["recall@50"]
    assert model > pop, (objective, model, pop)
    assert stage.log_.best_epoch >= 1 and len(stage.log_.epochs) >= 1


def test_seeded_fit_is_reproducible_and_round_trips(setup, tmp_path):
    ml, split, items = setup
    cfg = TwoTowerConfig(**{**FAST, "epochs": 1})
    a = TwoTowerChannel(cfg).fit(FitData(ml, split, items, progress=False))
    b = TwoTowerChannel(cfg).fit(FitData(ml, split, items, progress=False))
    np.testing.assert_array_equal(a.item_embeddings(), b.item_embeddings())
    a.save(tmp_path / "recall")
    c = TwoTowerChannel.load(tmp_path / "recall", FitData(ml, split, items))
    users = Evaluator(split, items, ks=(10,)).users("test", "warm")
    np.testing.assert_array_equal(
        a.score(users.user_ids, users.history), c.score(users.user_ids, users.history)
    )
    assert c.config == a.config


def test_cold_users_get_feature_only_vectors(setup):
    ml, split, items = setup
    config = TwoTowerConfig(**{**FAST, "epochs": 1})
    stage = TwoTowerChannel(config).fit(FitData(ml, split, items, progress=False))
    empty = History(sp.csr_matrix((2, len(items))), sp.csr_matrix((2, len(items))))
    unknown = np.array([10**6, 10**6 + 1])  # not in the vocabulary, not in users.dat
    vectors = stage.user_embeddings(unknown, empty)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[1])  # nothing tells them apart
    cold = Evaluator(split, items, ks=(10,)).users("test", "cold")
    scores = stage.score(cold.user_ids, cold.history)
    assert scores.shape == (len(cold.user_ids), len(items)) and np.isfinite(scores).all()


def test_item_popularity_is_causal_and_relative():
    day = 86_400
    liked = pd.DataFrame(
        # Item 10 liked on days 1, 2 and 3; item 20 on day 3 (a few hours later).
        [(1, 10, 5, 1 * day), (2, 10, 4, 2 * day), (3, 10, 5, 3 * day), (4, 20, 4, 3 * day + 5000)],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    vocab = Vocab.fit(np.array([10, 20]))
    pop = ItemPopularity(liked, vocab, window_days=2)
    items = vocab.index(np.array([10, 10, 20, 10, 10]))
    times = np.array([2 * day + 10, 3 * day + 9000, 3 * day + 9000, 1 * day, 9 * day])
    recent, total = pop.counts(items, times)
    # Item 10 on day 2: only day 1's like came before (its own day never counts).
    # On day 3: days 1 and 2 are both in the 2-day window. Item 20 on day 3: nothing before,
    # not even its like earlier that same day. On day 1: nothing. Day 9 is after train: it
    # reads as "the day after train" (day 4): days 2 and 3 recent, 3 in total.
    assert recent.tolist() == [1, 2, 0, 0, 2] and total.tolist() == [1, 2, 0, 0, 3]
    r_bucket, t_bucket = pop.buckets(items, times)
    # Shares: item 10 on day 2 has all (1 of 1) recent likes -> the top bucket (31).
    assert r_bucket[0] == share_bucket(np.array([1.0]))[0] == 31
    # After train: item 10 has 2 of the 3 likes of days 2-3, item 20 has 1 of 3.
    after = pop.buckets(vocab.index(np.array([10, 20])), np.array([pop.end, pop.end]))
    assert after[0].tolist() == share_bucket(np.array([2 / 3, 1 / 3])).tolist()
    assert t_bucket[3] == 0 and r_bucket[3] == 0
    # share_bucket: 1 -> 1 + floor(2 * 16) = 33, clipped to 31; 2^-16 -> 1; 0 -> 0.
    assert share_bucket(np.array([1.0, 2.0**-16, 0.0])).tolist() == [31, 1, 0]
