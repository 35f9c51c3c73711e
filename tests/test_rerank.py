"""MMR re-ranking: hand-worked examples (arithmetic in comments), a brute-force reference,
the edge cases of the tie rule, and a check that diversity goes up."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recfunnel.config import load_config
from recfunnel.errors import ConfigError
from recfunnel.evaluation.metrics import ild_at_k
from recfunnel.rerank import RerankConfig, cosine_similarity, mmr, relevance_scale
from recfunnel.rerank.dpp import RIDGE, dpp
from recfunnel.rerank.ild import _dissimilarity_rows, ild_greedy
from recfunnel.rerank.mmr import _unit
from recfunnel.rerank.report import choose_lambda

# ----------------------------------------------------------------------------- reference


def _cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def reference_mmr(
    rel: np.ndarray, vectors: np.ndarray, k: int, lam: float, valid: np.ndarray
) -> np.ndarray:
    """MMR straight from the definition, one user at a time, plain Python."""
    out = []
    for r, vecs, ok in zip(rel.tolist(), vectors.tolist(), valid.tolist(), strict=True):
        chosen: list[int] = []
        for _ in range(k):
            best, best_value = -1, -math.inf
            for i in range(len(r)):
                if not ok[i] or i in chosen:
                    continue
                penalty = max((_cos(vecs[i], vecs[j]) for j in chosen), default=0.0)
                value = lam * r[i] - (1 - lam) * penalty
                if value > best_value:  # strict: a tie keeps the smaller position
                    best, best_value = i, value
            if best >= 0:
                chosen.append(best)
        out.append(chosen + [-1] * (k - len(chosen)))
    return np.array(out, dtype=np.int64).reshape(len(out), k)


def _dyadic_inputs(seed: int, n_users: int = 40, n: int = 9, d: int = 6):
    """Inputs whose every cosine and objective is exact in floating point, so the vectorised
    and the reference code must agree bit for bit, ties included: binary vectors with 0, 1
    or 4 ones (norm 0, 1 or 2: cosines are multiples of 1/4) and relevance in quarters."""
    rng = np.random.default_rng(seed)
    vectors = np.zeros((n_users, n, d))
    n_ones = rng.choice([0, 1, 4], size=(n_users, n), p=[0.1, 0.45, 0.45])
    for u in range(n_users):
        for i in range(n):
            vectors[u, i, rng.choice(d, size=n_ones[u, i], replace=False)] = 1.0
    rel = rng.integers(0, 5, size=(n_users, n)) / 4.0
    valid = rng.random((n_users, n)) < 0.8
    valid[0] = True  # one full row
    valid[1] = False  # one empty row
    valid[2, 1:] = False  # one single-candidate row
    return rel, vectors, valid


# ----------------------------------------------------------------------------- mmr by hand

# Four candidates in 2-d; position 1 duplicates position 0, position 3 lies between 0 and 2.
#   pos:  0       1       2       3
#   rel:  1.0     0.9     0.5     0.8
#   vec:  (1,0)   (1,0)   (0,1)   (1,1)
# cos to (1,0): 1, 1, 0, 1/sqrt(2) = 0.7071; cos to (0,1): 0, 0, 1, 0.7071.
REL = np.array([[1.0, 0.9, 0.5, 0.8]])
VEC = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])


def test_mmr_hand_example_half():
    # lambda = 0.5, objective 0.5 rel - 0.5 maxsim.
    # step 0: 0.5 rel = [.5, .45, .25, .4] -> 0.
    # step 1: pos1 .45 - .5 = -.05; pos2 .25 - 0 = .25; pos3 .4 - .3536 = .0464 -> 2.
    # step 2: maxsim pos1 = max(1, 0) = 1 -> -.05; pos3 = max(.7071, .7071) -> .0464 -> 3.
    assert mmr(REL, VEC, 3, 0.5).tolist() == [[0, 2, 3]]


def test_mmr_hand_example_three_quarters():
    # lambda = 0.75, objective .75 rel - .25 maxsim.
    # step 0: -> 0.  step 1: pos1 .675 - .25 = .425; pos2 .375; pos3 .6 - .1768 = .4232 -> 1.
    # step 2: pos2 .375 - 0 = .375; pos3 .4232 -> 3.  step 3: only 2 is left.
    assert mmr(REL, VEC, 4, 0.75).tolist() == [[0, 1, 3, 2]]


def test_mmr_lambda_one_is_relevance_order():
    # rel 1.0 > 0.9 > 0.8 > 0.5 -> positions 0, 1, 3, 2; similarity plays no part.
    assert mmr(REL, VEC, 4, 1.0).tolist() == [[0, 1, 3, 2]]


def test_mmr_lambda_zero_starts_at_first_position_then_least_similar():
    # Step 0: every objective is 0, so the tie rule picks position 0 (not the most relevant
    # candidate, position 2). Then -maxsim to (1,0): pos1 -1, pos2 -.7071, pos3 0 -> 3.
    # Then maxsim to {0, 3}: pos1 max(1, .7071) = 1; pos2 max(.7071, 0) -> 2.
    rel = np.array([[0.1, 0.2, 1.0, 0.3]])
    vec = np.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    assert mmr(rel, vec, 4, 0.0).tolist() == [[0, 3, 2, 1]]


def test_mmr_lambda_zero_first_pick_skips_padding():
    valid = np.array([[False, False, True, True]])
    assert mmr(REL, VEC, 1, 0.0, valid).tolist() == [[2]]


def test_mmr_negative_cosine_is_a_bonus():
    # Embeddings may point away from each other. lambda = 0.5, after picking 0 = (1,0):
    # pos1 = (-1,0): .5 * .2 - .5 * (-1) = .6; pos2 = (0,1): .5 * .3 - 0 = .15 -> 1.
    # (Clipping the max at 0, as if the empty-set 0 stayed in it, would pick 2.)
    rel = np.array([[1.0, 0.2, 0.3]])
    vec = np.array([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])
    assert mmr(rel, vec, 2, 0.5).tolist() == [[0, 1]]


def test_mmr_ties_go_to_smaller_position():
    # Equal relevance and identical vectors: every step is a tie.
    rel = np.full((2, 4), 0.5)
    vec = np.ones((2, 4, 3))
    for lam in (0.0, 0.5, 1.0):
        assert mmr(rel, vec, 4, lam).tolist() == [[0, 1, 2, 3]] * 2


def test_mmr_pads_short_lists():
    valid = np.array([[True, False, True, False], [False] * 4])
    rel = np.vstack([REL, REL])
    vec = np.vstack([VEC, VEC])
    out = mmr(rel, vec, 3, 0.5, valid)
    assert out.dtype == np.int64
    assert out.tolist() == [[0, 2, -1], [-1, -1, -1]]


def test_mmr_k_larger_than_n():
    assert mmr(REL, VEC, 6, 1.0).tolist() == [[0, 1, 3, 2, -1, -1]]


def test_mmr_ignores_non_finite_padding():
    rel = np.array([[np.nan, 0.5, np.inf, 0.2]])
    valid = np.array([[False, True, False, True]])
    for lam in (0.0, 0.5, 1.0):
        assert mmr(rel, VEC, 3, lam, valid).tolist() == [[1, 3, -1]]


def test_mmr_empty_inputs():
    out = mmr(np.zeros((2, 0)), np.zeros((2, 0, 3)), 3, 0.5)
    assert out.shape == (2, 3) and (out == -1).all()
    assert mmr(np.zeros((0, 4)), np.zeros((0, 4, 3)), 2, 0.5).shape == (0, 2)


def test_mmr_accepts_numpy_scalars_and_float32():
    out = mmr(REL.astype(np.float32), VEC.astype(np.float32), np.int64(3), np.float32(0.5))
    assert out.tolist() == [[0, 2, 3]]


# ----------------------------------------------------------------------------- mmr vs reference


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_mmr_matches_reference_with_ties(seed: int, lam: float):
    rel, vectors, valid = _dyadic_inputs(seed)
    expected = reference_mmr(rel, vectors, 6, lam, valid)
    np.testing.assert_array_equal(mmr(rel, vectors, 6, lam, valid), expected)


@pytest.mark.parametrize("seed", range(3))
def test_mmr_matches_reference_continuous(seed: int):
    # Gaussian embeddings (negative cosines included) and continuous relevance.
    rng = np.random.default_rng(100 + seed)
    rel = rng.random((30, 12))
    vectors = rng.normal(size=(30, 12, 5))
    vectors[0, 3] = 0.0  # a zero vector
    valid = rng.random((30, 12)) < 0.85
    lam = float(rng.uniform(0.2, 0.8))
    expected = reference_mmr(rel, vectors, 8, lam, valid)
    np.testing.assert_array_equal(mmr(rel, vectors, 8, lam, valid), expected)


@pytest.mark.parametrize("seed", range(3))
def test_mmr_lambda_one_is_stable_argsort(seed: int):
    rng = np.random.default_rng(seed)
    rel = rng.integers(0, 4, size=(50, 15)).astype(np.float64)  # many ties
    vectors = rng.normal(size=(50, 15, 4))
    valid = rng.random((50, 15)) < 0.7
    k = 10
    order = np.argsort(np.where(valid, -rel, np.inf), axis=1, kind="stable")[:, :k]
    n_valid = valid.sum(axis=1, keepdims=True)
    expected = np.where(np.arange(k)[None, :] < n_valid, order, -1)
    np.testing.assert_array_equal(mmr(rel, vectors, k, 1.0, valid), expected)


def test_mmr_lists_are_valid_and_unique():
    rel, vectors, valid = _dyadic_inputs(7)
    out = mmr(rel, vectors, 9, 0.4, valid)
    for row, ok in zip(out, valid, strict=True):
        picked = row[row >= 0]
        assert len(picked) == min(9, ok.sum())
        assert len(set(picked.tolist())) == len(picked)
        assert ok[picked].all()
        assert (row[len(picked) :] == -1).all()  # padding only at the end


# ----------------------------------------------------------------------------- mmr errors


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3", None])
def test_mmr_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must"):
        mmr(REL, VEC, k, 0.5)


@pytest.mark.parametrize("lam", [-0.1, 1.1, math.nan, "0.5", None, True])
def test_mmr_rejects_bad_lambda(lam):
    with pytest.raises(ValueError, match="lambda_mmr"):
        mmr(REL, VEC, 2, lam)


def test_mmr_rejects_bad_shapes():
    with pytest.raises(ValueError, match="relevance must be 2-D"):
        mmr(REL[0], VEC, 2, 0.5)
    with pytest.raises(ValueError, match="vectors must have shape"):
        mmr(REL, VEC[:, :3], 2, 0.5)
    with pytest.raises(ValueError, match="vectors must have shape"):
        mmr(REL, VEC[0], 2, 0.5)
    with pytest.raises(ValueError, match="valid has shape"):
        mmr(REL, VEC, 2, 0.5, np.ones((1, 3), dtype=bool))
    with pytest.raises(ValueError, match="bool mask"):
        mmr(REL, VEC, 2, 0.5, np.ones((1, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="finite"):
        mmr(np.array([[1.0, np.nan, 0.0, 0.0]]), VEC, 2, 0.5)


# ----------------------------------------------------------------------------- relevance_scale


def test_minmax_of_one_unpadded_list_is_the_batch_arithmetic():
    """The one-list shortcut (a served request) gives the masked batch path's values bit
    for bit: alone, inside a batch, and beside a padding slot; a flat list is all 1.0."""
    rng = np.random.default_rng(9)
    for case in range(300):
        n = int(rng.integers(1, 40))
        scores = rng.standard_normal((1, n)) * 10.0 ** int(rng.integers(-3, 4))
        if case % 4 == 0:
            scores = np.round(scores)  # ties
        if case % 7 == 0:
            scores[:] = 1.5  # no spread
        one = relevance_scale(scores, np.ones((1, n), bool))
        batch = relevance_scale(np.r_[scores, scores], np.ones((2, n), bool))[0]
        padded = relevance_scale(np.c_[scores, [[0.0]]], np.c_[np.ones((1, n), bool), [[False]]])
        np.testing.assert_array_equal(one[0], batch)
        np.testing.assert_array_equal(one[0], padded[0, :n])


def test_minmax_by_hand():
    # Valid scores 2, 4, 3: min 2, span 2 -> 0, 1, .5; the padding slot gets 0.
    scores = np.array([[2.0, 4.0, 3.0, -np.inf]])
    valid = np.array([[True, True, True, False]])
    np.testing.assert_allclose(relevance_scale(scores, valid), [[0.0, 1.0, 0.5, 0.0]])


def test_minmax_logits_any_scale():
    # Logits -3, 1, -1: (s + 3) / 4 -> 0, 1, .5; a shift and a scale do not change it.
    scores = np.array([[-3.0, 1.0, -1.0]])
    np.testing.assert_allclose(relevance_scale(scores), [[0.0, 1.0, 0.5]])
    np.testing.assert_allclose(relevance_scale(10 * scores + 7), [[0.0, 1.0, 0.5]])


def test_rank_by_hand():
    # Descending: pos1 (3.0) 0th, pos3 (2.0) 1st, pos0 and pos2 tie at 0.1 -> pos0 2nd, pos2
    # 3rd. 1 - position / 3 -> pos0 1/3, pos1 1, pos2 0, pos3 2/3.
    scores = np.array([[0.1, 3.0, 0.1, 2.0]])
    np.testing.assert_allclose(relevance_scale(scores, how="rank"), [[1 / 3, 1.0, 0.0, 2 / 3]])


def test_rank_with_padding():
    # Valid 5.0 (pos0) and 9.0 (pos2): n_valid 2 -> 9.0 gets 1, 5.0 gets 0; padding 0.
    scores = np.array([[5.0, 100.0, 9.0]])
    valid = np.array([[True, False, True]])
    np.testing.assert_allclose(relevance_scale(scores, valid, "rank"), [[0.0, 0.0, 1.0]])


@pytest.mark.parametrize("how", ["minmax", "rank"])
def test_scale_constant_single_and_empty_rows(how: str):
    scores = np.array([[5.0, 5.0, 5.0], [7.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    valid = np.array([[True, True, True], [True, False, False], [False, False, False]])
    out = relevance_scale(scores, valid, how)
    assert out.dtype == np.float64
    assert out[1].tolist() == [1.0, 0.0, 0.0]  # a single valid candidate is fully relevant
    assert out[2].tolist() == [0.0, 0.0, 0.0]  # no valid candidate
    if how == "minmax":
        assert out[0].tolist() == [1.0, 1.0, 1.0]  # all equal -> all 1
    else:
        np.testing.assert_allclose(out[0], [1.0, 0.5, 0.0])  # ties by position


@pytest.mark.parametrize("how", ["minmax", "rank"])
def test_scale_range_and_order(how: str):
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=5.0, size=(20, 30))
    valid = rng.random((20, 30)) < 0.7
    out = relevance_scale(scores, valid, how)
    assert (out >= 0).all() and (out <= 1).all()
    assert (out[~valid] == 0).all()
    for s, r, ok in zip(scores, out, valid, strict=True):
        # The scale keeps each user's order (scores are distinct here).
        np.testing.assert_array_equal(np.argsort(-s[ok]), np.argsort(-r[ok]))
        assert r[ok].max() == 1.0 and r[ok].min() == 0.0


def test_scale_then_mmr_at_lambda_one_keeps_score_order():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(10, 20))
    vectors = rng.normal(size=(10, 20, 4))
    for how in ("minmax", "rank"):
        out = mmr(relevance_scale(scores, how=how), vectors, 5, 1.0)
        np.testing.assert_array_equal(out, np.argsort(-scores, axis=1)[:, :5])


def test_probability_relevance_is_kept_as_is():
    probs = np.array([[0.02, 0.30, 0.10], [0.9, 0.5, 0.7]])
    valid = np.array([[True, True, False], [True, True, True]])
    out = relevance_scale(probs, valid, "probability")
    # Not stretched per user: the unsure first user keeps small relevances, padding gets 0.
    np.testing.assert_allclose(out, [[0.02, 0.30, 0.0], [0.9, 0.5, 0.7]])
    with pytest.raises(ValueError, match="probability"):
        relevance_scale(np.array([[0.5, 1.5]]), how="probability")
    # Out-of-range padding is ignored, as every relevance ignores padding.
    padded = relevance_scale(np.array([[0.5, -3.0]]), np.array([[True, False]]), "probability")
    np.testing.assert_allclose(padded, [[0.5, 0.0]])


def test_probability_relevance_trades_the_same_for_every_user():
    # Two users with the same two candidates in the same order, identical genres for the
    # first two: min-max stretches both to [0, 1] and treats them alike; probabilities
    # let the sure user (0.9 vs 0.8) keep the similar runner-up and the unsure one (0.12
    # vs 0.11) take the different third item.
    probs = np.array([[0.9, 0.8, 0.1], [0.12, 0.11, 0.01]])
    vectors = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]] * 2)
    by_prob = mmr(relevance_scale(probs, how="probability"), vectors, 2, 0.8)
    assert by_prob.tolist() == [[0, 1], [0, 2]]
    by_minmax = mmr(relevance_scale(probs, how="minmax"), vectors, 2, 0.8)
    assert by_minmax[0].tolist() == by_minmax[1].tolist()


def test_scale_errors():
    with pytest.raises(ValueError, match="how must be"):
        relevance_scale(np.zeros((1, 2)), how="zscore")
    with pytest.raises(ValueError, match="finite"):
        relevance_scale(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        relevance_scale(np.zeros(3))


# ----------------------------------------------------------------------------- cosine


def test_cosine_by_hand_with_zero_vector():
    # (1,0).(3,4) / (1 * 5) = .6; the zero vector is 0 with everything, itself included.
    vectors = np.array([[[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]]])
    expected = [[[1.0, 0.0, 0.6], [0.0, 0.0, 0.0], [0.6, 0.0, 1.0]]]
    np.testing.assert_allclose(cosine_similarity(vectors), expected, atol=1e-12)


def test_cosine_matches_reference_and_keeps_float32():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3, 5, 4)).astype(np.float32)
    vectors[1, 2] = 0.0
    sim = cosine_similarity(vectors)
    assert sim.shape == (3, 5, 5) and sim.dtype == np.float32
    v = vectors.astype(np.float64).tolist()
    expected = [[[_cos(a, b) for b in user] for a in user] for user in v]
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    with pytest.raises(ValueError, match="3-D"):
        cosine_similarity(vectors[0])


# ----------------------------------------------------------------------------- diversity


def test_mmr_raises_genre_diversity():
    # Genre-like catalogue: 300 items with sparse multi-hot vectors over 18 genres; each user
    # has 50 candidates in rank order. MMR at lambda = .3 must give more diverse top-10
    # lists than the ranker's order (lambda = 1), by the protocol's ILD.
    rng = np.random.default_rng(0)
    features = (rng.random((300, 18)) < 0.12).astype(np.float64)
    candidates = np.argsort(rng.random((200, 300)), axis=1)[:, :50]
    rel = np.sort(rng.random((200, 50)), axis=1)[:, ::-1]
    vectors = features[candidates]
    ild = {}
    for lam in (1.0, 0.3):
        picks = mmr(rel, vectors, 10, lam)
        topk = np.take_along_axis(candidates, picks, axis=1)
        ild[lam] = float(np.nanmean(ild_at_k(topk, features)))
    assert ild[0.3] >= ild[1.0] + 0.05


# ----------------------------------------------------------------------------- config


def test_choose_lambda_by_hand():
    sweep = [
        {"lambda": 1.0, "ndcg@20": 0.200, "ild@20": 0.60},
        {"lambda": 0.9, "ndcg@20": 0.199, "ild@20": 0.64},
        {"lambda": 0.8, "ndcg@20": 0.196, "ild@20": 0.70},  # loses exactly 2 %: allowed
        {"lambda": 0.7, "ndcg@20": 0.190, "ild@20": 0.75},  # loses 5 %
    ]
    assert choose_lambda(sweep, 0.02) == 0.8
    assert choose_lambda(sweep, 0.06) == 0.7
    assert choose_lambda(sweep, 0.0) == 1.0  # only the rank order keeps all of its NDCG
    # A tie in ILD goes to the larger lambda; lambda 1 must be in the sweep.
    tied = [*sweep[:2], {"lambda": 0.85, "ndcg@20": 0.199, "ild@20": 0.64}]
    assert choose_lambda(tied, 0.02) == 0.9
    with pytest.raises(ValueError, match="lambda = 1"):
        choose_lambda(sweep[1:], 0.02)


def test_config_defaults_and_validation():
    config = RerankConfig()
    config.validate()
    # lambda none: training chooses it on the holdout.
    assert (config.lambda_mmr, config.similarity, config.relevance) == (None, "genre", "minmax")
    assert load_config(RerankConfig, overrides=["lambda_mmr=0"]).lambda_mmr == 0.0
    assert load_config(RerankConfig, overrides=["lambda_mmr=none"]).lambda_mmr is None
    for bad in (-0.01, 1.0):
        with pytest.raises(ConfigError, match="max_ndcg_loss"):
            RerankConfig(max_ndcg_loss=bad).validate()
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ConfigError, match="lambda_mmr"):
            RerankConfig(lambda_mmr=bad).validate()
    with pytest.raises(ConfigError, match="lambda_mmr"):
        load_config(RerankConfig, overrides=["lambda_mmr=2"])
    with pytest.raises(ConfigError):
        load_config(RerankConfig, overrides=["similarity=jaccard"])
    with pytest.raises(ConfigError, match="relevance"):
        RerankConfig(relevance="zscore").validate()  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- DPP
def _greedy_by_determinants(rel, vectors, k, lam):
    """The greedy MAP the slow way: at each step, the item whose addition gives the largest
    det(L_Y) (one explicit determinant per candidate)."""
    alpha = lam / (2 * (1 - lam))
    q = np.exp(alpha * rel)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    kernel = q[:, None] * (unit @ unit.T + RIDGE * np.eye(len(q))) * q[None, :]
    chosen: list[int] = []
    for _ in range(k):
        rest = [i for i in range(len(q)) if i not in chosen]
        dets = [np.linalg.det(kernel[np.ix_(chosen + [i], chosen + [i])]) for i in rest]
        chosen.append(rest[int(np.argmax(dets))])
    return chosen


def test_dpp_matches_the_explicit_determinant_greedy():
    rng = np.random.default_rng(5)
    for _ in range(5):
        rel = rng.random(8)
        vectors = rng.random((8, 4)) + 0.05
        out = dpp(rel[None], vectors[None], 5, 0.6)
        assert out[0].tolist() == _greedy_by_determinants(rel, vectors, 5, 0.6)


def test_dpp_skips_a_duplicate_and_lambda_one_is_the_relevance_order():
    rel = np.array([[1.0, 0.95, 0.5]])
    vectors = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # items 0 and 1 are twins
    assert dpp(rel, vectors, 3, 0.5)[0].tolist() == [0, 2, 1]
    assert dpp(rel, vectors, 3, 1.0)[0].tolist() == [0, 1, 2]


def test_dpp_never_picks_padding_and_pads_short_lists():
    rel = np.array([[0.2, 0.9, 0.5], [0.1, 0.0, 0.0]])
    valid = np.array([[True, False, True], [True, False, False]])
    vectors = np.ones((2, 3, 2))
    out = dpp(rel, vectors, 3, 0.5, valid)
    assert out[0].tolist()[:2] == [2, 0] and out[0, 2] == -1
    assert out[1].tolist() == [0, -1, -1]
    with pytest.raises(ValueError, match="lambda"):
        dpp(rel, vectors, 2, 1.5)


def test_the_method_is_a_validated_config_field():
    assert RerankConfig().method == "ild"
    assert load_config(RerankConfig, overrides=["method=dpp"]).method == "dpp"
    with pytest.raises(ConfigError):
        load_config(RerankConfig, overrides=["method=greedy"])


# ----------------------------------------------------------------------------- ILD greedy
def reference_ild_greedy(
    rel: np.ndarray, vectors: np.ndarray, k: int, lam: float, valid: np.ndarray
) -> np.ndarray:
    """The ILD greedy from its definition, one user at a time, plain Python: at place t + 1,
    lam * rel / log2(t + 2) + (1 - lam) * mean (1 - cos) to the chosen (0 if none)."""
    out = []
    for r, vecs, ok in zip(rel.tolist(), vectors.tolist(), valid.tolist(), strict=True):
        chosen: list[int] = []
        for t in range(k):
            best, best_value = -1, -math.inf
            for i in range(len(r)):
                if not ok[i] or i in chosen:
                    continue
                gain = r[i] if lam == 1.0 else lam * r[i] / math.log2(t + 2)
                if chosen:
                    dis = math.fsum(1 - _cos(vecs[i], vecs[j]) for j in chosen)
                    gain += (1 - lam) / len(chosen) * dis
                if gain > best_value:  # strict: a tie keeps the smaller position
                    best, best_value = i, gain
            if best >= 0:
                chosen.append(best)
        out.append(chosen + [-1] * (k - len(chosen)))
    return np.array(out, dtype=np.int64).reshape(len(out), k)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.85, 1.0])
def test_ild_greedy_matches_the_reference(seed: int, lam: float):
    rng = np.random.default_rng(seed)
    rel = rng.random((12, 9))
    vectors = (rng.random((12, 9, 5)) < 0.4).astype(np.float32)  # genre-like, some all-zero
    valid = rng.random((12, 9)) < 0.85
    valid[1] = False
    out = ild_greedy(rel, vectors, 6, lam, valid)
    assert out.tolist() == reference_ild_greedy(rel, vectors, 6, lam, valid).tolist()
    # One user at a time (the fast path) gives the batch's lists.
    for u in range(len(rel)):
        assert ild_greedy(
            rel[u : u + 1], vectors[u : u + 1], 6, lam, valid[u : u + 1]
        ).tolist() == [out[u].tolist()]


@pytest.mark.parametrize("seed", range(3))
def test_one_list_ild_greedy_is_the_batch_one_on_ties(seed: int):
    """The one-list path (precomputed discounts, a -inf mask in the gains) picks what the
    batch loop picks, on inputs full of exact ties, both dtypes, every kind of lambda."""
    rng = np.random.default_rng(seed)
    for case in range(200):
        n, d, k = int(rng.integers(1, 40)), int(rng.integers(1, 6)), int(rng.integers(1, 25))
        dtype = np.float32 if case % 2 else np.float64
        vectors = (rng.random((3, n, d)) < 0.4).astype(dtype)
        rel = rng.integers(0, 4, (3, n)) / 3.0  # many exact ties
        valid = rng.random((3, n)) < 0.8
        lam = [0.0, 1.0, 0.5, 0.84, float(rng.random())][case % 5]
        batch = ild_greedy(rel, vectors, k, lam, valid)
        for u in range(3):
            one = ild_greedy(rel[u : u + 1], vectors[u : u + 1], k, lam, valid[u : u + 1])
            assert one.tolist() == [batch[u].tolist()], (case, u)


@pytest.mark.parametrize("seed", range(2))
def test_one_list_ild_greedy_on_genre_rows_is_the_batch_one(seed: int):
    """Genre-like rows (18-d multi-hot with 0-6 ones: cosines whose float32 rounding
    depends on the order of the sum, which a (N, d) @ (d, N) product may change) in long
    lists: the one-list path, whether it precomputes the (N, N) dissimilarities or makes
    them step by step, and with the unit rows gathered from a table normalised once
    (`normalised=True`), picks what the batch loop picks."""
    rng = np.random.default_rng(seed)
    # Few distinct genre sets, so that equal rows (equal objectives: ties) abound.
    sets = np.zeros((12, 18), dtype=np.float32)
    for row, count in enumerate(rng.choice([0, 1, 3, 5, 6], size=len(sets))):
        sets[row, rng.choice(18, size=count, replace=False)] = 1.0
    catalogue = sets[rng.integers(0, len(sets), 300)]
    unit_catalogue = _unit(catalogue)
    for case in range(60):
        n = [100, 150, 40][case % 3]
        k = [20, 3, 1, 12][case % 4]  # 150 candidates, 3 picks: the rows step by step
        items = np.stack([rng.choice(len(catalogue), n, replace=False) for _ in range(3)])
        rel = rng.integers(0, 6, (3, n)) / 5.0  # many exact ties
        valid = rng.random((3, n)) < 0.9
        lam = [0.0, 1.0, 0.5, 0.84, float(rng.random())][case % 5]
        batch = ild_greedy(rel, catalogue[items], k, lam, valid)
        gathered = unit_catalogue[items]
        assert np.array_equal(gathered, _unit(catalogue[items]))  # bit for bit
        for u in range(3):
            one = ild_greedy(rel[u : u + 1], catalogue[items[u : u + 1]], k, lam, valid[u : u + 1])
            assert one.tolist() == [batch[u].tolist()], (case, u)
            one = ild_greedy(
                rel[u : u + 1], gathered[u : u + 1], k, lam, valid[u : u + 1], normalised=True
            )
            assert one.tolist() == [batch[u].tolist()], (case, u)
    # Each dissimilarity row is bit for bit the batch step's `1 - unit @ unit[pick]` (a
    # (N, d) @ (d, N) product instead would round some of these cosines differently).
    unit = gathered[:1]
    for steps in (100, 2):  # the whole (N, N) at once; one row per step
        row = _dissimilarity_rows(unit, steps)
        for pick in range(unit.shape[1]):
            sim = np.matmul(unit, unit[:, pick][:, :, None])[0, :, 0]
            assert np.array_equal(row(pick), 1.0 - sim.astype(np.float64)), (steps, pick)


def test_ild_greedy_lambda_one_is_the_stable_relevance_order():
    rel = np.array([[0.5, 0.9, 0.5, 0.1, 0.9]])
    vectors = np.eye(5)[None]
    assert ild_greedy(rel, vectors, 5, 1.0)[0].tolist() == [1, 4, 0, 2, 3]


def test_ild_greedy_rewards_the_list_mean_where_mmr_sees_only_the_nearest():
    """Chosen: A and B. Candidate X is a twin of A but unlike B; Y is halfway to both.
    MMR (max cosine) penalises X fully for A; the ILD greedy sees X's mean dissimilarity
    (0 + 1) / 2 = 0.5 against Y's 1 - 1/sqrt(2) = 0.29, which is what each adds to ILD."""
    #   pos:  0=A     1=B     2=X     3=Y
    rel = np.array([[1.0, 0.99, 0.5, 0.5]])
    vectors = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
    assert ild_greedy(rel, vectors, 3, 0.3)[0].tolist() == [0, 1, 2]
    assert mmr(rel, vectors, 3, 0.3)[0].tolist() == [0, 1, 3]


def test_ild_greedy_diversifies_the_tail_more_than_the_head():
    """The discount makes an early place cost more relevance than a late one: with 3 twins
    on top and a different item below, the different item comes in below place 1."""
    rel = np.array([[1.0, 0.97, 0.96, 0.6]])
    vectors = np.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    order = ild_greedy(rel, vectors, 4, 0.7)[0].tolist()
    assert order[0] == 0 and order.index(3) in (1, 2)


def test_ild_greedy_pads_and_validates():
    rel = np.array([[0.2, 0.9, 0.5], [0.1, 0.0, 0.0]])
    valid = np.array([[True, False, True], [True, False, False]])
    vectors = np.ones((2, 3, 2))
    out = ild_greedy(rel, vectors, 3, 0.5, valid)
    assert out[0].tolist()[:2] == [2, 0] and out[0, 2] == -1
    assert out[1].tolist() == [0, -1, -1]
    with pytest.raises(ValueError, match="lambda"):
        ild_greedy(rel, vectors, 2, 1.5)
    assert load_config(RerankConfig, overrides=["method=ild"]).method == "ild"


# ----------------------------------------------------------------------------- the order


def test_by_relevance_sorts_the_chosen_set_keeps_ties_and_padding():
    from recfunnel.rerank.stage import by_relevance

    #            pos: 0    1    2    3    4
    rel = np.array([[0.9, 0.2, 0.5, 0.5, 0.1], [0.3, 0.8, 0.0, 0.0, 0.0]])
    picks = np.array([[0, 4, 3, 2], [0, 1, -1, -1]])
    # Row 0: 0 (0.9), then the tie 2 / 3 (0.5) in position order, then 4 (0.1).
    # Row 1: 1 (0.8) before 0 (0.3); the padding stays at the end.
    assert by_relevance(picks, rel).tolist() == [[0, 2, 3, 4], [1, 0, -1, -1]]
    assert by_relevance(picks[:, :0], rel).shape == (2, 0)
    # One list (the served request's shortcut) gives what the batch gives for that row.
    rng = np.random.default_rng(3)
    many_rel = rng.integers(0, 4, size=(30, 12)) / 4.0  # ties, often
    many = np.stack([rng.permutation(12)[:6] for _ in range(30)])
    many[5, 4:] = -1
    batch = by_relevance(many, many_rel)
    for u in range(30):
        assert by_relevance(many[u : u + 1], many_rel[u : u + 1]).tolist() == [batch[u].tolist()]


@pytest.mark.parametrize("method", ["ild", "mmr", "dpp"])
@pytest.mark.parametrize("lam", [0.3, 0.8, 1.0])
def test_the_relevance_order_keeps_the_chosen_set_and_its_ild(method: str, lam: float):
    """rerank.order=relevance chooses the very items of the pick order (so the same ILD@k)
    and lists them by descending relevance; at lambda 1 the two orders are one."""
    from recfunnel.rerank.stage import MMRReranker

    rng = np.random.default_rng(7)
    genres = (rng.random((60, 18)) < 0.2).astype(np.float32)
    items = np.stack([rng.permutation(60)[:30] for _ in range(8)])
    score = np.sort(rng.normal(size=(8, 30)), axis=1)[:, ::-1].copy()  # rank order: best first
    valid = np.ones((8, 30), dtype=bool)
    valid[3, 25:] = False
    lists = {}
    for order in ("greedy", "relevance"):
        rerank = MMRReranker(RerankConfig(method=method, order=order, lambda_mmr=lam))
        rerank._keep_genres(genres)
        rerank._fitted()
        lists[order] = rerank.order(items, score, valid, None, k=10)
    greedy, ordered = lists["greedy"], lists["relevance"]
    assert [set(row) for row in greedy.tolist()] == [set(row) for row in ordered.tolist()]
    # the rank scores are sorted, so relevance order is position order here
    assert (np.diff(ordered, axis=1) > 0).all()
    chosen = [items[u, ordered[u]] for u in range(8)]
    assert np.allclose(
        ild_at_k(np.array(chosen), genres),
        ild_at_k(np.array([items[u, greedy[u]] for u in range(8)]), genres),
    )
    if lam == 1.0:
        assert (greedy == ordered).all()
    with pytest.raises(ConfigError, match="order"):
        RerankConfig(order="random").validate()  # type: ignore[arg-type]
    assert load_config(RerankConfig, overrides=["order=relevance"]).order == "relevance"
