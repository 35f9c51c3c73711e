"""Metrics: hand-computed examples (arithmetic in comments) and cross-checks with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import metrics as skm

from recfunnel.evaluation.metrics import (
    auc,
    calibration_bins,
    coverage,
    expected_calibration_error,
    gauc,
    hit_matrix,
    hit_rate_at_k,
    ild_at_k,
    log_loss,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)


def _truth(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(rows), n_items))


# ----------------------------------------------------------------------------- hand examples


def test_hit_matrix_by_hand() -> None:
    # user 0 likes {1, 3}: list [1, 2, 3] hits at ranks 1 and 3.
    # user 1 likes {0}:    list [2, -1, 0] hits at rank 3; the padding is never a hit.
    truth = _truth([[1, 3], [0]], n_items=4)
    hits = hit_matrix(np.array([[1, 2, 3], [2, -1, 0]]), truth)
    np.testing.assert_array_equal(hits, [[True, False, True], [False, False, True]])
    assert hits.dtype == bool


def test_hit_matrix_unsorted_indices_and_explicit_zeros() -> None:
    # Row 0 stores its columns as [3, 1] (unsorted) and a stored 0 at column 2, which
    # is not relevant; the result must not depend on the storage order.
    truth = sp.csr_matrix(
        (np.array([1.0, 1.0, 0.0]), np.array([3, 1, 2]), np.array([0, 3])), shape=(1, 4)
    )
    hits = hit_matrix(np.array([[2, 1, 3, 0]]), truth)
    np.testing.assert_array_equal(hits, [[False, True, True, False]])


def test_hit_matrix_no_relevant_at_all() -> None:
    hits = hit_matrix(np.array([[0, 1]]), sp.csr_matrix((1, 3)))
    np.testing.assert_array_equal(hits, [[False, False]])


def test_top_n_metrics_by_hand() -> None:
    hits = np.array(
        [
            [True, False, True],  # user 0: hits at ranks 1 and 3, 2 relevant
            [False, True, False],  # user 1: hit at rank 2, 5 relevant
            [True, False, False],  # user 2: one item then padding, 1 relevant
            [False, False, False],  # user 3: no hit, 1 relevant
        ]
    )
    n_rel = np.array([2, 5, 1, 1])
    log2_3 = math.log2(3)

    # Recall@3 = hits / |truth|: 2/2, 1/5, 1/1, 0/1.
    np.testing.assert_allclose(recall_at_k(hits, n_rel, 3), [1.0, 0.2, 1.0, 0.0])
    # Recall@1: only rank 1 counts: 1/2, 0/5, 1/1, 0.
    np.testing.assert_allclose(recall_at_k(hits, n_rel, 1), [0.5, 0.0, 1.0, 0.0])
    # Precision@3 = hits / 3, the padded slots of user 2 count as misses.
    np.testing.assert_allclose(precision_at_k(hits, 3), [2 / 3, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(hit_rate_at_k(hits, 3), [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(hit_rate_at_k(hits, 1), [1.0, 0.0, 1.0, 0.0])

    # NDCG@3
    # user 0: DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5; IDCG over min(2, 3) = 2 hits
    #         = 1 + 1/log2(3) -> 1.5 / 1.6309 = 0.9197
    # user 1: DCG = 1/log2(3) = 0.6309; IDCG over min(5, 3) = 3 hits
    #         = 1 + 1/log2(3) + 1/log2(4) = 2.1309 -> 0.2961
    # user 2: DCG = 1 = IDCG over 1 hit -> 1; user 3: 0.
    expected = [
        1.5 / (1 + 1 / log2_3),
        (1 / log2_3) / (1 + 1 / log2_3 + 0.5),
        1.0,
        0.0,
    ]
    np.testing.assert_allclose(ndcg_at_k(hits, n_rel, 3), expected)
    assert ndcg_at_k(hits, n_rel, 3).dtype == np.float64


def test_auc_by_hand_with_tie() -> None:
    # Positives score 0.9 and 0.3, negatives 0.9 and 0.1. Pairs (pos, neg):
    # (0.9, 0.9) tie = 0.5, (0.9, 0.1) = 1, (0.3, 0.9) = 0, (0.3, 0.1) = 1 -> 2.5 / 4.
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.9, 0.3, 0.1])) == pytest.approx(0.625)


def test_gauc_by_hand() -> None:
    # user 7: labels [1, 0, 0], scores [.8, .5, .9]: the positive beats .5 and loses to .9
    #         -> AUC 1/2, weight 3 rows.
    # user 3: labels [1, 0], scores [.2, .1] -> AUC 1, weight 2 rows.
    # user 5: only positives -> left out.
    # GAUC = (3 * 0.5 + 2 * 1) / (3 + 2) = 0.7
    users = np.array([7, 3, 7, 5, 3, 7, 5])
    labels = np.array([1, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.8, 0.2, 0.5, 0.4, 0.1, 0.9, 0.3])
    assert gauc(users, labels, scores) == pytest.approx(0.7)


def test_gauc_ties_within_user_count_half() -> None:
    # One user, positive and negative both score 0.5 -> AUC 0.5.
    assert gauc(np.array([1, 1]), np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_log_loss_by_hand_and_clipping() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2 = (0.22314 + 0.51083) / 2 = 0.366985
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(0.3669845)
    # Both fully wrong: clipped to eps = 1e-7 -> -ln(1e-7) = 16.118 each, finite.
    assert log_loss(np.array([0, 1]), np.array([1.0, 0.0])) == pytest.approx(-math.log(1e-7))


def test_calibration_by_hand() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    probs = np.array([0.05, 0.15, 0.55, 0.65, 1.0])  # 1.0 belongs to the last bin
    bins = calibration_bins(labels, probs, bins=2)
    # bin [0, 0.5): probs 0.05, 0.15 (mean 0.1), labels 0, 1 (rate 0.5)
    # bin [0.5, 1]: probs 0.55, 0.65, 1.0 (mean 0.7333), labels 0, 1, 1 (rate 0.6667)
    np.testing.assert_allclose(bins["count"], [2, 3])
    np.testing.assert_allclose(bins["mean_prob"], [0.1, 2.2 / 3])
    np.testing.assert_allclose(bins["positive_rate"], [0.5, 2 / 3])
    # ECE = (2 * |0.5 - 0.1| + 3 * |0.6667 - 0.7333|) / 5 = (0.8 + 0.2) / 5 = 0.2
    assert expected_calibration_error(labels, probs, bins=2) == pytest.approx(0.2)
    # Empty bins are nan and do not count; predicting the observed rate scores 0.
    assert np.isnan(calibration_bins(labels, probs, bins=10)["mean_prob"][3])
    assert expected_calibration_error(labels, np.full(5, 0.6), bins=10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="bins"):
        calibration_bins(labels, probs, bins=0)
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error(labels, np.array([0.1, 0.2, 0.3, 0.4, 1.2]))


def test_ild_by_hand() -> None:
    # item 0 = Action, item 1 = Action + Comedy, item 2 = Drama, item 3 = no genre.
    features = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=float)
    topk = np.array([[0, 1, 2], [0, 3, -1], [0, -1, -1], [1, 1, 0]])
    # list 0: cos(0,1) = 1/sqrt(2) -> distance 0.2929; (0,2) and (1,2) orthogonal -> 1 each;
    #         mean = (0.2929 + 1 + 1) / 3 = 0.7643
    # list 1: one pair with the zero row: cosine 0 by convention -> 1
    # list 2: one item, no pair -> nan
    # list 3: (1,1) distance 0, (1,0) and (1,0) 0.2929 each -> 0.5858 / 3 = 0.1953
    d01 = 1 - 1 / math.sqrt(2)
    np.testing.assert_allclose(
        ild_at_k(topk, features), [(d01 + 2) / 3, 1.0, np.nan, 2 * d01 / 3], equal_nan=True
    )


def test_coverage_by_hand() -> None:
    # Items 0 and 1 appear, 2 and 3 never: 2 / 4; the padding is not an item.
    assert coverage(np.array([[0, 1], [1, -1]]), n_items=4) == 0.5


# ----------------------------------------------------------------------------- cross-checks


def test_top_n_against_sklearn() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, k = 60, 50, 10
    relevant = rng.random((n_users, n_items)) < 0.15
    relevant[relevant.sum(axis=1) == 0, 0] = True
    scores = rng.random((n_users, n_items))  # continuous, so no ties for sklearn to handle
    topk = np.argsort(-scores, axis=1)[:, :k]
    hits = hit_matrix(topk, sp.csr_matrix(relevant))
    n_rel = relevant.sum(axis=1)

    np.testing.assert_array_equal(hits, np.take_along_axis(relevant, topk, axis=1))
    for kk in (1, 5, k):
        ndcg = ndcg_at_k(hits, n_rel, kk)
        precision = precision_at_k(hits, kk)
        for u in range(n_users):
            expected = skm.ndcg_score(relevant[u : u + 1], scores[u : u + 1], k=kk)
            assert ndcg[u] == pytest.approx(expected)
            predicted = np.zeros(n_items, dtype=bool)
            predicted[topk[u, :kk]] = True
            assert precision[u] == pytest.approx(skm.precision_score(relevant[u], predicted))


def test_auc_and_log_loss_against_sklearn() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * labels, 1)  # coarse: many ties
    assert auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))
    probs = np.clip(rng.random(500), 0.01, 0.99)
    assert log_loss(labels, probs) == pytest.approx(skm.log_loss(labels, probs))


def test_gauc_against_per_user_loop() -> None:
    rng = np.random.default_rng(2)
    n = 3000
    users = rng.integers(0, 200, n) * 3  # sparse, non-contiguous ids
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.random(n) + 0.2 * labels, 1)

    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        num += m.sum() * skm.roc_auc_score(labels[m], scores[m])
        den += m.sum()
    assert gauc(users, labels, scores) == pytest.approx(num / den)


def test_ild_against_double_loop() -> None:
    rng = np.random.default_rng(3)
    features = (rng.random((30, 6)) < 0.3).astype(float)  # some rows are all zero
    topk = np.stack([rng.permutation(30)[:8] for _ in range(20)])
    topk[::3, 5:] = -1  # short lists

    expected = []
    for row in topk:
        items = row[row >= 0]
        dist = []
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                a, b = features[items[i]], features[items[j]]
                na, nb = np.linalg.norm(a), np.linalg.norm(b)
                cos = a @ b / (na * nb) if na > 0 and nb > 0 else 0.0
                dist.append(1 - cos)
        expected.append(np.mean(dist))
    np.testing.assert_allclose(ild_at_k(topk, features), expected)


# ----------------------------------------------------------------------------- errors


def test_errors() -> None:
    hits = np.array([[True, False]])
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(hits, np.array([0]), 2)
    with pytest.raises(ValueError, match="relevant"):
        ndcg_at_k(hits, np.array([0]), 2)
    with pytest.raises(ValueError, match="k=3"):
        precision_at_k(hits, 3)
    with pytest.raises(ValueError, match="k=0"):
        hit_rate_at_k(hits, 0)
    with pytest.raises(ValueError, match="both"):
        auc(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="binary"):
        auc(np.array([1, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="both"):
        gauc(np.array([1, 2]), np.array([1, 0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="probs"):
        log_loss(np.array([1, 0]), np.array([1.5, 0.2]))
    truth = _truth([[0]], n_items=3)
    with pytest.raises(ValueError, match="repeats"):
        hit_matrix(np.array([[0, 0, -1]]), truth)
    with pytest.raises(ValueError, match="indices"):
        hit_matrix(np.array([[3]]), truth)
    with pytest.raises(ValueError, match="rows"):
        hit_matrix(np.array([[0], [1]]), truth)
