"""LightGCN (recall/graph) on tiny graphs with hand-worked expectations."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recfunnel.data.schema import TIME
from recfunnel.data.split import Split
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import interaction_matrix
from recfunnel.recall.graph.channel import LightGCNChannel, LightGCNConfig
from recfunnel.recall.graph.model import LightGCN, normalized_adjacency, to_torch
from recfunnel.stage import FitData
from recfunnel.types import History, Requests

R2 = 1 / math.sqrt(2)

# Two users, three items: u0 liked i0 and i1, u1 liked i1; i2 has no like (isolated).
# Nodes in the graph: u0, u1, i0, i1, i2. Degrees: u0 2, u1 1, i0 1, i1 2, i2 0.
USERS, ITEMS = np.array([0, 0, 1, 0]), np.array([0, 1, 1, 1])  # (u0, i1) twice: one edge


def test_normalized_adjacency_is_d_half_a_d_half():
    adjacency = normalized_adjacency(USERS, ITEMS, n_users=2, n_items=3).toarray()
    # Entry (u, i) = 1 / sqrt(deg u * deg i): (u0, i0) 1/sqrt(2*1), (u0, i1) 1/sqrt(2*2),
    # (u1, i1) 1/sqrt(1*2); the matrix is symmetric and the isolated i2 has a zero row.
    expected = np.array(
        [
            [0, 0, R2, 0.5, 0],
            [0, 0, 0, R2, 0],
            [R2, 0, 0, 0, 0],
            [0.5, R2, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_allclose(adjacency, expected, rtol=1e-6)


def _model(layers: int) -> tuple[LightGCN, torch.Tensor]:
    """1-d embeddings users (1, 2), items (3, 4, 5) on the tiny graph."""
    model = LightGCN(n_users=2, n_items=3, dim=1, layers=layers)
    with torch.no_grad():
        model.user.weight.copy_(torch.tensor([[1.0], [2.0]]))
        model.item.weight.copy_(torch.tensor([[3.0], [4.0], [5.0]]))
    return model, to_torch(normalized_adjacency(USERS, ITEMS, 2, 3))


def test_zero_layers_is_the_plain_dot_product():
    model, adjacency = _model(layers=0)
    users, items = model(adjacency)
    assert (users @ items.T).tolist() == [[3.0, 4.0, 5.0], [6.0, 8.0, 10.0]]


def test_one_layer_averages_the_embedding_and_its_propagation():
    model, adjacency = _model(layers=1)
    users, items = model(adjacency)
    # Layer 1: u0 = 3/sqrt2 + 4/2, u1 = 4/sqrt2, i0 = 1/sqrt2, i1 = 1/2 + 2/sqrt2, i2 = 0;
    # final = (layer 0 + layer 1) / 2.
    expect_users = [(1 + 3 * R2 + 2) / 2, (2 + 4 * R2) / 2]
    expect_items = [(3 + R2) / 2, (4 + 0.5 + 2 * R2) / 2, 5 / 2]
    np.testing.assert_allclose(users.detach().ravel(), expect_users, rtol=1e-6)
    np.testing.assert_allclose(items.detach().ravel(), expect_items, rtol=1e-6)
    # u0's score of i1 is the dot product of the final vectors.
    assert float((users[0] @ items[1]).detach()) == pytest.approx(expect_users[0] * expect_items[1])


def test_the_sparse_product_has_the_dense_gradient():
    model, adjacency = _model(layers=2)
    weights = torch.randn(5, 1, generator=torch.Generator().manual_seed(0))
    users, items = model(adjacency)
    (torch.cat([users, items]) * weights).sum().backward()
    sparse_grad = (model.user.weight.grad.clone(), model.item.weight.grad.clone())
    dense = adjacency.to_dense()
    e0 = torch.cat([model.user.weight, model.item.weight]).detach().requires_grad_()
    final = (e0 + dense @ e0 + dense @ (dense @ e0)) / 3
    (final * weights).sum().backward()
    torch.testing.assert_close(torch.cat(sparse_grad), e0.grad)


# --- the channel on two disjoint communities ------------------------------------------------


def _communities() -> tuple[FitData, np.ndarray]:
    """Users 1..12 like movies 100..105 only, users 13..24 movies 200..205 only; every user
    likes 4 of their community's 6 (train), one more in valid. Returns the data and, per
    user, the community's movie ids."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 25):
        movies = (100 if user <= 12 else 200) + rng.permutation(6)[:5]
        for t, movie in enumerate(movies):
            rows.append((user, int(movie), 5, 1000 * user + t if t < 4 else 10**6 + user))
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    late = ratings["timestamp"] >= 10**6
    split = Split(
        ratings[~late].reset_index(drop=True),
        ratings[late].reset_index(drop=True),
        ratings.iloc[:0],
        "global",
    )
    item_ids = np.array([100, 101, 102, 103, 104, 105, 200, 201, 202, 203, 204, 205])
    # The channel reads no side table of the data set, so no MovieLens object is needed.
    return FitData(None, split, item_ids, progress=False), item_ids  # type: ignore[arg-type]


SMALL = LightGCNConfig(dim=8, layers=2, batch_size=32, epochs=20, lr=0.05, threads=1)


def _requests(data: FitData, user_ids: np.ndarray) -> Requests:
    train = data.split.train
    history = History(
        interaction_matrix(train, user_ids, data.item_ids),
        interaction_matrix(train, user_ids, data.item_ids, TIME),
    )
    return Requests.after_history(user_ids, history, int(train[TIME].max()))


@pytest.fixture(scope="module")
def fitted() -> tuple[LightGCNChannel, FitData]:
    data, _ = _communities()
    return LightGCNChannel(SMALL).fit(data), data


def test_users_are_recommended_their_own_community(fitted):
    channel, data = fitted
    users = np.arange(1, 25)
    out = channel(_requests(data, users), k=2)  # 2 unseen movies of the own community remain
    own = np.where(users <= 12, 100, 200)[:, None]
    movies = data.item_ids[out.items]
    assert ((movies >= own) & (movies < own + 100)).all()


def test_fold_in_of_the_train_history_gives_the_trained_vector(fitted):
    """serve="fold_in" redoes LightGCN's user update on the trained item layers: for a train
    user whose history is their train likes, that is the trained vector again."""
    channel, data = copy.copy(fitted[0]), fitted[1]
    channel.config = dataclasses.replace(channel.config, serve="fold_in")
    users = np.arange(1, 25)
    requests = _requests(data, users)
    folded = channel.user_vectors(users, requests.history)
    np.testing.assert_allclose(folded, channel._user_final, rtol=1e-5, atol=1e-6)


def test_an_unseen_user_is_served_from_their_history_and_an_empty_one_gets_the_mean(fitted):
    channel, data = fitted
    n = len(data.item_ids)
    liked = sp.csr_matrix(([5.0, 4.0, 0.0], ([0, 0, 1], [6, 7, 0])), (2, n))  # 200, 201
    liked.eliminate_zeros()
    history = History(liked, liked.copy())
    out = channel(Requests(np.array([999, 1000]), history, np.array([10, 10])), k=3)
    assert (data.item_ids[out.items[0]] >= 200).all()
    assert (out.items[1] >= 0).all() and np.isfinite(out.scores["lightgcn"]).all()
    np.testing.assert_allclose(
        channel.user_vectors(np.array([1000]), history[np.array([1])])[0],
        channel._user_final.mean(axis=0),
        rtol=1e-6,
    )


def test_save_and_load_give_identical_scores(fitted, tmp_path):
    channel, data = fitted
    requests = _requests(data, np.arange(1, 25))
    channel.save(tmp_path / "lightgcn")
    loaded = LightGCNChannel.load(tmp_path / "lightgcn", data)
    np.testing.assert_array_equal(
        channel.catalogue_scores(requests), loaded.catalogue_scores(requests)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"dim": 0},
        {"layers": -1},
        {"negatives": 0},
        {"lr": 0.0},
        {"l2": -1.0},
        {"temperature": 0.0},
        {"objective": "bce"},
        {"serve": "mean"},
        {"valid_metric": "auc"},
    ],
)
def test_bad_config_is_a_config_error(change):
    with pytest.raises(ConfigError):
        dataclasses.replace(LightGCNConfig(), **change).validate()
