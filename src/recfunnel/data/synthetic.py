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

`format` writes the same structure in the layout of a later release instead: "ml-10m"
(`::` ratings.dat with half stars, movies.dat, tags.dat) or "csv" (ML-20M/25M/32M's
ratings.csv, movies.csv and tags.csv with a header row and quoted titles), with no users
file, a 20-year timeline like ML-20M's, the later releases' genre spellings ("Children",
"IMAX", "(no genres listed)") and tags planted from the item factors, so a tag predicts
co-rating as a genre does. The larger writers are vectorised (pyarrow's CSV writer), so
ML-20M-sized data (20 M ratings) is written in minutes, not hours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from recfunnel.data.schema import AGE_BUCKETS, GENRES, N_OCCUPATIONS

__all__ = ["write_synthetic_movielens"]

# ML-1M's first and last timestamps (2000-04-25 and 2003-02-28): the synthetic timeline.
T_START, T_END = 956_703_932, 1_046_454_590
# ML-20M's (1995-01-09 .. 2015-03-31): the timeline of the later formats.
T_START_20M, T_END_20M = 789_652_009, 1_427_784_002
# Rough ML-20M half-star shares (0.5, 1.0, ..., 5.0); liked (>= 4) ~ 50 %.
_HALF_STAR_SHARE = np.array([0.011, 0.033, 0.014, 0.072, 0.044, 0.213, 0.105, 0.277, 0.077, 0.154])
_TAG_SHARE = 0.023  # ML-20M: 465,564 tag applications for 20,000,263 ratings

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
    format: Literal["ml-1m", "ml-10m", "csv"] = "ml-1m",
    median_ratings: float = 50.0,
    n_tag_words: int = 300,
) -> Path:
    """Write a synthetic data set in the file format of `format` into `out_dir`; return it.

    "ml-1m": ratings.dat, users.dat and movies.dat exactly as ML-1M's. "ml-10m": ML-10M's
    `::` ratings.dat (half stars), movies.dat and tags.dat. "csv": ML-20M's ratings.csv,
    movies.csv and tags.csv. `n_items` movies are listed (ids from 1, ~2 % of ids skipped),
    of which ~4 % are never rated; users have ids 1..n_users and between `ratings_per_user`
    ratings each, lognormal around `median_ratings` (below hi only by chance or when few
    movies are out by the end of a user's window, never below lo). The later formats get
    ~2.3 tag applications per 100 ratings over `n_tag_words` tags. Same arguments, same bytes.
    """
    lo, hi = ratings_per_user
    if not 1 <= lo <= hi:
        raise ValueError(f"ratings_per_user must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")
    if min(n_users, n_items, n_factors, n_tag_words) < 1:
        raise ValueError("n_users, n_items, n_factors and n_tag_words must be positive")
    if format not in ("ml-1m", "ml-10m", "csv"):
        raise ValueError(f"format must be ml-1m, ml-10m or csv, got {format!r}")
    rng = np.random.default_rng(seed)
    items = _sample_items(rng, n_items, n_factors)
    if np.sum(items.rateable & (items.release == 0)) < lo:
        raise ValueError(f"n_items={n_items} is too small for {lo} ratings per user")
    users = _sample_users(rng, n_users, n_factors, lo, hi, median_ratings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if format != "ml-1m":
        _write_later_format(out_dir, rng, users, items, format, n_tag_words)
        return out_dir
    user_idx, item_idx, rating, timestamp = _sample_ratings(rng, users, items)

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


def _write_later_format(
    out_dir: Path,
    rng: np.random.Generator,
    users: _Users,
    items: _Items,
    format: str,
    n_tag_words: int,
) -> None:
    """ML-10M's or ML-20M's files (see `write_synthetic_movielens`), written vectorised."""
    user_idx, item_idx, level, timestamp = _sample_ratings(
        rng, users, items, shares=_HALF_STAR_SHARE, span=(T_START_20M, T_END_20M)
    )
    # Ratings as GroupLens writes them ("3.5", "4.0"): one of 10 strings per level.
    stars = pa.array([f"{k / 2:.1f}" for k in range(1, 11)])
    ratings = pa.table(
        {
            "userId": pa.array(user_idx + 1, pa.int32()),
            "movieId": pa.array(items.movie_id[item_idx], pa.int32()),
            "rating": pa.DictionaryArray.from_arrays(pa.array(level - 1, pa.int8()), stars),
            "timestamp": pa.array(timestamp, pa.int64()),
        }
    )
    tag_user, tag_item, tag_word, tag_time = _sample_tags(
        rng, items, user_idx, item_idx, level, timestamp, n_tag_words
    )
    words = _tag_words(n_tag_words)
    titles = _titles(rng, items.year)
    genres = _later_genres(rng, items)
    movie_ids = items.movie_id.tolist()
    if format == "csv":
        _write_table(out_dir / "ratings.csv", ratings, header="userId,movieId,rating,timestamp")
        _write(
            out_dir / "movies.csv",
            ["movieId,title,genres"]
            + [f"{m},{_quote(t)},{g}" for m, t, g in zip(movie_ids, titles, genres, strict=True)],
            encoding="utf-8",
        )
        _write(
            out_dir / "tags.csv",
            ["userId,movieId,tag,timestamp"]
            + [
                f"{u},{m},{_quote(words[w])},{t}"
                for u, m, w, t in zip(tag_user, tag_item, tag_word, tag_time, strict=True)
            ],
            encoding="utf-8",
        )
        return
    _write_table(out_dir / "ratings.dat", ratings, separator="::")
    _write(
        out_dir / "movies.dat",
        (f"{m}::{t}::{g}" for m, t, g in zip(movie_ids, titles, genres, strict=True)),
    )
    _write(
        out_dir / "tags.dat",
        (
            f"{u}::{m}::{words[w]}::{t}"
            for u, m, w, t in zip(tag_user, tag_item, tag_word, tag_time, strict=True)
        ),
        encoding="utf-8",
    )


def _sample_tags(
    rng: np.random.Generator,
    items: _Items,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    level: np.ndarray,
    timestamp: np.ndarray,
    n_tag_words: int,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Tag applications: ~_TAG_SHARE of the ratings (liked ones four times as often) get a
    tag, drawn from 3 of the movie's own tags (read off its factors, as genres are) 80 % of
    the time, else from all tags. Returns (user id, movie id, tag index, time) lists."""
    n_factors = items.factors.shape[1]
    loading = rng.normal(0.0, 2.0, (n_factors, n_tag_words))
    logits = items.factors @ loading + rng.gumbel(size=(len(items.movie_id), n_tag_words))
    own = np.argsort(-logits, axis=1)[:, :3]  # (n_items, 3) each movie's planted tags
    liked = level >= 8  # 4.0 stars and up
    p = np.where(liked, 4.0, 1.0)
    p *= _TAG_SHARE * len(p) / p.sum()
    pick = np.flatnonzero(rng.random(len(p)) < p)
    planted = own[item_idx[pick], rng.integers(0, 3, pick.size)]
    noise = rng.integers(0, n_tag_words, pick.size)
    word = np.where(rng.random(pick.size) < 0.8, planted, noise)
    return (
        (user_idx[pick] + 1).tolist(),
        items.movie_id[item_idx[pick]].tolist(),
        word.tolist(),
        (timestamp[pick] + rng.integers(0, 3600, pick.size)).tolist(),
    )


def _tag_words(n: int) -> list[str]:
    """`n` distinct tag texts; every 7th holds a comma (ML-20M has "funny, dark"), so the
    CSV writer must quote it and the reader must parse the quotes."""
    words = []
    for k in range(n):
        adj, word = _ADJECTIVES[k % len(_ADJECTIVES)], _WORDS[(k // len(_ADJECTIVES)) % len(_WORDS)]
        text = f"{adj.lower()} {word.lower()}"
        if k >= len(_ADJECTIVES) * len(_WORDS):
            text += f" {k}"
        words.append(f"{text}, really" if k % 7 == 3 else text)
    return words


def _later_genres(rng: np.random.Generator, items: _Items) -> list[str]:
    """Genre strings as ML-10M+ write them: "Children" for ML-1M's "Children's", "IMAX"
    on ~3 % of movies, "(no genres listed)" for ~1 %."""
    names = ["Children" if g == "Children's" else g for g in GENRES]
    imax = rng.random(len(items.movie_id)) < 0.03
    none = rng.random(len(items.movie_id)) < 0.01
    out = []
    for row, is_imax, is_none in zip(items.genres, imax.tolist(), none.tolist(), strict=True):
        if is_none:
            out.append("(no genres listed)")
            continue
        listed = [names[j] for j in np.flatnonzero(row)]
        out.append("|".join(listed + (["IMAX"] if is_imax else [])))
    return out


def _quote(text: str) -> str:
    """A CSV field as GroupLens writes it: quoted only when it holds a comma or a quote."""
    if "," in text or '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_table(
    path: Path, table: pa.Table, *, header: str | None = None, separator: str | None = None
) -> None:
    """Numeric columns, one line per row, via pyarrow's (multithreaded C++) CSV writer:
    `header` as the first line, or `separator` ("::") between the fields instead of ","."""
    options = pcsv.WriteOptions(include_header=False, quoting_style="none", delimiter="\x1f")
    with open(path, "wb") as f:
        if header is not None:
            f.write(header.encode() + b"\n")
        sink = pa.BufferOutputStream()
        pcsv.write_csv(table, sink, options)
        body = sink.getvalue().to_pybytes()
        f.write(body.replace(b"\x1f", (separator or ",").encode()))


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
    rng: np.random.Generator,
    n_users: int,
    n_factors: int,
    lo: int,
    hi: int,
    median_ratings: float = 50.0,
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
    n_ratings = np.clip(np.rint(rng.lognormal(np.log(median_ratings), 0.7, n_users)), lo, hi)
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
    rng: np.random.Generator,
    users: _Users,
    items: _Items,
    chunk: int = 2048,
    shares: np.ndarray = _RATING_SHARE,
    span: tuple[int, int] = (T_START, T_END),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pick each user's movies, then rate and time them. Returns (user_idx, item_idx,
    rating, timestamp), each (n_ratings,), grouped by user in a random order within a user;
    rating is the level 1..len(shares) (whole stars for ML-1M's shares).
    """
    n_users = users.join.size
    # A (chunk, n_items) float64 block per array: at 27k items, 2048 rows would be ~450 MB
    # each; fewer rows keep it near 64 MB (ML-1M-sized catalogues keep 2048, same draws).
    chunk = min(chunk, max(64, (1 << 23) // len(items.movie_id)))
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
    cuts = np.quantile(raw, np.cumsum(shares)[:-1])
    rating = 1 + np.searchsorted(cuts, raw, side="right").astype(np.int64)

    # Times front-loaded in the user's window (u^p), never before the film's release.
    begin = np.maximum(users.join[user_idx], items.release[item_idx])
    spread = rng.random(raw.size) ** users.front_load[user_idx]
    frac = begin + (users.end[user_idx] - begin) * spread
    timestamp = span[0] + np.rint(frac * (span[1] - span[0])).astype(np.int64)

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


def _write(path: Path, lines: Iterable[str], encoding: str = "latin-1") -> None:
    # latin-1 (ML-1M) or UTF-8 (ML-20M+) and bare "\n", byte for byte as GroupLens ships them.
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def write_large_csv(
    out_dir: Path,
    *,
    n_ratings: int,
    n_users: int,
    n_items: int,
    seed: int = 0,
    n_tags: int = 0,
) -> Path:
    """ML-20M/32M-format files of an exact size, fast and with no planted structure: for
    loading benchmarks (ML-32M: 32 M ratings, 200,948 users, 87,585 movies), where
    `write_synthetic_movielens`'s per-user draw over the whole catalogue would take hours.

    Users get lognormal rating counts, movies Zipf popularity, pairs are distinct, ratings
    half stars, times over ML-20M's timeline; movies.csv lists every movie with a quoted
    title now and then; `n_tags` tag applications go to rated pairs. Same arguments, same
    bytes. Returns `out_dir`.
    """
    if min(n_ratings, n_users, n_items) < 1 or n_ratings > n_users * n_items:
        raise ValueError("need 1 <= n_ratings <= n_users * n_items and positive sizes")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    user_p = rng.lognormal(0.0, 1.0, n_users)
    user_p /= user_p.sum()
    pairs = np.empty(0, dtype=np.int64)
    while len(pairs) < n_ratings:  # draw, drop repeated pairs, top up
        want = int((n_ratings - len(pairs)) * 1.1) + 1000
        users = rng.choice(n_users, want, p=user_p)
        items = rng.choice(n_items, want, p=item_p)
        pairs = np.sort(np.concatenate([pairs, users.astype(np.int64) * n_items + items]))
        # Sorting and dropping repeats: numpy's hash-based unique is ~10x slower here.
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    pairs = np.sort(rng.choice(pairs, n_ratings, replace=False))  # grouped by user, as GroupLens
    user, item = pairs // n_items, pairs % n_items
    del pairs
    movie_id = 1 + np.arange(n_items) + np.cumsum(rng.random(n_items) < 0.02)  # a few gaps
    level = 1 + np.searchsorted(np.cumsum(_HALF_STAR_SHARE)[:-1], rng.random(n_ratings))
    times = rng.integers(T_START_20M, T_END_20M, n_ratings)
    stars = pa.array([f"{k / 2:.1f}" for k in range(1, 11)])
    table = pa.table(
        {
            "userId": pa.array(user + 1, pa.int32()),
            "movieId": pa.array(movie_id[item], pa.int32()),
            "rating": pa.DictionaryArray.from_arrays(pa.array(level - 1, pa.int8()), stars),
            "timestamp": pa.array(times, pa.int64()),
        }
    )
    _write_table(out_dir / "ratings.csv", table, header="userId,movieId,rating,timestamp")
    years = rng.integers(1920, 2024, n_items).tolist()
    genres = [
        GENRES[g] if GENRES[g] != "Children's" else "Children" for g in rng.integers(0, 18, n_items)
    ]
    _write(
        out_dir / "movies.csv",
        ["movieId,title,genres"]
        + [
            f"{m},{_quote(f'Movie {m}, The ({y})' if m % 5 == 0 else f'Movie {m} ({y})')},{g}"
            for m, y, g in zip(movie_id.tolist(), years, genres, strict=True)
        ],
        encoding="utf-8",
    )
    tagged = rng.choice(n_ratings, min(n_tags, n_ratings), replace=False)
    words = _tag_words(300)
    _write(
        out_dir / "tags.csv",
        ["userId,movieId,tag,timestamp"]
        + [
            f"{u + 1},{movie_id[i]},{_quote(words[w])},{t}"
            for u, i, w, t in zip(
                user[tagged].tolist(),
                item[tagged].tolist(),
                rng.integers(0, 300, len(tagged)).tolist(),
                times[tagged].tolist(),
                strict=True,
            )
        ],
        encoding="utf-8",
    )
    return out_dir
