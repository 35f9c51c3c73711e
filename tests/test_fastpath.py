"""The serving fast path (`Funnel.serve`, `recfunnel.kernel`) gives the batch path's lists.

For every component's output list: the same items in the same order, the same channel ranks,
and every score within float32 rounding of the batch path's (numpy kernels vs torch, with
another summation order). The one reorder allowed is of items whose sorting scores tie
within that rounding (`_alignment`): which of two candidates one ulp apart comes first
depends on how the CPU rounds. Checked on the synthetic smoke run for warm, cold and short-history
users, visitors with live ratings, other list sizes and lambdas, DPP and an HNSW index; and on
ML-1M's default run when one is trained (realdata).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from recfunnel.funnel import Funnel
from recfunnel.kernel import BatchKernel, UserRequest, liked_sum, top_unknown
from recfunnel.recall.index import make_index
from recfunnel.serving.recommender import Pipeline
from recfunnel.types import Candidates, Requests

RTOL, ATOL = 2e-5, 2e-5  # float32 arithmetic in another order: a few ulps of the scores


@pytest.fixture(scope="module")
def pipeline(smoke_run, synthetic_ml) -> Pipeline:
    return Pipeline.load(smoke_run[0], synthetic_ml)


def _alignment(got: np.ndarray, want: np.ndarray, key: np.ndarray | None, name: str) -> np.ndarray:
    """Columns of the fast list `got` (N,) in the batch list `want`'s order: the identity when
    the two are equal, as they almost always are. Otherwise only a reorder of items whose
    batch scores `key` (N,) (the stage's own sorting score) tie within float32 rounding is
    allowed: numpy and torch round a sum's last bit differently on different CPUs, so two
    candidates one ulp apart may swap (seen once in 750 ML-1M lists on an AVX-512 machine).
    Any other difference fails."""
    if np.array_equal(got, want):
        return np.arange(len(got))
    assert key is not None, f"{name} items differ: {got} != {want}"
    assert sorted(got.tolist()) == sorted(want.tolist()), f"{name}: not the same items"
    assert np.array_equal(got < 0, want < 0), f"{name}: padding moved"
    column_in_want = {item: col for col, item in enumerate(want.tolist()) if item >= 0}
    for col in np.flatnonzero(got != want).tolist():
        # The item the fast path put here scores, in the batch, what the batch's item here does.
        here, theirs = key[col], key[column_in_want[int(got[col])]]
        assert math.isclose(here, theirs, rel_tol=RTOL, abs_tol=ATOL), (
            f"{name} items differ beyond a float32 tie at column {col}: {got} != {want}"
        )
    column_in_got = {item: col for col, item in enumerate(got.tolist()) if item >= 0}
    return np.array([column_in_got[i] if i >= 0 else c for c, i in enumerate(want.tolist())])


def _assert_same_lists(fast: dict[str, Candidates], batch: dict[str, Candidates], row: int) -> None:
    assert list(fast) == list(batch)
    for name, lists in batch.items():
        got = fast[name]
        own = lists.scores.get(name)
        order = _alignment(got.items[0], lists.items[row], None if own is None else own[row], name)
        assert set(got.channels) == set(lists.channels), name
        for channel, ranks in lists.channels.items():
            np.testing.assert_array_equal(got.channels[channel][0][order], ranks[row], channel)
        assert set(got.scores) == set(lists.scores), name
        for score, values in lists.scores.items():
            np.testing.assert_allclose(
                got.scores[score][0][order],
                values[row],
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{name} {score}",
            )
        if lists.embeddings is not None:
            assert got.embeddings is not None
            np.testing.assert_allclose(
                got.embeddings.users[0], lists.embeddings.users[row], rtol=RTOL, atol=1e-6
            )


def test_alignment_allows_only_float32_ties() -> None:
    want = np.array([5, 3, 9, -1])
    key = np.array([2.0, 1.0 + 1e-7, 1.0, np.nan])
    np.testing.assert_array_equal(_alignment(want.copy(), want, key, "s"), [0, 1, 2, 3])
    swapped = np.array([5, 9, 3, -1])  # 3 and 9 tie within rounding: allowed, realigned
    np.testing.assert_array_equal(_alignment(swapped, want, key, "s"), [0, 2, 1, 3])
    with pytest.raises(AssertionError, match="beyond a float32 tie"):
        _alignment(np.array([3, 5, 9, -1]), want, key, "s")  # 5 and 3 do not tie
    with pytest.raises(AssertionError, match="differ"):
        _alignment(swapped, want, None, "s")  # a stage without its own score: exact only
    with pytest.raises(AssertionError, match="not the same items"):
        _alignment(np.array([5, 9, 4, -1]), want, key, "s")


def _compare(pipeline: Pipeline, users: np.ndarray, funnel: Funnel | None = None, **sizes) -> None:
    """Fast path vs `Funnel.run` on the batch of `users`, every row."""
    funnel = funnel or pipeline.funnel
    topk_recall = sizes.get("topk_recall", funnel.sizes.topk_recall)
    topk_final = sizes.get("topk_final", funnel.sizes.topk_final)
    options = {
        "topk_recall": topk_recall,
        "keep": min(max(funnel.keep, topk_final), topk_recall),
        "topk_final": topk_final,
        "lambda_mmr": sizes.get("lambda_mmr", funnel["rerank"].config.lambda_mmr),
    }
    batch = funnel.run(pipeline.requests(users), **options)
    for row, user in enumerate(users.tolist()):
        fast, ms = funnel.serve(pipeline.user_request(user), **options)
        assert set(ms) == set(funnel.stages)
        _assert_same_lists(fast, batch, row)


def _users(pipeline: Pipeline) -> dict[str, np.ndarray]:
    counts = np.diff(pipeline._ratings.indptr)
    return {
        "warm": pipeline.user_ids[counts >= 10][:60],
        "short": pipeline.user_ids[(counts >= 1) & (counts < 10)][:20],
        "cold": pipeline.user_ids[counts == 0][:10],
    }


def test_every_stage_list_equals_the_batch_path(pipeline: Pipeline) -> None:
    groups = _users(pipeline)
    # (Histories of 0 to 3 ratings are also served as visitors in test_visitors_...)
    assert len(groups["warm"]) >= 30 and len(groups["cold"])
    users = np.concatenate(list(groups.values()))
    _compare(pipeline, users)


@pytest.mark.parametrize(
    "sizes",
    [
        {"topk_recall": 20, "topk_final": 5},
        {"topk_recall": 12, "topk_final": 12},
        {"lambda_mmr": 0.0},
        {"lambda_mmr": 0.5},
        {"lambda_mmr": 1.0, "topk_final": 3},
    ],
)
def test_list_sizes_and_lambdas(pipeline: Pipeline, sizes: dict) -> None:
    _compare(pipeline, _users(pipeline)["warm"][:25], **sizes)


@pytest.mark.parametrize("method", ["dpp", "ild", "mmr"])
def test_every_re_rank_method(pipeline: Pipeline, method: str) -> None:
    _, funnel = pipeline._funnel_for(method)
    assert funnel["rerank"].config.method == method
    for lam in (0.3, 0.9):
        _compare(pipeline, _users(pipeline)["warm"][:25], funnel=funnel, lambda_mmr=lam)


def test_hnsw_index_gives_the_batch_path_lists(pipeline: Pipeline, synthetic_ml) -> None:
    # A pipeline of its own: the index is swapped, the module's pipeline stays exact.
    other = Pipeline(pipeline.run.__class__(**vars(pipeline.run)), synthetic_ml)
    channel = other.funnel["recall"].channels["two_tower"]
    saved = channel.index
    try:
        channel.index = make_index("hnsw", M=8, ef_search=16).build(
            channel.item_embeddings(), channel.item_ids_
        )
        other.funnel["recall"].forget_kernel()
        _compare(other, _users(other)["warm"][:40])
    finally:
        channel.index = saved
        other.funnel["recall"].forget_kernel()


def test_visitors_and_live_ratings(pipeline: Pipeline) -> None:
    funnel = pipeline.funnel
    movies = pipeline.funnel.item_ids
    t = funnel.now + 3600
    cases = [
        (None, [(int(movies[0]), 5, t), (int(movies[3]), 4, t + 1), (int(movies[7]), 2, t + 2)]),
        (None, [(int(movies[5]), 1, t)]),  # a history without a like
        (None, []),
        (int(_users(pipeline)["warm"][0]), [(int(movies[1]), 5, t), (int(movies[2]), 5, t)]),
    ]
    for user, extra in cases:
        request = pipeline.user_request(user, extra)
        history = pipeline.history_of(user, extra)
        requests = Requests.after_history(np.array([request.user_id]), history, funnel.now)
        batch = funnel.run(requests, lambda_mmr=0.7)
        fast, _ = funnel.serve(request, lambda_mmr=0.7)
        _assert_same_lists(fast, batch, 0)


def test_recommend_for_user_and_trace_read_the_fast_path(pipeline: Pipeline) -> None:
    user = int(_users(pipeline)["warm"][1])
    rec = pipeline.recommend_for_user(user, lambda_mmr=0.6)
    batch = pipeline.recommend_batch([user], lambda_mmr=0.6)["rerank"]
    ids = [item.movie_id for item in rec.items]
    assert ids == pipeline.funnel.item_ids[batch.items[0][batch.valid[0]]].tolist()
    trace = pipeline.recommend_trace(user, lambda_mmr=0.6)
    assert [m["movie_id"] for m in trace.final] == ids
    assert set(trace.latency_ms) == {*pipeline.funnel.stages, "total"}
    unknown = pipeline.recommend_for_user(10**7)
    assert unknown.path == "popularity"


def test_components_without_a_kernel_fall_back_to_the_batch_call(pipeline: Pipeline) -> None:
    funnel = pipeline.funnel
    users = _users(pipeline)["warm"][:8]
    batch = funnel.run(pipeline.requests(users))
    stages = {name: _Plain(stage) for name, stage in funnel.stages.items()}
    plain = Funnel(stages, funnel.sizes, funnel.item_ids, funnel.now)  # type: ignore[arg-type]
    for row, user in enumerate(users.tolist()):
        fast, _ = plain.serve(pipeline.user_request(user))
        _assert_same_lists(fast, batch, row)
    assert all(isinstance(k, BatchKernel) for k in plain.kernels().values())


class _Plain:
    """A component wrapper with only the batch call and the default kernel."""

    def __init__(self, stage) -> None:
        self.stage = stage

    def __call__(self, requests, candidates, **options):
        return self.stage(requests, candidates, **options)

    def kernel(self) -> BatchKernel:
        return BatchKernel(self)

    @property
    def config(self):
        return self.stage.config


def test_concurrent_serving_and_timings(pipeline: Pipeline) -> None:
    """Threads serving at once get their own per-call times and the batch lists; the summed
    `timings` of concurrent `run` calls add up (no update is lost)."""
    funnel = pipeline.funnel
    users = _users(pipeline)["warm"][:12]
    expected = {int(u): pipeline.recommend_for_user(int(u)).items for u in users}
    funnel.clear_timings()
    errors: list[BaseException] = []

    def work(user: int) -> None:
        try:
            for _ in range(3):
                assert pipeline.recommend_for_user(user).items == expected[user]
                funnel.run(pipeline.requests(np.array([user])))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(int(u),)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert set(funnel.timings_snapshot()) == set(funnel.stages)


def test_top_unknown_matches_a_stable_sort() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        scores = rng.integers(0, 5, n).astype(np.float64)  # many exact ties
        known = rng.random(n) < 0.3
        k = int(rng.integers(1, n + 5))
        masked = np.where(known, -np.inf, scores)
        order = np.argsort(-masked, kind="stable")[:k]
        order = np.where(masked[order] == -np.inf, -1, order)
        expected = np.full(k, -1)
        expected[: len(order)] = order
        np.testing.assert_array_equal(top_unknown(scores, known, k), expected)


def test_mmr_one_is_mmr_for_one_user() -> None:
    from recfunnel.rerank.mmr import mmr, mmr_one

    rng = np.random.default_rng(2)
    for _ in range(100):
        n = int(rng.integers(1, 30))
        relevance = rng.integers(0, 4, (1, n)) / 3.0  # ties
        vectors = (rng.random((1, n, 5)) < 0.4).astype(np.float32)  # genre-like, some zero
        valid = rng.random((1, n)) < 0.8
        k, lam = int(rng.integers(1, n + 3)), float(rng.choice([0.0, 0.3, 0.8, 1.0]))
        np.testing.assert_array_equal(
            mmr_one(relevance, vectors, k, lam, valid), mmr(relevance, vectors, k, lam, valid)
        )


@pytest.mark.parametrize("path", ["scipy kernel", "numpy reduction"])
def test_liked_sum_is_the_sparse_product_bit_for_bit(path: str, monkeypatch) -> None:
    """Both ways `liked_sum` adds the rows (scipy's CSR kernel called directly, or the
    numpy reduction where that is missing or the weights are not C-contiguous)."""
    import scipy.sparse as sp

    from recfunnel import kernel

    if path == "numpy reduction":
        monkeypatch.setattr(kernel, "_csr_matvecs", None)
    else:
        assert kernel._csr_matvecs is not None
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        weights = rng.normal(size=(400, 300)).astype(dtype)
        for size in (0, 1, 17, 150, 400):
            liked = np.sort(rng.choice(400, size, replace=False))
            row = sp.csr_matrix((np.ones(size, dtype), liked, [0, size]), shape=(1, 400))
            expected = np.asarray(row @ weights)[0].astype(np.float64)
            np.testing.assert_array_equal(liked_sum(weights, liked), expected)
            fortran = np.asfortranarray(weights)  # not C-contiguous: the reduction
            np.testing.assert_array_equal(liked_sum(fortran, liked), expected)


def test_padded_rows_sum_like_the_dense_product_bit_for_bit() -> None:
    """A mostly-zero matrix (RP3beta's pruned neighbours) summed from its padded nonzeros
    gives the dense sum's bits, rows with no nonzero and exact ties included."""
    import scipy.sparse as sp

    from recfunnel.kernel import PaddedRows, summable

    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        weights = np.zeros((400, 320), dtype=dtype)
        for h in range(400):
            if h % 7:  # every seventh row stays all zero
                cols = rng.choice(320, int(rng.integers(1, 40)), replace=False)
                weights[h, cols] = rng.choice([0.25, 0.5, 1.0, 1 / 3, 0.1], len(cols))
        assert PaddedRows.worth_it(weights) and not PaddedRows.worth_it(np.ones((8, 8)))
        padded = summable(weights)
        assert isinstance(padded, PaddedRows) and summable(weights.copy()) is padded
        for size in (0, 1, 17, 150, 400):
            liked = np.sort(rng.choice(400, size, replace=False))
            row = sp.csr_matrix((np.ones(size, dtype), liked, [0, size]), shape=(1, 400))
            expected = np.asarray(row @ weights)[0].astype(np.float64)
            np.testing.assert_array_equal(liked_sum(padded, liked), expected)
            np.testing.assert_array_equal(liked_sum(weights, liked), expected)


@pytest.mark.parametrize("path", ["scipy kernel", "numpy reduction", "padded rows"])
def test_weighted_liked_sum_is_the_sparse_product_bit_for_bit(path: str, monkeypatch) -> None:
    """Recency coefficients (`recency_weights`) enter as the history's values do in the
    batch path's product: rounded to the weights' dtype, one product per element."""
    import scipy.sparse as sp

    from recfunnel import kernel
    from recfunnel.kernel import PaddedRows

    if path == "numpy reduction":
        monkeypatch.setattr(kernel, "_csr_matvecs", None)
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        weights = rng.normal(size=(400, 320)).astype(dtype)
        weights[rng.random(weights.shape) < 0.95] = 0  # mostly zero, for the padded rows
        summed = PaddedRows(weights) if path == "padded rows" else weights
        for size in (0, 1, 17, 150, 400):
            liked = np.sort(rng.choice(400, size, replace=False))
            coefficients = np.exp(-rng.random(size) * 3)
            row = sp.csr_matrix((coefficients.astype(dtype), liked, [0, size]), shape=(1, 400))
            expected = np.asarray(row @ weights)[0].astype(np.float64)
            got = liked_sum(summed, liked, coefficients)
            np.testing.assert_array_equal(got, expected)
            if size:  # the coefficients are really read
                assert not np.array_equal(got, liked_sum(summed, liked))


def test_recency_weights_of_a_history() -> None:
    """1 for the latest rating, 1/e at decay_days before it, disliked movies left out but
    their dates counted; the request's coefficients are the batch history's."""
    from recfunnel.types import History, recency_weights

    day = 86400
    ratings = sp_matrix([[5.0, 2.0, 4.0, 0.0], [0.0, 4.0, 0.0, 1.0]])
    times = sp_matrix([[10 * day, 40 * day, 20 * day, 0.0], [0.0, 5 * day, 0.0, 35 * day]])
    weighted = History(ratings, times).recency_liked(30.0).toarray()
    expected = np.array([[np.exp(-30 / 30), 0, np.exp(-20 / 30), 0], [0, np.exp(-30 / 30), 0, 0]])
    np.testing.assert_allclose(weighted, expected, rtol=1e-12)
    np.testing.assert_array_equal(
        History(ratings, times).recency_liked(0.0).toarray(), (ratings.toarray() >= 4) * 1.0
    )
    request = UserRequest.build(1, [0, 1, 2], [5.0, 2.0, 4.0], [10 * day, 40 * day, 20 * day], 4, 0)
    np.testing.assert_array_equal(
        recency_weights(np.array([10, 20]) * day, 40 * day, 30.0), weighted[0, [0, 2]]
    )
    weights = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(
        request.liked_sum_of(weights, 30.0),
        np.asarray(sp_matrix(weighted[:1]).astype(np.float32) @ weights)[0].astype(np.float64),
    )
    assert request.liked_sum_of(weights, 30.0) is not request.liked_sum_of(weights)
    for history in ([], [2.0]):  # a visitor with no rating, or none liked: a zero row
        cold = UserRequest.build(2, [1][: len(history)], history, [day][: len(history)], 4, 0)
        np.testing.assert_array_equal(cold.liked_sum_of(weights, 30.0), np.zeros(4))


def sp_matrix(rows: list[list[float]]):
    import scipy.sparse as sp

    return sp.csr_matrix(np.array(rows))


def test_recency_decay_gives_the_batch_path_lists(pipeline: Pipeline) -> None:
    """EASE's and RP3beta's channel scores and the item-to-item score with their liked rows
    weighted by recency (decay_days; the smoke run has 0): the kernels sum as the batch
    path does, and the lists move."""
    import dataclasses

    recall, i2i = pipeline.funnel["recall"], pipeline.funnel["item_to_item"]
    groups = _users(pipeline)
    users = np.concatenate([groups["warm"][:30], groups["short"][:5], groups["cold"][:5]])
    weighted = [c for c in recall.channels.values() if hasattr(c.config, "decay_days")]
    assert weighted
    saved = [c.config for c in weighted], i2i.config
    requests = pipeline.requests(users)
    try:
        default = pipeline.funnel.run(requests, upto="item_to_item")
        for channel in weighted:
            channel.config = dataclasses.replace(channel.config, decay_days=3.0)
        i2i.config = dataclasses.replace(i2i.config, decay_days=3.0)
        recall.forget_kernel()
        i2i.forget_kernel()
        decayed = pipeline.funnel.run(requests, upto="item_to_item")
        assert (decayed["recall"].items != default["recall"].items).any()
        assert not np.allclose(
            decayed["item_to_item"].scores["item_to_item"],
            default["item_to_item"].scores["item_to_item"],
            equal_nan=True,
        )
        _compare(pipeline, users)
    finally:
        for channel, config in zip(weighted, saved[0], strict=True):
            channel.config = config
        i2i.config = saved[1]
        recall.forget_kernel()
        i2i.forget_kernel()


def test_ease_cut_to_its_neighbours_gives_the_batch_path_lists(pipeline: Pipeline) -> None:
    """EASE's rows cut to their largest weights (`recall.ease.neighbours` and
    `item_to_item.neighbours`): the channel and the item-to-item score share the cut
    matrix, the kernels sum it from its padded nonzeros, and the lists are the batch path's."""
    from recfunnel.kernel import PaddedRows, summable
    from recfunnel.scale import keep_largest

    recall, i2i = pipeline.funnel["recall"], pipeline.funnel["item_to_item"]
    ease = recall.channels["ease"]
    saved = ease.weights_, i2i.weights_
    groups = _users(pipeline)
    users = np.concatenate([groups["warm"][:30], groups["short"][:5], groups["cold"][:5]])
    try:
        cut = keep_largest(ease.weights_.copy(), ease.weights_.shape[1] // 10)
        ease.weights_, i2i.weights_ = cut, cut.copy()
        recall.forget_kernel()
        i2i.forget_kernel()
        assert isinstance(summable(i2i.weights_), PaddedRows)
        _compare(pipeline, users)
    finally:
        ease.weights_, i2i.weights_ = saved
        recall.forget_kernel()
        i2i.forget_kernel()


def test_user_request_is_made_after_its_history() -> None:
    request = UserRequest.build(7, [5, 1, 3], [4.0, 2.0, 5.0], [30, 10, 20], 8, floor=25)
    assert request.items.tolist() == [1, 3, 5] and request.liked.tolist() == [3, 5]
    assert request.now == 30 and request.known.sum() == 3
    assert UserRequest.build(7, [], [], [], 8, floor=25).now == 25
    assert len(request.requests) == 1 and request.requests.history.ratings.nnz == 3


@contextlib.contextmanager
def _fitted(component, name: str, value):
    """`component.<name>` (a fitted attribute its kernel reads when it is built) set to
    `value` for the block, the kernel dropped on the way in and out, the old value back."""
    saved = getattr(component, name)
    setattr(component, name, value)
    component.forget_kernel()
    try:
        yield
    finally:
        setattr(component, name, saved)
        component.forget_kernel()


@pytest.mark.parametrize("weight", [1.0, math.inf])
def test_prerank_blend_gives_the_batch_path_lists(pipeline: Pipeline, weight: float) -> None:
    """Pre-rank's list shrunk towards recall's order (`recfunnel.blend`) by a weight the
    smoke run may not have chosen: the kernel blends as the batch call does."""
    prerank, users = pipeline.funnel["prerank"], _users(pipeline)["warm"][:30]
    requests = pipeline.requests(users)
    with _fitted(prerank, "prior_weight_", 0.0):
        by_logit = pipeline.funnel.run(requests, upto="prerank")["prerank"].items
    with _fitted(prerank, "prior_weight_", weight):
        blended = pipeline.funnel.run(requests, upto="prerank")["prerank"].items
        assert (blended != by_logit).any()  # else a kernel without the blend would pass
        _compare(pipeline, users)


@pytest.mark.parametrize("weight", [0.0, 4.0])
def test_rank_blend_gives_the_batch_path_lists(pipeline: Pipeline, weight: float) -> None:
    """Rank's list blended with pre-rank's order (rank.prior_weight; the smoke run has the
    default, 1, which its safeguard may have raised) by other weights: the kernel sorts by the
    batch call's key."""
    rank, users = pipeline.funnel["rank"], _users(pipeline)["warm"][:30]
    requests = pipeline.requests(users)
    default = pipeline.funnel.run(requests, upto="rank")["rank"].items
    if weight == rank.prior_weight_:  # the fitted weight itself: take another
        weight *= 2
    with _fitted(rank, "prior_weight_", weight):  # the fitted weight the stage sorts by
        ranked = pipeline.funnel.run(requests, upto="rank")["rank"].items
        assert (ranked != default).any()  # else a kernel without the blend would pass
        _compare(pipeline, users)


def test_weighted_fusion_gives_the_batch_path_lists(pipeline: Pipeline) -> None:
    """Recall's fusion with channel weights (recall.rrf_weights; one of them 0, so its
    proposals only travel as features): the kernel fuses as the batch merge does."""
    recall, users = pipeline.funnel["recall"], _users(pipeline)["warm"][:30]
    assert len(recall.weights_) >= 2
    requests = pipeline.requests(users)
    default = pipeline.funnel.run(requests, upto="recall")["recall"].items
    with _fitted(recall, "weights_", tuple([2.0, 0.0, 0.5, 1.0][: len(recall.weights_)])):
        weighted = pipeline.funnel.run(requests, upto="recall")["recall"].items
        assert (weighted != default).any()  # else a kernel without the weights would pass
        _compare(pipeline, users)


@pytest.mark.realdata
def test_ml1m_default_run_fast_path_equals_batch(ml1m) -> None:
    """On a trained default run: $RECFUNNEL_FASTPATH_RUN (CI sets it to the run `make run`
    trained, so there it never skips), else runs/fast, runs/bench or runs/default if present."""
    root = Path(__file__).resolve().parents[1] / "runs"
    named = os.environ.get("RECFUNNEL_FASTPATH_RUN")
    if named:
        run = Path(named)
        assert run.is_dir(), f"RECFUNNEL_FASTPATH_RUN={named} is not a run directory"
    else:
        found = (root / n for n in ("fast", "bench", "default") if (root / n).is_dir())
        run = next(found, None)
    if run is None:
        pytest.skip("no trained ML-1M run under runs/")
    pipeline = Pipeline.load(run, ml1m)
    users = pipeline.user_ids[np.diff(pipeline._ratings.indptr) > 0][::40][:150]
    _compare(pipeline, users)


def test_row_take_and_top_are_the_candidates_ones() -> None:
    from recfunnel.kernel import Row

    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(0, 12))
        items = rng.permutation(50)[:n]
        items[rng.random(n) < 0.2] = -1
        score = np.where(items >= 0, rng.integers(0, 4, n) / 2.0, np.nan)  # ties
        ranks = np.where(items >= 0, rng.integers(0, 5, n), 0)
        row = Row(items, {"s": score}, {"c": ranks})
        cands = row.candidates()
        k = int(rng.integers(1, n + 3))
        got, want = row.top("s", k), cands.top("s", k)
        np.testing.assert_array_equal(got.items, want.items[0])
        np.testing.assert_array_equal(got.scores["s"], want.scores["s"][0])
        np.testing.assert_array_equal(got.channels["c"], want.channels["c"][0])
        if n:  # (an empty list has no column to take, as for `Candidates.reorder`)
            order = rng.integers(-1, n, k)
            want = cands.reorder(order[None])
            np.testing.assert_array_equal(row.take(order).items, want.items[0])
            np.testing.assert_array_equal(row.take(order).scores["s"], want.scores["s"][0])
        back = Row.of(cands)
        np.testing.assert_array_equal(back.items, items)


def test_search_one_is_search_for_one_query() -> None:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    ids = np.arange(300) * 3 + 1
    for backend, params in (
        ("hnsw", {"M": 4, "ef_search": 8}),
        ("ivf", {"nlist": 4, "nprobe": 1}),
        ("exact", {}),
    ):
        index = make_index(backend, **params).build(vectors, ids)
        for n_excluded in (0, 30, 280, 299, 300):
            query = rng.normal(size=8).astype(np.float32)
            excluded = np.zeros(300, dtype=bool)
            excluded[rng.choice(300, n_excluded, replace=False)] = True
            for k in (1, 20, 300):
                want, _ = index.search(query[None], k, exclude=[ids[excluded]])
                np.testing.assert_array_equal(index.search_one(query, k, excluded), want[0])


def test_shared_weights_are_summed_once_per_request() -> None:
    from recfunnel.kernel import shared

    rng = np.random.default_rng(5)
    weights = rng.normal(size=(30, 30)).astype(np.float32)
    copy, other = weights.copy(), weights + 1
    assert shared(weights) is weights and shared(copy) is weights and shared(other) is other
    request = UserRequest.build(1, [3, 7, 9], [5.0, 4.0, 1.0], [1, 2, 3], 30, floor=0)
    first = request.liked_sum_of(weights)
    assert request.liked_sum_of(weights) is first
    np.testing.assert_array_equal(first, liked_sum(weights, np.array([3, 7])))
    np.testing.assert_array_equal(request.liked_sum_of(other), liked_sum(other, request.liked))


def test_rank_catalogue_features_are_the_pairs_features(pipeline: Pipeline) -> None:
    space = pipeline.funnel["rank"].features_
    users = _users(pipeline)["warm"][:3]
    requests = pipeline.requests(users)
    req = space.requests(requests)
    positions = np.arange(len(space.column_vocab))
    for now in (space.likes.end, space.likes.end - 40 * 86400, space.likes.end + 86400):
        at = req.__class__(**{**vars(req), "now": np.full(len(users), now)})
        rows = np.zeros(len(positions), dtype=np.int64)
        pairs = space.pairs(at, rows, positions)
        every = space.catalogue_at(now)
        for name in ("item", "year", "recent", "total", "age", "item_like_rate"):
            np.testing.assert_array_equal(every[name], pairs[name], err_msg=name)


def test_fused_kernel_is_built_once_and_again_after_a_refresh(pipeline: Pipeline) -> None:
    funnel = pipeline.funnel
    fused = funnel.fused()
    assert funnel.fused() is fused
    funnel["rerank"].forget_kernel()
    assert funnel.fused() is not fused
    user = int(_users(pipeline)["warm"][2])
    rows, ms = funnel.serve_rows(pipeline.user_request(user))
    lists, _ = funnel.serve(pipeline.user_request(user))
    assert list(rows) == list(lists) == list(funnel.stages) and set(ms) == set(funnel.stages)
    for name, row in rows.items():
        np.testing.assert_array_equal(row.items, lists[name].items[0])


def test_rank_kernel_before_the_serving_moment(pipeline: Pipeline) -> None:
    """A request dated inside train reads the item statistics of its own day (the kernel's
    `catalogue_at` path, not the serving-moment table) and still gives the batch lists."""
    funnel = pipeline.funnel
    space = funnel["rank"].features_
    checked = 0
    for user in _users(pipeline)["warm"][:6].tolist():
        cols, vals, stamps = pipeline._history_arrays(user)
        keep = stamps < space.likes.end - 30 * 86400  # a month before the end of train
        if not keep.any():
            continue
        request = UserRequest.build(
            user, cols[keep], vals[keep], stamps[keep], len(funnel.item_ids), floor=0
        )
        assert request.now < space.likes.end
        batch = funnel.run(request.requests)
        fast, _ = funnel.serve(request)
        _assert_same_lists(fast, batch, 0)
        checked += 1
    assert checked


def test_one_list_ild_is_ild_at_k(pipeline: Pipeline) -> None:
    from recfunnel.evaluation.metrics import ild_at_k

    rng = np.random.default_rng(6)
    n = len(pipeline.funnel.item_ids)
    for size in (0, 1, 2, 5, 20):
        positions = np.r_[rng.choice(n, size, replace=False), [-1, -1]]
        real = positions[positions >= 0]
        want = ild_at_k(np.arange(len(real))[None, :], pipeline._genres[real])[0]
        got = pipeline._ild(positions)
        assert (np.isnan(got) and np.isnan(want)) or got == want


def test_one_user_features_are_user_features(pipeline: Pipeline) -> None:
    """`FeatureSpace.user_features_one` (dict lookups, the fast path's) gives
    `user_features`' values and dtypes for train users, users.dat-only users, visitors and
    unknown ids, as read-only arrays."""
    space = pipeline.funnel["rank"].features_.space
    ids = [0, -5, 10**9, *pipeline.user_ids[:50].tolist(), *space.user_table.index[:20].tolist()]
    for raw in ids:
        want = space.user_features(np.array([raw]))
        got = space.user_features_one(int(raw))
        assert set(got) == set(want)
        for name, values in want.items():
            assert got[name].dtype == values.dtype and got[name].shape == (1,), name
            np.testing.assert_array_equal(got[name], values, err_msg=f"{raw} {name}")
            assert not got[name].flags.writeable


def test_din_key_blocks_table_is_the_per_request_blocks(pipeline: Pipeline) -> None:
    """The rank kernel's precomputed (V, h, d + 1) key blocks equal the ones it builds per
    request for a vocabulary too large for the table, bit for bit, and so the interest."""
    kernel = pipeline.funnel["rank"].kernel()
    assert kernel.att_key_block is not None  # the synthetic vocabulary is small
    keys = np.arange(1, len(kernel.item_table))
    np.testing.assert_array_equal(kernel.att_key_block[keys], kernel._key_blocks(keys))
    targets, sequence = keys[:7], np.r_[keys[::3][:9], [0, 0]]
    with_table = kernel._interest(targets, sequence)
    table, kernel.att_key_block = kernel.att_key_block, None
    try:
        np.testing.assert_array_equal(kernel._interest(targets, sequence), with_table)
    finally:
        kernel.att_key_block = table


@pytest.mark.parametrize("rank", [None, 1, 3])
def test_low_rank_cross_layers_give_the_batch_path_lists(
    pipeline: Pipeline, rank: int | None
) -> None:
    """rank.cross_rank: the kernel's composed first cross layer and factored later ones
    give the batch path's lists, and so do full-rank layers (rank None). The model is the
    trained one with each cross matrix W (U V^T when it was trained low-rank) cut to its best
    rank-r approximation (an SVD) or kept whole, so the scores are a trained model's, not
    the near-ties of fresh weights."""
    import dataclasses

    import torch

    from recfunnel.rank.fast import _LowRank

    stage = pipeline.funnel["rank"]
    saved_model, saved_config = stage.model_, stage.config
    assert saved_config.cross_layers >= 2  # a first and a later layer
    try:
        stage.config = dataclasses.replace(saved_config, cross_rank=rank)
        model = stage._build_model()
        state = {k: v for k, v in saved_model.state_dict().items() if not k.startswith("cross.")}
        for i, layer in enumerate(saved_model.cross.layers):
            if isinstance(layer, torch.nn.Linear):  # trained full-rank
                weight, bias = layer.weight.detach(), layer.bias.detach()
            else:  # trained low-rank: W = U V^T
                weight, bias = layer.u.weight.detach() @ layer.v.weight.detach(), layer.u.bias
            if rank is None:
                state[f"cross.layers.{i}.weight"] = weight
                state[f"cross.layers.{i}.bias"] = bias.detach()
                continue
            u, s, vt = torch.linalg.svd(weight)
            state[f"cross.layers.{i}.u.weight"] = u[:, :rank] * s[:rank]
            state[f"cross.layers.{i}.u.bias"] = bias.detach()
            state[f"cross.layers.{i}.v.weight"] = vt[:rank]
        model.load_state_dict(state)
        stage.model_ = model.eval()
        stage.forget_kernel()
        low = [isinstance(layer, _LowRank) for layer in stage.kernel().cross[1:]]
        assert all(low) if rank is not None else not any(low)
        _compare(pipeline, _users(pipeline)["warm"][:40])
    finally:
        stage.model_, stage.config = saved_model, saved_config
        stage.forget_kernel()
