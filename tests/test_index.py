"""Tests for the top-K index: hand-worked order, ties, exclusion, ANN recall, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.errors import ConfigError, NotFittedError
from recfunnel.recall.index import (
    PAD_ID,
    ExactIndex,
    HNSWIndex,
    ItemIndex,
    IVFIndex,
    load_index,
    make_index,
    recall_against_exact,
)

BACKENDS = ["exact", "hnsw", "ivf"]

# Four items in 2-d, ids deliberately not in build order.
TINY_IDS = np.array([10, 40, 20, 30])
TINY_EMB = np.array([[1, 0], [-1, 0.5], [0, 1], [1, 1]], dtype=np.float32)
TINY_QUERIES = np.array([[2, 1], [0, -1]], dtype=np.float32)
# Query (2, 1):  10 -> 2, 40 -> -1.5, 20 -> 1, 30 -> 3    => 30, 10, 20, 40
# Query (0, -1): 10 -> 0, 40 -> -0.5, 20 -> -1, 30 -> -1  => 10, 40, then the tie
#                20 vs 30 at -1 goes to the smaller id    => 10, 40, 20, 30
TINY_ORDER = np.array([[30, 10, 20, 40], [10, 40, 20, 30]])
TINY_SCORES = np.array([[3, 2, 1, -1.5], [0, -0.5, -1, -1]], dtype=np.float32)


def clustered(n_items: int, n_queries: int, dim: int, seed: int = 0):
    """Items and queries scattered around 40 shared centres, like learned embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    items = centres[rng.integers(40, size=n_items)] + 0.5 * rng.normal(size=(n_items, dim))
    queries = centres[rng.integers(40, size=n_queries)] + 0.5 * rng.normal(size=(n_queries, dim))
    return items.astype(np.float32), queries.astype(np.float32)


def brute_force(emb, ids, queries, k, exclude_ids):
    """Reference: score everything in Python, drop excluded, sort by (score desc, id asc)."""
    out_ids = np.full((len(queries), k), PAD_ID)
    for row, q in enumerate(queries):
        scores = emb @ q
        banned = set(exclude_ids[row].tolist())
        ranked = sorted(
            (-s, i) for s, i in zip(scores, ids.tolist(), strict=True) if i not in banned
        )
        top = [i for _, i in ranked[:k]]
        out_ids[row, : len(top)] = top
    return out_ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_hand_worked_order(backend):
    index = make_index(backend).build(TINY_EMB, TINY_IDS)
    ids, scores = index.search(TINY_QUERIES, k=4)
    np.testing.assert_array_equal(ids, TINY_ORDER)
    np.testing.assert_allclose(scores, TINY_SCORES)
    assert ids.dtype == np.int64
    assert scores.dtype == np.float32


def test_ties_go_to_smaller_id_even_at_the_cut():
    # Six bit-identical vectors score the same; k=3 cuts through the tie. Only one other
    # item (id 99) scores higher, so the answer is 99 then the two smallest tied ids.
    ids = np.array([50, 7, 99, 33, 2, 19, 8])
    emb = np.array([[1, 1]] * 7, dtype=np.float32)
    emb[2] = [2, 2]
    index = ExactIndex().build(emb, ids)
    got, scores = index.search(np.array([[1, 0], [0, 3]], dtype=np.float32), k=3)
    np.testing.assert_array_equal(got, [[99, 2, 7], [99, 2, 7]])
    np.testing.assert_array_equal(scores, [[2, 1, 1], [6, 3, 3]])
    # And with the whole catalogue: all tied ids ascending.
    got, _ = index.search(np.array([[1, 0]], dtype=np.float32), k=7)
    np.testing.assert_array_equal(got, [[99, 2, 7, 8, 19, 33, 50]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclusion_both_forms_and_padding(backend):
    index = make_index(backend).build(TINY_EMB, TINY_IDS)
    # Query 0 drops 30 (the best); query 1 drops everything but 40 and 30 -> 2 results.
    by_id = [np.array([30]), np.array([10, 20, 999])]  # 999 is not indexed: ignored
    # Same thing as a CSR over build positions (10, 40, 20, 30 -> 0, 1, 2, 3).
    by_pos = sp.csr_matrix(np.array([[0, 0, 0, 1], [1, 0, 1, 0]]))
    for exclude in (by_id, by_pos):
        ids, scores = index.search(TINY_QUERIES, k=3, exclude=exclude)
        np.testing.assert_array_equal(ids, [[10, 20, 40], [40, 30, PAD_ID]])
        np.testing.assert_allclose(scores, [[2, 1, -1.5], [-0.5, -1, -np.inf]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_catalogue_pads(backend):
    index = make_index(backend).build(TINY_EMB, TINY_IDS)
    ids, scores = index.search(TINY_QUERIES[:1], k=6)
    np.testing.assert_array_equal(ids, [[30, 10, 20, 40, PAD_ID, PAD_ID]])
    assert np.isneginf(scores[0, 4:]).all()


def test_exclusion_of_hundreds_matches_brute_force():
    rng = np.random.default_rng(1)
    n_items, k = 1000, 50
    emb = rng.normal(size=(n_items, 16)).astype(np.float32)
    ids = rng.permutation(5000)[:n_items]
    queries = rng.normal(size=(12, 16)).astype(np.float32)
    # From a few hundred excluded up to all but 10 (fewer than k left: padded).
    sizes = [300, 500, 700, 900, 950, 990, 0, 100, 400, 600, 800, 200]
    exclude = [rng.choice(ids, size, replace=False) for size in sizes]
    want = brute_force(emb, ids, queries, k, exclude)

    exact = ExactIndex().build(emb, ids)
    got, _ = exact.search(queries, k, exclude)
    np.testing.assert_array_equal(got, want)
    positions = {i: p for p, i in enumerate(ids.tolist())}
    rows = np.repeat(np.arange(len(exclude)), sizes)
    cols = [positions[i] for i in np.concatenate(exclude).tolist()]
    csr = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(queries), n_items))
    got_csr, _ = exact.search(queries, k, csr)
    np.testing.assert_array_equal(got_csr, want)

    for backend in ("hnsw", "ivf"):
        index = make_index(backend).build(emb, ids)
        got, _ = index.search(queries, k, exclude)
        for row in range(len(queries)):
            real = got[row][got[row] != PAD_ID]
            assert len(real) == min(k, n_items - sizes[row]), (backend, row)
            assert not np.isin(real, exclude[row]).any(), (backend, row)
        assert recall_against_exact(index, exact, queries, k, exclude) >= 0.95, backend


def test_ann_retries_then_falls_back_to_exact_when_short():
    # 25 lists of ~40 items and nprobe=1: a query that excludes 900 of 1000 items finds
    # almost nothing valid in its one list, so it is retried with more lists and finally
    # answered exactly; the answer must still be the true top-k.
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(1000, 8)).astype(np.float32)
    ids = np.arange(1000)
    queries = rng.normal(size=(6, 8)).astype(np.float32)
    exclude = [rng.choice(ids, 900, replace=False) for _ in queries]
    index = IVFIndex(nlist=25, nprobe=1).build(emb, ids)
    got, _ = index.search(queries, 50, exclude)
    np.testing.assert_array_equal(got, brute_force(emb, ids, queries, 50, exclude))
    assert index.last_stats_.retried + index.last_stats_.exact_fallback > 0


@pytest.mark.parametrize(("backend", "params"), [("hnsw", {}), ("ivf", {"nprobe": 16})])
def test_ann_recall_against_exact_on_clustered_data(backend, params):
    items, queries = clustered(3700, 200, 32)
    ids = np.arange(1, 3701)
    rng = np.random.default_rng(2)
    exclude = [rng.choice(ids, rng.integers(50, 300), replace=False) for _ in queries]
    exact = ExactIndex().build(items, ids)
    approx = make_index(backend, **params).build(items, ids)
    assert recall_against_exact(approx, exact, queries, 200, exclude) >= 0.95


def test_recall_against_exact_hand_worked():
    class Fixed(ExactIndex):
        def _search(self, queries, k, excluded):
            return np.array([[30, 20], [10, 40]]), np.zeros((2, 2), dtype=np.float32)

    exact = ExactIndex().build(TINY_EMB, TINY_IDS)
    approx = Fixed().build(TINY_EMB, TINY_IDS)
    # Exact top-2: [30, 10] and [10, 40]; overlaps 1/2 and 2/2 -> mean 0.75.
    assert recall_against_exact(approx, exact, TINY_QUERIES, 2) == pytest.approx(0.75)
    # Query 1 with only 40 left: exact has one real result (40), found -> 1.0; query 0 as
    # before with 10 and 20 excluded: exact [30, 40], approx [30, 20] -> 0.5.
    exclude = [np.array([10, 20]), np.array([10, 20, 30])]
    assert recall_against_exact(approx, exact, TINY_QUERIES, 2, exclude) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("backend", "params"), [("exact", {}), ("hnsw", {"M": 16, "ef_search": 64}), ("ivf", {})]
)
def test_save_load_round_trip(tmp_path: Path, backend, params):
    items, queries = clustered(800, 30, 16, seed=3)
    ids = np.arange(800) * 3 + 5
    index = make_index(backend, **params).build(items, ids)
    want_ids, want_scores = index.search(queries, 20, [ids[:100]] * len(queries))
    index.save(tmp_path / "index")

    files = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert files == ["index.json", "item_embeddings.npy", "item_ids.npy"]  # no temp files left
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["backend"] == backend
    assert meta["params"] == index.params

    loaded = load_index(tmp_path / "index")
    assert type(loaded) is type(index)
    assert loaded.params == index.params
    got_ids, got_scores = loaded.search(queries, 20, [ids[:100]] * len(queries))
    # Builds are single-threaded, so even the ANN structures come back identical.
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)

    # The same saved embeddings, indexed by another backend.
    other = load_index(tmp_path / "index", "hnsw", M=8)
    assert isinstance(other, HNSWIndex)
    assert other.M == 8


def test_save_overwrites_and_load_detects_mixed_files(tmp_path: Path):
    a = ExactIndex().build(TINY_EMB, TINY_IDS)
    a.save(tmp_path)
    ExactIndex().build(TINY_EMB[:2], TINY_IDS[:2]).save(tmp_path)
    assert len(load_index(tmp_path).item_ids_) == 2
    # Simulate a save interrupted after the ids but before index.json.
    np.save(tmp_path / "item_ids.npy", np.array([1, 2]))
    with pytest.raises(ConfigError, match="checksum"):
        load_index(tmp_path)
    with pytest.raises(ConfigError, match="index.json is missing"):
        load_index(tmp_path / "nowhere")


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_before_build(backend, tmp_path: Path):
    with pytest.raises(NotFittedError):
        make_index(backend).search(TINY_QUERIES, 2)
    with pytest.raises(NotFittedError):
        make_index(backend).save(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_search_inputs(backend):
    index = make_index(backend).build(TINY_EMB, TINY_IDS)
    with pytest.raises(ConfigError, match="dimension 3"):
        index.search(np.ones((2, 3), dtype=np.float32), 2)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="k must be"):
            index.search(TINY_QUERIES, k)
    with pytest.raises(ConfigError, match="NaN"):
        index.search(np.array([[np.nan, 1]], dtype=np.float32), 2)
    with pytest.raises(ConfigError, match="2 queries"):
        index.search(TINY_QUERIES, 2, exclude=[np.array([10])])
    with pytest.raises(ConfigError, match="n_queries, n_items"):
        index.search(TINY_QUERIES, 2, exclude=sp.csr_matrix((2, 5)))
    ids, scores = index.search(np.zeros((0, 2), dtype=np.float32), 3)
    assert ids.shape == (0, 3)
    assert scores.shape == (0, 3)


def test_bad_build_inputs():
    with pytest.raises(ConfigError, match="NaN"):
        ExactIndex().build(np.array([[1, np.nan], [0, 1]]), np.array([1, 2]))
    with pytest.raises(ConfigError, match="must match"):
        ExactIndex().build(TINY_EMB, np.array([1, 2]))
    with pytest.raises(ConfigError, match="duplicates"):
        ExactIndex().build(TINY_EMB, np.array([1, 2, 2, 3]))
    with pytest.raises(ConfigError, match=">= 0"):
        ExactIndex().build(TINY_EMB, np.array([-1, 2, 3, 4]))
    with pytest.raises(ConfigError, match="2-d"):
        ExactIndex().build(np.ones(4, dtype=np.float32), np.arange(4))


def test_bad_config():
    with pytest.raises(ConfigError, match=r"\['exact', 'hnsw', 'ivf'\]"):
        make_index("annoy")
    with pytest.raises(ConfigError, match="valid: \\['M', 'ef_construction', 'ef_search'\\]"):
        make_index("hnsw", m=16)
    with pytest.raises(ConfigError, match="M must be"):
        make_index("hnsw", M=1)
    with pytest.raises(ConfigError, match="nprobe must be"):
        make_index("ivf", nprobe=0)
    with pytest.raises(ConfigError, match="valid: none"):
        make_index("exact", k=3)
    # 400 items support at most 400 // 39 = 10 lists.
    items = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    with pytest.raises(ConfigError, match="nlist <= 10"):
        IVFIndex(nlist=11).build(items, np.arange(400))
    assert IVFIndex().build(items, np.arange(400)).nlist_ == 10  # sqrt(400) = 20, capped


def test_every_backend_is_an_item_index():
    for backend in BACKENDS:
        assert isinstance(make_index(backend), ItemIndex)
