"""The synthetic data set: exact ML-1M file format, sane marginals, and learnable structure.

Parsing here is plain string splitting on purpose: it checks the bytes, not our loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.data.schema import AGE_BUCKETS, GENRES, N_OCCUPATIONS
from recfunnel.data.synthetic import T_END, T_START, write_synthetic_movielens

FILES = ("ratings.dat", "users.dat", "movies.dat")


def _rows(path: Path, n_fields: int) -> list[list[str]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    rows = [line.split("::") for line in raw.decode("latin-1").split("\n")[:-1]]
    assert all(len(r) == n_fields for r in rows), f"{path.name}: not {n_fields} fields per line"
    return rows


def _ratings(path: Path) -> np.ndarray:
    """(n, 4) int64: user, movie, rating, timestamp."""
    return np.array(_rows(path / "ratings.dat", 4), dtype=np.int64)


def _temporal_split(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global 80/10/10 split of protocol.md: sort by (timestamp, user, movie)."""
    r = r[np.lexsort((r[:, 1], r[:, 0], r[:, 3]))]
    n = len(r)
    return r[: int(0.8 * n)], r[int(0.8 * n) : int(0.9 * n)], r[int(0.9 * n) :]


def test_files_have_the_ml1m_format(synthetic_dir: Path) -> None:
    users = _rows(synthetic_dir / "users.dat", 5)
    movies = _rows(synthetic_dir / "movies.dat", 3)
    ratings = _ratings(synthetic_dir)

    assert [int(u[0]) for u in users] == list(range(1, 601))
    assert {u[1] for u in users} == {"M", "F"}
    assert {int(u[2]) for u in users} <= set(AGE_BUCKETS)
    assert {int(u[3]) for u in users} <= set(range(N_OCCUPATIONS))
    assert all(re.fullmatch(r"\d{5}(-\d{4})?", u[4]) for u in users)

    movie_ids = np.array([int(m[0]) for m in movies])
    assert len(movies) == 400 and movie_ids[0] == 1
    assert np.all(np.diff(movie_ids) > 0) and movie_ids[-1] > 400  # ascending, with gaps
    for _, title, genres in movies:
        year = re.fullmatch(r".+ \((\d{4})\)", title)
        assert year and 1920 <= int(year.group(1)) <= 2000, title
        names = genres.split("|")
        assert 1 <= len(names) <= 3 and names == sorted(names, key=GENRES.index), genres
    # Accented titles are latin-1 bytes, as in ML-1M: reading as UTF-8 would be a bug.
    text = (synthetic_dir / "movies.dat").read_bytes()
    assert not text.isascii()
    with pytest.raises(UnicodeDecodeError):
        text.decode("utf-8")

    assert set(ratings[:, 0]) == set(range(1, 601))
    rated = set(ratings[:, 1].tolist())
    assert rated < set(movie_ids.tolist())  # some movies nobody rates
    assert set(ratings[:, 2]) == {1, 2, 3, 4, 5}
    assert ratings[:, 3].min() >= T_START and ratings[:, 3].max() <= T_END


def test_sizes_and_ml1m_constraints(synthetic_dir: Path) -> None:
    r = _ratings(synthetic_dir)
    per_user = np.bincount(r[:, 0])[1:]
    assert per_user.min() >= 20 and per_user.max() <= 120
    assert len(np.unique(r[:, 0] * 10**6 + r[:, 1])) == len(r)  # no duplicate pairs
    span_years = (r[:, 3].max() - r[:, 3].min()) / (365.25 * 86400)
    assert 2.5 < span_years < 3.1
    # Long tail: the top 10 % of movies get a large share, the median movie far less.
    counts = np.sort(np.bincount(r[:, 1])[np.unique(r[:, 1])])[::-1]
    assert counts[: len(counts) // 10].sum() > 0.2 * len(r)
    assert counts[0] > 4 * np.median(counts)


def test_rating_distribution_is_ml1m_like(synthetic_dir: Path) -> None:
    rating = _ratings(synthetic_dir)[:, 2]
    share = np.bincount(rating, minlength=6)[1:] / len(rating)
    # ML-1M: 5.6 %, 10.8 %, 26.1 %, 34.9 %, 22.6 %; liked (>= 4) 57.5 %; mean 3.58.
    np.testing.assert_allclose(share, [0.056, 0.108, 0.261, 0.349, 0.226], atol=0.01)
    assert 0.55 <= share[3:].sum() <= 0.60
    assert 3.5 < rating.mean() < 3.7


def test_same_seed_same_bytes(synthetic_dir: Path, tmp_path: Path) -> None:
    again = write_synthetic_movielens(tmp_path / "again", seed=0)
    other = write_synthetic_movielens(tmp_path / "other", seed=1)
    for name in FILES:
        assert (again / name).read_bytes() == (synthetic_dir / name).read_bytes()
    assert (other / "ratings.dat").read_bytes() != (synthetic_dir / "ratings.dat").read_bytes()


def test_temporal_split_has_cold_users_and_late_items(synthetic_dir: Path) -> None:
    train, valid, test = _temporal_split(_ratings(synthetic_dir))
    warm = set(train[:, 0].tolist())
    cold_liked = set(test[test[:, 2] >= 4, 0].tolist()) - warm
    warm_liked = set(test[test[:, 2] >= 4, 0].tolist()) & warm
    assert len(cold_liked) >= 10
    assert len(warm_liked) >= 2 * len(cold_liked)  # mostly warm: ML-1M 993 vs 195, here 101 vs 31
    late_items = set(np.r_[valid[:, 1], test[:, 1]].tolist()) - set(train[:, 1].tolist())
    assert late_items


def test_demographics_shift_genre_taste(synthetic_dir: Path) -> None:
    # Planted: women rate Romance and Musical more often than men, War less often. Ratios of
    # the genre's share of each group's ratings; seed 0 gives 1.7, 1.8 and 0.6.
    gender = {int(u[0]): u[1] for u in _rows(synthetic_dir / "users.dat", 5)}
    genres = {int(m[0]): m[2].split("|") for m in _rows(synthetic_dir / "movies.dat", 3)}
    r = _ratings(synthetic_dir)
    women = np.array([gender[u] == "F" for u in r[:, 0].tolist()])
    ratio = {}
    for genre in ("Romance", "Musical", "War"):
        has = np.array([genre in genres[m] for m in r[:, 1].tolist()])
        ratio[genre] = has[women].mean() / has[~women].mean()
    assert ratio["Romance"] > 1.3 and ratio["Musical"] > 1.3 and ratio["War"] < 0.8, ratio


def test_planted_structure_is_learnable(synthetic_dir: Path) -> None:
    """An item-item co-occurrence scorer from train beats popularity and chance on the future."""
    r = _ratings(synthetic_dir)
    train, _, _ = _temporal_split(r)
    future = r[~np.isin(r[:, 0] * 10**6 + r[:, 1], train[:, 0] * 10**6 + train[:, 1])]
    shape = (r[:, 0].max() + 1, r[:, 1].max() + 1)

    def matrix(rows: np.ndarray, values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((values.astype(float), (rows[:, 0], rows[:, 1])), shape=shape)

    liked = matrix(train, train[:, 2] >= 4)  # X: users x items, liked in train
    seen = matrix(train, np.ones(len(train))).toarray() > 0
    target = matrix(future, future[:, 2] >= 4).toarray() > 0
    users = np.flatnonzero((liked.getnnz(axis=1) > 0) & target.any(axis=1))
    assert len(users) >= 100

    cooc = (liked[users] @ liked.T @ liked).toarray()  # x_u X^T X
    popularity = np.broadcast_to(np.asarray(liked.sum(axis=0)), cooc.shape)
    chance = np.random.default_rng(0).random(cooc.shape)

    def at_10(scores: np.ndarray) -> tuple[float, float]:
        scores = np.where(seen[users], -np.inf, scores)  # known history is not a candidate
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        hits = np.take_along_axis(target[users], top, axis=1)
        return hits.any(axis=1).mean(), hits.mean()  # HitRate@10, Precision@10

    (hr_cooc, p_cooc), (hr_pop, p_pop), (hr_rand, p_rand) = map(at_10, (cooc, popularity, chance))
    # Seeds 0-4 give HR@10 0.87-0.93 vs popularity 0.72-0.79 vs chance 0.33-0.37, and
    # P@10 0.30-0.33 vs 0.13-0.17 vs ~0.045; the bounds leave room for noise.
    assert hr_cooc > hr_pop + 0.05 and hr_cooc > hr_rand + 0.3
    assert p_cooc > 1.4 * p_pop and p_cooc > 4 * p_rand


def test_custom_sizes_and_bad_arguments(tmp_path: Path) -> None:
    out = write_synthetic_movielens(
        tmp_path / "small", n_users=40, n_items=120, ratings_per_user=(25, 30), n_factors=4
    )
    r = _ratings(out)
    per_user = np.bincount(r[:, 0])[1:]
    assert len(per_user) == 40 and per_user.min() >= 25 and per_user.max() <= 30
    assert len(_rows(out / "movies.dat", 3)) == 120
    with pytest.raises(ValueError, match="ratings_per_user"):
        write_synthetic_movielens(tmp_path / "bad", ratings_per_user=(30, 20))
    with pytest.raises(ValueError, match="too small"):
        write_synthetic_movielens(tmp_path / "bad", n_items=20)
