"""Merging recall channels' lists: hand-worked priority and reciprocal-rank fusion."""

import numpy as np
import pytest

from recfunnel.recall.merge import merge_lists
from recfunnel.types import Candidates


def _list(name: str, items: list[list[int]], scores: list[list[float]]) -> Candidates:
    items_a = np.array(items)
    ranks = np.where(items_a >= 0, np.arange(1, items_a.shape[1] + 1), 0)
    return Candidates(items_a, {name: np.array(scores, dtype=float)}, {name: ranks})


A = _list("a", [[5, 3, 9], [1, 2, -1]], [[3.0, 2.0, 1.0], [2.0, 1.0, np.nan]])
B = _list("b", [[3, 7, 5], [4, 1, 6]], [[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])


def test_round_robin_takes_the_channels_in_turn_without_repeats():
    out = merge_lists({"a": A, "b": B}, k=4, how="round_robin")
    # Row 0: a1 = 5, b1 = 3, a2 = 3 (repeat), b2 = 7, a3 = 9. Row 1: a1 = 1, b1 = 4, a2 = 2,
    # b2 = 1 (repeat), b3 = 6.
    assert out.items.tolist() == [[5, 3, 7, 9], [1, 4, 2, 6]]
    # Channel ranks: where each channel proposed the item, 0 if it did not.
    assert out.channels["a"].tolist() == [[1, 2, 0, 3], [1, 0, 2, 0]]
    assert out.channels["b"].tolist() == [[3, 1, 2, 0], [2, 1, 0, 3]]
    assert out.scores["b"][0].tolist()[:3] == [0.7, 0.9, 0.8] and np.isnan(out.scores["b"][0, 3])


def test_rrf_sums_reciprocal_ranks_and_breaks_ties_by_position():
    out = merge_lists({"a": A, "b": B}, k=5, how="rrf", rrf_k=1)
    # Row 0 with rrf_k = 1: 3 -> 1/3 + 1/2 = .833, 5 -> 1/2 + 1/4 = .75, 7 -> 1/3,
    # 9 -> 1/4. Row 1: 1 -> 1/2 + 1/3 = .833, 4 -> 1/2, 2 -> 1/3, 6 -> 1/4.
    assert out.items.tolist() == [[3, 5, 7, 9, -1], [1, 4, 2, 6, -1]]
    tied = merge_lists(
        {"a": _list("a", [[8]], [[1.0]]), "b": _list("b", [[2]], [[1.0]])}, k=2, how="rrf"
    )
    assert tied.items.tolist() == [[2, 8]]  # equal fused scores: the smaller position first
    assert merge_lists({"a": A, "b": B}, k=6).items[1].tolist() == [1, 4, 2, 6, -1, -1]


def test_k_cuts_every_row_and_one_channel_passes_through():
    assert merge_lists({"a": A, "b": B}, k=2).items.tolist() == [[5, 3], [1, 4]]
    assert merge_lists({"a": A}, k=3) is A
    assert merge_lists({"a": A}, k=2).items.tolist() == [[5, 3], [1, 2]]


@pytest.mark.parametrize("how", ["round_robin", "rrf"])
def test_empty_batch_and_empty_lists(how):
    none = Candidates(
        np.zeros((0, 3), np.int64), {"a": np.zeros((0, 3))}, {"a": np.zeros((0, 3), np.int64)}
    )
    assert merge_lists({"a": none, "b": none}, k=3, how=how).items.shape[0] == 0
    blank = _list("a", [[-1, -1]], [[np.nan, np.nan]])
    out = merge_lists({"a": blank, "b": _list("b", [[-1]], [[np.nan]])}, k=3, how=how)
    assert not out.valid.any()


def test_quotas_reserve_slots_per_channel_and_keep_the_fused_order():
    # Row 0 fused order (rrf_k = 1): 3, 5, 7, 9. With quotas (a: 1, b: 1) and k = 3: a keeps
    # 5, b keeps 3 (its best), the free slot goes to the best-fused other item, 7.
    out = merge_lists({"a": A, "b": B}, k=3, how="quota", rrf_k=1, quotas=(1, 1))
    assert out.items[0].tolist() == [3, 5, 7]
    # a may place none and b all three: b's 3, 7, 5; the list is in fused order.
    out = merge_lists({"a": A, "b": B}, k=3, how="quota", rrf_k=1, quotas=(0, 3))
    assert out.items[0].tolist() == [3, 5, 7]
    # a's quota of 2 wins 5 and 3 first, so b's quota of 1 takes its best free item, 7; the
    # last-fused 9, in no quota, is left out at k = 3.
    out = merge_lists({"a": A, "b": B}, k=3, how="quota", rrf_k=1, quotas=(2, 1))
    assert sorted(out.items[0].tolist()) == [3, 5, 7]
    # Row 1 has only four distinct items: the rest is padding, channel ranks travel along.
    out = merge_lists({"a": A, "b": B}, k=5, how="quota", rrf_k=1, quotas=(2, 2))
    assert out.items[1].tolist() == [1, 4, 2, 6, -1]
    assert out.channels["b"][1].tolist() == [2, 1, 0, 3, 0]
    with pytest.raises(ValueError, match="one quota"):
        merge_lists({"a": A, "b": B}, k=3, how="quota", quotas=(1,))


def test_quota_config_needs_one_quota_per_channel():
    from recfunnel.errors import ConfigError
    from recfunnel.recall.stage import RecallConfig

    RecallConfig(channels=("two_tower", "ease"), merge="quota", quotas=(150, 50)).validate()
    with pytest.raises(ConfigError, match="one quota"):
        RecallConfig(channels=("two_tower", "ease"), merge="quota", quotas=(150,)).validate()


def test_weighted_rrf_by_hand_and_weight_zero_leaves_a_channel_out():
    """fused(i) = sum of w_c / (rrf_k + rank); weights of 1 give plain RRF; an item only a
    weight-0 channel proposed is not fused in (its rank still travels as a feature)."""
    plain = merge_lists({"a": A, "b": B}, k=5, how="rrf", rrf_k=1)
    ones = merge_lists({"a": A, "b": B}, k=5, how="rrf", rrf_k=1, weights=(1.0, 1.0))
    assert ones.items.tolist() == plain.items.tolist()
    # Row 0, w = (1, 3): 3 -> 1/3 + 3/2 = 1.83, 7 -> 3/3 = 1, 5 -> 1/2 + 3/4 = 1.25,
    # 9 -> 1/4. Row 1: 4 -> 3/2, 1 -> 1/2 + 3/3 = 1.5 (a tie: the smaller position, 1,
    # first), 6 -> 3/4, 2 -> 1/3.
    out = merge_lists({"a": A, "b": B}, k=5, how="rrf", rrf_k=1, weights=(1.0, 3.0))
    assert out.items.tolist() == [[3, 5, 7, 9, -1], [1, 4, 6, 2, -1]]
    # b at 0: only a's items, in a's order; b's ranks of them are kept.
    out = merge_lists({"a": A, "b": B}, k=5, how="rrf", rrf_k=1, weights=(1.0, 0.0))
    assert out.items.tolist() == [[5, 3, 9, -1, -1], [1, 2, -1, -1, -1]]
    assert out.channels["b"].tolist() == [[3, 1, 0, 0, 0], [2, 0, 0, 0, 0]]


def test_rrf_weights_config():
    from recfunnel.config import load_config
    from recfunnel.errors import ConfigError
    from recfunnel.run import PipelineConfig

    assert load_config(PipelineConfig, None, []).recall.rrf_weights is None  # chosen on valid
    chosen = load_config(PipelineConfig, None, ["--recall.rrf_weights=1,2,0.5,0"])
    assert chosen.recall.rrf_weights == (1.0, 2.0, 0.5, 0.0)
    for bad in ("1,2", "1,1,1,-1", "0,0,0,0", "1,1,1,nan"):
        with pytest.raises(ConfigError, match="rrf_weights"):
            load_config(PipelineConfig, None, [f"--recall.rrf_weights={bad}"])


def _stub_recall(channel_lists: dict[str, np.ndarray]):
    """A RecallStage whose channels answer fixed lists (B, k) of catalogue positions."""
    from recfunnel.recall.stage import RecallConfig, RecallStage

    names = ("two_tower", "ease", "rp3beta", "trending")[: len(channel_lists)]
    stage = RecallStage(RecallConfig(channels=names, score_by=names[0]))

    def answer(name, items):
        def call(requests, k):
            rows = items[requests][:, :k]
            ranks = np.where(rows >= 0, np.arange(1, rows.shape[1] + 1), 0)
            return Candidates(rows, {name: -ranks.astype(float)}, {name: ranks})

        return call

    stage.channels = {
        name: answer(name, items) for name, items in zip(names, channel_lists.values(), strict=True)
    }
    stage.config_ = stage.config  # fitted
    stage.weights_ = (1.0,) * len(names)
    return stage


def test_choose_weights_moves_only_when_the_requests_clearly_disagree():
    """A channel that puts each request's liked movie first and one that never proposes it:
    the fusion gives the good one more weight and the fused list becomes perfect. Two
    channels that are the same list: nothing can win, so the weights stay 1 each."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, n_items = 300, 60
    target = rng.integers(0, n_items, n)
    others = np.array([rng.permutation(np.setdiff1d(np.arange(n_items), [t]))[:10] for t in target])
    good = np.concatenate([target[:, None], others[:, :9]], axis=1)
    bad = others[:, ::-1]  # the same other movies, another order; never the target
    liked = sp.csr_matrix((np.ones(n), (np.arange(n), target)), shape=(n, n_items))
    requests = np.arange(n)

    stage = _stub_recall({"good": good, "bad": bad})
    choice = stage.choose_weights(requests, liked, k=10)
    assert choice["equal_weights"] < 1.0 and choice["chosen"] == pytest.approx(1.0)
    assert stage.weights_[0] > stage.weights_[1] and choice["moves"]

    same = _stub_recall({"a": good, "b": good})
    choice = same.choose_weights(requests, liked, k=10)
    assert same.weights_ == (1.0, 1.0) and not choice["moves"]


def test_choose_weights_without_labelled_requests_keeps_one_each():
    import scipy.sparse as sp

    stage = _stub_recall({"a": np.array([[1, 2]]), "b": np.array([[2, 1]])})
    stage.weights_ = (2.0, 0.0)
    choice = stage.choose_weights(np.arange(1), sp.csr_matrix((1, 5)), k=2)
    assert stage.weights_ == (1.0, 1.0) and choice["requests"] == 0


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0), (2.0, 0.0, 0.5), (0.0, 0.0, 4.0), (1.0, 0.25, 1.0)]
)
def test_the_weight_search_fuses_as_merge_lists_does(weights):
    """`choose_weights` scores each weighting through `WeightedFusion`, a precomputed form
    of the merge: its top lists are the merge's, ties and left-out channels included."""
    from recfunnel.recall.merge import WeightedFusion

    rng = np.random.default_rng(1)
    lists = {}
    for name in ("a", "b", "c"):
        items = np.array([rng.permutation(40)[:12] for _ in range(25)])
        items[rng.random(items.shape) < 0.1] = -1  # some padding inside the lists
        lists[name] = _list(name, items.tolist(), np.zeros(items.shape).tolist())
    fusion = WeightedFusion(lists, rrf_k=3)
    for cutoff in (5, 30):
        expected = merge_lists(lists, cutoff, how="rrf", rrf_k=3, weights=weights).items
        np.testing.assert_array_equal(fusion.top(list(weights), cutoff), expected)
