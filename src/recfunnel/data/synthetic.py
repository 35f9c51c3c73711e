"""A synthetic data set in MovieLens-1M's exact file format, with structure planted to be learnt.

Tests and smoke runs use it instead of the real 1M ratings: it parses with the same loader,
and it has the properties the funnel relies on, so a test can assert that a model learns:

- user and item latent factors: which items a user rates, and how high, follow U_u . V_i;
- a long popularity tail (Zipf-like item logits);
- 1-3 genres per movie, drawn from the item factors, so genres predict co-rating;
- demographics (gender, age bucket, occupation) that shift a user's taste over genres;
- a release year: old films are rated less often but higher, and genres lean by era;
- time: a ~3-year timeline like ML-1M's (2000-04 .. 2003-02), most users joining in the
  first months and a tail joining later, each rating in a short front-loaded window after
  joining; movies of the year 2000 come out during the timeline; newer films gain
  popularity as time goes on. A global temporal 80/10/10 split therefore has cold users
  and late items in valid/test, as the real data does.

A rating cuts the sum of affinity, user and item biases and noise at the quantiles of
ML-1M's rating shares (1: 5.6 %, 2: 10.8 %, 3: 26.1 %, 4: 34.9 %, 5: 22.6 %), so the
liked share (>= 4) is ML-1M's 57.5 % whatever the size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recfunnel.data.schema import AGE_BUCKETS, GENRES, N_OCCUPATIONS

__all__ = ["write_synthetic_movielens"]

# ML-1M's first and last timestamps (2000-04-25 and 2003-02-28): the synthetic timeline.
T_START, T_END = 956_703_932, 1_046_454_590

# Rough ML-1M shares, so marginals look familiar in plots and smoke runs.
_AGE_SHARE = np.array([222, 1103, 2096, 1193, 550, 496, 380], dtype=float)
_OCCUPATION_SHARE = np.array(
    [711, 528, 267, 173, 759, 112, 236, 679, 17, 92, 195, 129, 388, 142, 302, 144, 241, 502, 70,
     72, 281],
    dtype=float,
)  # fmt: skip
_GENRE_COUNT = np.array(
    [503, 283, 105, 251, 1200, 211, 127, 1603, 68, 44, 343, 114, 106, 471, 276, 492, 143, 68],
    dtype=float,
)  # in GENRES order
_RATING_SHARE = np.array([0.056, 0.108, 0.261, 0.349, 0.226])  # ratings 1..5
_G = {g: j for j, g in enumerate(GENRES)}

_WORDS = (
    "River", "Night", "Stranger", "Summer", "Empire", "Ghost", "Garden", "Letter", "Storm",
    "Harbour", "Mirror", "Winter", "Kingdom", "Shadow", "Promise", "Voyage", "Island", "Dance",
    "Secret", "Train", "Angel", "Circus", "Desert", "Frontier", "Machine", "Orchid", "Signal",
)  # fmt: skip
_ADJECTIVES = (
    "Red", "Silent", "Last", "Lost", "Golden", "Broken", "Wild", "Blue", "Hidden", "Long",
    "Little", "Dark", "Second", "Crazy", "Sweet", "Final", "Lonely", "Electric",
)  # fmt: skip
# Latin-1 alternate titles, as ML-1M has for foreign films: the files must be read as latin-1.
_FOREIGN = ("Cité des anges", "Mädchen in Blau", "El último tren", "Un été à Paris", "Façade")


@dataclass(frozen=True)
class _Items:
    """Hidden item truth. Arrays are (n_items, ...) in movie id order."""

    movie_id: np.ndarray  # int64, ascending, starts at 1, with gaps
    year: np.ndarray  # int64, 1920..2000
    genres: np.ndarray  # bool (n_items, 18)
    factors: np.ndarray  # (n_items, n_factors)
    popularity: np.ndarray  # logit, Zipf-like: -log(rank)
    bias: np.ndarray  # rating bias
    release: np.ndarray  # timeline fraction from which the movie can be rated
    rateable: np.ndarray  # bool; False for the few movies nobody rates


@dataclass(frozen=True)
class _Users:
    """Hidden user truth. Arrays are (n_users, ...) in user id order (ids 1..n_users)."""

    gender: np.ndarray  # "M"/"F"
    age: np.ndarray  # one of AGE_BUCKETS
    occupation: np.ndarray  # 0..20
    zip: list[str]
    factors: np.ndarray  # (n_users, n_factors)
    genre_taste: np.ndarray  # (n_users, 18)
    bias: np.ndarray  # rating bias
    join: np.ndarray  # timeline fraction of the first rating
    end: np.ndarray  # timeline fraction after which the user rates nothing
    front_load: np.ndarray  # exponent p: times in the window are join + window * u^p
    n_ratings: np.ndarray  # int64


def write_synthetic_movielens(
    out_dir: Path,
    *,
    n_users: int = 600,
    n_items: int = 400,
    ratings_per_user: tuple[int, int] = (20, 120),
    n_factors: int = 8,
    seed: int = 0,
) -> Path:
    """Write ratings.dat, users.dat and movies.dat in ML-1M's format into `out_dir`; return it.

    `n_items` movies are listed in movies.dat (ids from 1, ~2 % of ids skipped), of which
    ~4 % are never rated; users have ids 1..n_users and between `ratings_per_user` ratings
    each (below hi only by chance or when few movies are out by the end of a user's window,
    never below lo). Same arguments, same bytes.
    """
    lo, hi = ratings_per_user
    if not 1 <= lo <= hi:
        raise ValueError(f"ratings_per_user must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")
    if min(n_users, n_items, n_factors) < 1:
        raise ValueError("n_users, n_items and n_factors must be positive")
    rng = np.random.default_rng(seed)
    items = _sample_items(rng, n_items, n_factors)
    if np.sum(items.rateable & (items.release == 0)) < lo:
        raise ValueError(f"n_items={n_items} is too small for {lo} ratings per user")
    users = _sample_users(rng, n_users, n_factors, lo, hi)
    user_idx, item_idx, rating, timestamp = _sample_ratings(rng, users, items)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(
        out_dir / "ratings.dat",
        (
            f"{u + 1}::{m}::{r}::{t}"
            for u, m, r, t in zip(
                user_idx.tolist(),
                items.movie_id[item_idx].tolist(),
                rating.tolist(),
                timestamp.tolist(),
                strict=True,
            )
        ),
    )
    _write(
        out_dir / "users.dat",
        (
            f"{u + 1}::{g}::{a}::{o}::{z}"
            for u, (g, a, o, z) in enumerate(
                zip(
                    users.gender,
                    users.age.tolist(),
                    users.occupation.tolist(),
                    users.zip,
                    strict=True,
                )
            )
        ),
    )
    titles = _titles(rng, items.year)
    _write(
        out_dir / "movies.dat",
        (
            f"{m}::{title}::{'|'.join(GENRES[j] for j in np.flatnonzero(row))}"
            for m, title, row in zip(items.movie_id.tolist(), titles, items.genres, strict=True)
        ),
    )
    return out_dir


def _sample_items(rng: np.random.Generator, n_items: int, n_factors: int) -> _Items:
    n_gaps = max(1, round(0.02 * n_items))
    movie_id = np.sort(
        np.r_[1, rng.choice(np.arange(2, n_items + n_gaps + 1), n_items - 1, replace=False)]
    )
    # Years skew recent like ML-1M (most films from the 1990s, a tail back to 1920).
    year = 2000 - np.minimum(np.floor(0.5 + rng.exponential(12.0, n_items)), 80).astype(np.int64)
    old = np.clip((1975 - year) / 30.0, 0.0, 1.0)  # 0 for recent films, 1 for 1945 and before
    factors = rng.normal(0.0, 1.0 / np.sqrt(n_factors), (n_items, n_factors))

    # Genres are read off the item factors (so co-rated films share genres), around ML-1M's
    # genre frequencies, with a few genres leaning old.
    loading = rng.normal(0.0, 1.2, (n_factors, len(GENRES)))  # genre logits get std ~1.2
    era = np.zeros(len(GENRES))
    era[[_G["Film-Noir"], _G["Western"], _G["Musical"], _G["War"]]] = (2.5, 1.5, 1.2, 0.8)
    logits = np.log(_GENRE_COUNT / _GENRE_COUNT.sum()) + factors @ loading + old[:, None] * era
    n_genres = rng.choice([1, 2, 3], n_items, p=[0.5, 0.33, 0.17])
    # Gumbel top-k: the first n_genres of a noisy sort are a draw without replacement.
    order = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)
    genres = np.zeros(logits.shape, dtype=bool)
    keep = np.arange(len(GENRES))[None, :] < n_genres[:, None]
    np.put_along_axis(genres, order, keep, axis=1)

    # Popularity: Zipf over a latent that old films score lower on.
    latent = rng.normal(0.0, 1.0, n_items) - 1.0 * old
    rank = np.empty(n_items)
    rank[np.argsort(-latent)] = np.arange(1, n_items + 1)
    popularity = -np.log(rank)
    # Old films that are still in the catalogue are the classics: rated higher.
    bias = rng.normal(0.0, 0.35, n_items) + 0.5 * old + 0.15 * latent

    # Films of 2000 come out during the first ~third of the timeline (Apr 2000 .. Feb 2001).
    release = np.where(year == 2000, rng.uniform(0.0, 0.7, n_items), 0.0)
    # ~4 % of the movies, among the less popular half, are never rated (ML-1M: 177 of 3,883).
    rateable = np.ones(n_items, dtype=bool)
    tail = np.flatnonzero(rank > n_items / 2)
    rateable[rng.choice(tail, min(tail.size, round(0.045 * n_items)), replace=False)] = False
    return _Items(movie_id, year, genres, factors, popularity, bias, release, rateable)


def _sample_users(
    rng: np.random.Generator, n_users: int, n_factors: int, lo: int, hi: int
) -> _Users:
    gender = np.where(rng.random(n_users) < 0.72, "M", "F")
    age_idx = rng.choice(len(AGE_BUCKETS), n_users, p=_AGE_SHARE / _AGE_SHARE.sum())
    occupation = rng.choice(N_OCCUPATIONS, n_users, p=_OCCUPATION_SHARE / _OCCUPATION_SHARE.sum())
    zip_codes = [
        f"{z:05d}-{p:04d}" if plus4 else f"{z:05d}"  # ML-1M has a few ZIP+4 codes
        for z, p, plus4 in zip(
            rng.integers(0, 100_000, n_users).tolist(),
            rng.integers(0, 10_000, n_users).tolist(),
            (rng.random(n_users) < 0.01).tolist(),
            strict=True,
        )
    ]

    # Genre taste = demographic shifts + personal noise. Gender and a few age shifts are
    # planted with a known sign (so a plot or a test can name them); gender's random part
    # is small so that no seed flips a planted sign. Occupation shifts are all random.
    by_gender = rng.normal(0.0, 0.1, (2, len(GENRES)))  # rows: M, F
    for g, shift in (("Romance", 0.8), ("Musical", 0.6), ("Drama", 0.4), ("Action", -0.6),
                     ("War", -0.6), ("Western", -0.5), ("Horror", -0.4)):  # fmt: skip
        by_gender[1, _G[g]] += shift
    by_age = rng.normal(0.0, 0.3, (len(AGE_BUCKETS), len(GENRES)))
    by_age[0, [_G["Children's"], _G["Animation"]]] += 1.0  # under 18
    by_age[-2:, [_G["Film-Noir"], _G["War"], _G["Western"]]] += 0.8  # 50+
    by_occupation = rng.normal(0.0, 0.3, (N_OCCUPATIONS, len(GENRES)))
    genre_taste = (
        by_gender[(gender == "F").astype(int)]
        + by_age[age_idx]
        + by_occupation[occupation]
        + rng.normal(0.0, 0.4, (n_users, len(GENRES)))
    )

    # Most users join in the first ~quarter of the timeline, 6 % later on. Most rate in a
    # window of ~2 weeks, most ratings in its first days (u^3); 40 % stay for months, rating
    # more evenly (u^1.5): they are the warm users of a temporal valid/test split.
    late = rng.random(n_users) < 0.06
    join = np.where(late, rng.uniform(0.25, 0.97, n_users), rng.uniform(0.0, 0.25, n_users))
    loyal = rng.random(n_users) < 0.4
    window = np.where(loyal, rng.exponential(0.6, n_users), rng.exponential(0.015, n_users))
    end = np.minimum(join + window, 1.0)
    n_ratings = np.clip(np.rint(rng.lognormal(np.log(50.0), 0.7, n_users)), lo, hi)
    return _Users(
        gender=gender,
        age=np.asarray(AGE_BUCKETS)[age_idx],
        occupation=occupation,
        zip=zip_codes,
        factors=rng.normal(0.0, 1.0, (n_users, n_factors)),
        genre_taste=genre_taste,
        bias=rng.normal(0.0, 0.35, n_users),
        join=join,
        end=end,
        front_load=np.where(loyal, 1.5, 3.0),
        n_ratings=n_ratings.astype(np.int64),
    )


def _sample_ratings(
    rng: np.random.Generator, users: _Users, items: _Items, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pick each user's movies, then rate and time them. Returns (user_idx, item_idx,
    rating, timestamp), each (n_ratings,), grouped by user in a random order within a user.
    """
    n_users = users.join.size
    genre_weight = items.genres / np.sqrt(items.genres.sum(axis=1, keepdims=True))
    recency = np.clip((items.year - 1990) / 10.0, -1.0, 1.0)
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, n_users, chunk):
        sl = slice(start, min(start + chunk, n_users))
        affinity = users.factors[sl] @ items.factors.T + users.genre_taste[sl] @ genre_weight.T
        # When a user is active decides what is out and what is in fashion: newer films
        # gain popularity over the timeline, films released after the window cannot be
        # picked. One time per user (early in the window, where most ratings fall) keeps
        # the draw a single vectorised top-n.
        active = users.join[sl] + 0.25 * (users.end[sl] - users.join[sl])
        logits = items.popularity + 3.0 * affinity + 2.0 * active[:, None] * recency
        open_ = items.rateable & (items.release[None, :] <= users.end[sl, None])
        logits = np.where(open_, logits + rng.gumbel(size=logits.shape), -np.inf)
        # Gumbel top-n = softmax sampling without replacement, so no duplicate pairs.
        n = np.minimum(users.n_ratings[sl], open_.sum(axis=1))
        top = np.argpartition(-logits, n.max() - 1, axis=1)[:, : n.max()]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, 1), 1), 1)
        take = np.arange(n.max())[None, :] < n[:, None]
        rows = np.broadcast_to(np.arange(sl.start, sl.stop)[:, None], top.shape)[take]
        cols = top[take]
        parts.append((rows, cols, affinity[rows - sl.start, cols]))
    user_idx, item_idx, affinity = (np.concatenate(p) for p in zip(*parts, strict=True))

    raw = affinity + users.bias[user_idx] + items.bias[item_idx]
    raw += rng.normal(0.0, 0.8, raw.size)
    # Ordinal cut points instead of round(3 + scale * raw): a rounded bell gives ~2 % of 1s
    # where ML-1M has 5.6 %; the cuts reproduce its skewed shares at any size.
    cuts = np.quantile(raw, np.cumsum(_RATING_SHARE)[:-1])
    rating = 1 + np.searchsorted(cuts, raw, side="right").astype(np.int64)

    # Times front-loaded in the user's window (u^p), never before the film's release.
    begin = np.maximum(users.join[user_idx], items.release[item_idx])
    spread = rng.random(raw.size) ** users.front_load[user_idx]
    frac = begin + (users.end[user_idx] - begin) * spread
    timestamp = T_START + np.rint(frac * (T_END - T_START)).astype(np.int64)

    # ML-1M's ratings.dat is grouped by user but not sorted by time within a user; a random
    # order inside a user also keeps the file order from leaking the sampling order.
    order = np.lexsort((rng.random(raw.size), user_idx))
    return user_idx[order], item_idx[order], rating[order], timestamp[order]


def _titles(rng: np.random.Generator, year: np.ndarray) -> list[str]:
    """ML-1M-style titles: "Name (YYYY)", sometimes "Name, The (YYYY)" or a latin-1 alias."""
    adjectives = rng.choice(_ADJECTIVES, year.size)
    words = rng.choice(_WORDS, year.size)
    style = rng.random(year.size)
    foreign = rng.choice(_FOREIGN, year.size)
    out = []
    for adj, word, s, alias, y in zip(
        adjectives, words, style, foreign, year.tolist(), strict=True
    ):
        name = f"{adj} {word}"
        if s < 0.15:
            name = f"{name}, The"
        elif s < 0.2:
            name = f"{name} ({alias})"
        out.append(f"{name} ({y})")
    return out


def _write(path: Path, lines: Iterable[str]) -> None:
    # latin-1 and bare "\n", byte for byte as GroupLens ships the files.
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
