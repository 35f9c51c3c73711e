"""Read GroupLens' MovieLens files into the fixed tables of `recfunnel.data.schema`.

`load_movielens(dataset=...)` loads any release of `data.datasets`; this module parses
ML-1M itself and leaves ML-10M's and the CSV releases' formats to `data.formats`. ML-1M's
three files are `::`-separated latin-1 text, one record per line. Every malformed
line is a DataError that names the file, the 1-based line number and the line's text;
nothing is dropped or repaired silently. Parsed tables are cached as parquet in a folder
named after a SHA-256 over the source files (each one hashed on its own, with its name and
size), so any change to a file forces a re-parse.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recfunnel.data import formats
from recfunnel.data.dataset import MovieLens
from recfunnel.data.datasets import DEFAULT_DATASET, DatasetSpec, dataset_spec
from recfunnel.data.download import REQUIRED_FILES, fetch_movielens
from recfunnel.data.schema import (
    AGE_BUCKETS,
    GENRES,
    ITEM,
    ITEM_COLUMNS,
    LIKE_THRESHOLD,
    N_OCCUPATIONS,
    RATING,
    RATING_COLUMNS,
    TAG_COLUMNS,
    TIME,
    USER,
    USER_COLUMNS,
)
from recfunnel.errors import DataError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "RECFUNNEL_DATA_DIR"
CACHE_DIR_ENV = "RECFUNNEL_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/recfunnel")

# Bump whenever parsing changes what ends up in the tables, so older parquet caches of
# the same source files are parsed again instead of reused.
# 2: the cut-short, timestamp and size checks, and the per-file checksum.
CACHE_FORMAT = 2
_TABLES = ("ratings", "users", "items")
# The parsed-cache format of the later releases (data.formats); its own counter, so a change
# there never forces ML-1M's caches to be parsed again.
LARGE_CACHE_FORMAT = 1
# The fewest ratings a data set may have: below 10, the 10 % valid and test parts of the
# default temporal split hold less than one rating each, and training fails far from here.
MIN_RATINGS = 10
_COLUMNS = {
    "ratings": RATING_COLUMNS,
    "users": USER_COLUMNS,
    "items": ITEM_COLUMNS,
    "tags": TAG_COLUMNS,
}

# Latest accepted rating time, 2100-01-01 00:00 UTC (the earliest is the epoch, 0). ML-1M
# spans 2000-2003; a time beyond this is garbage (a millisecond timestamp, digits run
# together) rather than a rating, and far enough out it cannot even be formatted as a
# date. Checked on load, so every later module can trust TIME.
MAX_TIMESTAMP = 4_102_444_800
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# "::" becomes this single byte so the C parser can split lines; the ASCII unit separator
# cannot occur in a valid file (checked), unlike a tab.
_SEP = "\x1f"
_INT32_MAX = int(np.iinfo(np.int32).max)
_INT = r"[0-9]{1,18}"  # digits only and always fits in int64
_GENRE_ORDER = {genre: j for j, genre in enumerate(GENRES)}
_FIX_HINT = (
    "Pass --data-dir (or set RECFUNNEL_DATA_DIR) to a folder holding ratings.dat, users.dat "
    "and movies.dat (the ml-1m folder of GroupLens' ml-1m.zip)"
)
# Names in messages: the files call them UserID and MovieID.
_LABELS = {USER: "user id", ITEM: "movie id"}


# ---------------------------------------------------------------------------------------
# Parsing one file


def read_ratings(path: str | Path) -> pd.DataFrame:
    """Parse ratings.dat (`UserID::MovieID::Rating::Timestamp`), keeping the file order.

    Returns columns user_id (int32), item_id (int32), rating (int8, 1..5), timestamp
    (int64, 0..MAX_TIMESTAMP) with index 0..n-1 (row i is line i + 1). Raises DataError on
    a malformed line, a rating outside 1..5, a timestamp out of range or a second rating of
    the same (user, movie) pair.
    """
    path = Path(path)
    df = _split(path, RATING_COLUMNS, int_columns=RATING_COLUMNS)
    _check_ids(path, df[USER])
    _check_ids(path, df[ITEM])
    _check(path, ~df[RATING].between(1, 5).to_numpy(), "rating must be one of 1, 2, 3, 4, 5")
    _check(
        path,
        ~df[TIME].between(0, MAX_TIMESTAMP).to_numpy(),
        f"timestamp must be 0..{MAX_TIMESTAMP} (1970-01-01 to 2100-01-01 UTC)",
    )
    # Ids are < 2**31 now, so this packs each (user, movie) pair into one int64.
    pair = (df[USER].to_numpy() << 32) | df[ITEM].to_numpy()
    _check_unique(
        path, pair, lambda row: f"user {df[USER].iat[row]} rated movie {df[ITEM].iat[row]} twice"
    )
    return pd.DataFrame(
        {
            USER: df[USER].astype(np.int32),
            ITEM: df[ITEM].astype(np.int32),
            RATING: df[RATING].astype(np.int8),
            TIME: df[TIME],
        }
    )


def read_users(path: str | Path) -> pd.DataFrame:
    """Parse users.dat (`UserID::Gender::Age::Occupation::Zip-code`).

    Returns columns user_id (int32), gender ("M"/"F"), age (int8, one of AGE_BUCKETS),
    occupation (int8, 0..20), zip (str), one row per line. Raises DataError on a
    malformed line or a repeated user id.
    """
    path = Path(path)
    df = _split(path, USER_COLUMNS, int_columns=(USER, "age", "occupation"))
    _check_ids(path, df[USER])
    _check_unique(path, df[USER].to_numpy(), lambda row: f"user id {df[USER].iat[row]} repeats")
    _check(path, ~df["gender"].isin(["M", "F"]).to_numpy(), "gender must be M or F")
    _check(
        path,
        ~df["age"].isin(AGE_BUCKETS).to_numpy(),
        f"age must be one of the ML-1M age buckets {AGE_BUCKETS}",
    )
    _check(
        path,
        ~df["occupation"].between(0, N_OCCUPATIONS - 1).to_numpy(),
        f"occupation must be 0..{N_OCCUPATIONS - 1}",
    )
    return pd.DataFrame(
        {
            USER: df[USER].astype(np.int32),
            "gender": df["gender"],
            "age": df["age"].astype(np.int8),
            "occupation": df["occupation"].astype(np.int8),
            "zip": df["zip"],
        }
    )


def read_movies(path: str | Path) -> pd.DataFrame:
    """Parse movies.dat (`MovieID::Title (Year)::Genre|Genre|...`).

    Returns columns item_id (int32), title (str, without the trailing year), year (Int16,
    <NA> when the title has no "(YYYY)" at its end) and genres ("|"-joined, each one of
    GENRES, put in GENRES order). Raises DataError on a malformed line, an empty or
    unknown genre, an empty title or a repeated movie id.
    """
    path = Path(path)
    df = _split(path, (ITEM, "title", "genres"), int_columns=(ITEM,))
    _check_ids(path, df[ITEM])
    _check_unique(path, df[ITEM].to_numpy(), lambda row: f"movie id {df[ITEM].iat[row]} repeats")

    # Lazy title, so "Seven (Se7en) (1995)" keeps "(Se7en)"; ML-1M also has one title
    # without the space, "Associate, The (L'Associe)(1982)".
    parts = df["title"].str.extract(r"^(.*?)\s*\(([0-9]{4})\)\s*$")
    title = parts[0].fillna(df["title"]).str.strip()
    _check(path, (title == "").to_numpy(), "empty title")
    year = pd.to_numeric(parts[1]).astype("Int16")

    genres = []
    for row, value in enumerate(df["genres"]):
        names = value.split("|")
        for name in names:
            if name not in _GENRE_ORDER:
                what = "empty genre" if name == "" else f"unknown genre {name!r}"
                raise _line_error(path, row + 1, f"{what} (genres are {'|'.join(GENRES)})")
        if len(set(names)) < len(names):
            raise _line_error(path, row + 1, "a genre is listed twice")
        genres.append("|".join(sorted(names, key=_GENRE_ORDER.__getitem__)))

    return pd.DataFrame(
        {
            ITEM: df[ITEM].astype(np.int32),
            "title": title,
            "year": year,
            "genres": pd.Series(genres, index=df.index, dtype=df["title"].dtype),
        }
    )


def _split(path: Path, columns: tuple[str, ...], *, int_columns: tuple[str, ...]) -> pd.DataFrame:
    """Split a `::` file into `columns`: int64 for `int_columns`, str for the rest.

    Row i of the result is line i + 1 of the file. Windows line ends and blank lines at
    the end of the file are accepted; any other blank line is a wrong field count. A
    non-empty file must end in a line end: GroupLens' files all do, and a file cut inside
    its last field (say a timestamp missing its last digits) would otherwise parse.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw and not raw.endswith(b"\n"):
        raise _line_error(
            path, raw.count(b"\n") + 1, "the last line has no line end: the file looks cut short"
        )
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    raw = raw.rstrip(b"\n")
    if _SEP.encode() in raw:
        line = raw.count(b"\n", 0, raw.index(_SEP.encode())) + 1
        raise _line_error(path, line, "control character 0x1f (unit separator)")
    if not raw:
        return pd.DataFrame(
            {c: pd.Series([], dtype=np.int64 if c in int_columns else str) for c in columns}
        )
    data = raw.replace(b"::", _SEP.encode())

    if set(int_columns) == set(columns) and not data.translate(None, b"0123456789\n\x1f"):
        # Fast path (ratings.dat): with only digits, separators and newlines present,
        # every field the C parser accepts as int64 is a plain non-negative integer.
        # Anything it rejects (a short line, an empty field) takes the checked path below,
        # which finds the line to blame.
        try:
            df = pd.read_csv(
                io.BytesIO(data),
                sep=_SEP,
                header=None,
                dtype=np.int64,
                engine="c",
                lineterminator="\n",
                quoting=csv.QUOTE_NONE,
                skip_blank_lines=False,
            )
        except (ValueError, OverflowError):
            pass
        else:
            if df.shape[1] == len(columns):
                df.columns = list(columns)
                return df

    # Checked path: every field as text, then checked, with a precise error for the first
    # bad line. Splitting on "\n" only (not str.splitlines) keeps line numbers right even
    # if a latin-1 title holds a character Python counts as a line break, like 0x85.
    n_fields = np.fromiter(
        (line.count(_SEP) + 1 for line in data.decode("latin-1").split("\n")), dtype=np.int64
    )
    _check(
        path,
        n_fields != len(columns),
        lambda row: f"expected {len(columns)} fields separated by '::', found {n_fields[row]}",
    )
    # With the field counts right, the C parser cannot misalign; QUOTE_NONE because titles
    # hold quotes and commas, na_filter=False so that an empty field stays "" (an error).
    df = pd.read_csv(
        io.BytesIO(data),
        sep=_SEP,
        header=None,
        names=list(columns),
        dtype=str,
        encoding="latin-1",
        engine="c",
        lineterminator="\n",
        quoting=csv.QUOTE_NONE,
        skip_blank_lines=False,
        na_filter=False,
    )
    for column in int_columns:
        _check(
            path,
            ~df[column].str.fullmatch(_INT).to_numpy(dtype=bool),
            f"{_LABELS.get(column, column)} is not a non-negative integer",
        )
        df[column] = df[column].astype(np.int64)
    return df


def _check_ids(path: Path, ids: pd.Series) -> None:
    _check(
        path, ~ids.between(1, _INT32_MAX).to_numpy(), f"{_LABELS[ids.name]} must be 1..{_INT32_MAX}"
    )


def _check_unique(path: Path, keys: np.ndarray, describe: Callable[[int], str]) -> None:
    """Raise DataError naming both lines when a key repeats an earlier line's key."""
    formats.check_unique(path, keys, describe, first_line=1)


def _check(path: Path, bad: np.ndarray, reason: str | Callable[[int], str]) -> None:
    """Raise DataError for the first True row of `bad` (row i is line i + 1)."""
    formats.check_rows(path, bad, reason, first_line=1)


def _line_error(path: Path, line: int, reason: str) -> DataError:
    """A DataError quoting line `line` (1-based) of `path`; only built on the error path."""
    return formats.line_error(path, line, reason)


# ---------------------------------------------------------------------------------------
# Loading a data set


def load_movielens(
    data_dir: str | Path | None = None,
    *,
    dataset: str = DEFAULT_DATASET,
    cache_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> MovieLens:
    """Load and validate a MovieLens release, parsing the files only when their checksum is new.

    `dataset` is one of `data.datasets.DATASETS` (ml-1m, ml-10m, ml-20m, ml-25m, ml-32m).
    The data folder is `data_dir`, else $RECFUNNEL_DATA_DIR, else (when `download`) the
    archive fetched into `cache_dir`. `cache_dir` (default $RECFUNNEL_CACHE_DIR, else
    ~/.cache/recfunnel) also holds the parsed tables, as parquet in `parsed/<sha256>/`.
    Besides each file's own checks, no file may be empty, there must be MIN_RATINGS
    ratings or more, and every rating (and tag) must name a movie of the movies file (and,
    for ML-1M, a user of users.dat).
    """
    spec = dataset_spec(dataset)
    cache = _resolve_cache_dir(cache_dir)
    folder = _resolve_data_dir(data_dir, cache, spec, download=download, progress=progress)
    if spec.format != "ml-1m":
        return _load_larger(folder, spec, cache)
    ratings_path, users_path, movies_path = (folder / name for name in REQUIRED_FILES)
    checksum = _checksum((ratings_path, users_path, movies_path))

    parsed = cache / "parsed" / checksum
    tables = _read_parsed(parsed)
    if tables is None:
        ratings = read_ratings(ratings_path)
        users = read_users(users_path)
        items = read_movies(movies_path)
        _check_size(folder, ratings, users, items)
        _check_references(ratings_path, ratings, users, items)
        tables = (ratings, users, items)
        _write_parsed(parsed, tables, checksum)
    ratings, users, items = tables
    return MovieLens(ratings, users, items, checksum, source=folder)


def _load_larger(folder: Path, spec: DatasetSpec, cache: Path) -> MovieLens:
    """ML-10M / ML-20M / 25M / 32M from `folder` (see `data.formats`); tags when present."""
    ratings_path, movies_path = folder / spec.ratings, folder / spec.movies
    tags_path = folder / spec.tags if spec.tags and (folder / spec.tags).is_file() else None
    paths = (ratings_path, movies_path) + ((tags_path,) if tags_path else ())
    checksum = _checksum(paths)
    names = ("ratings", "users", "items") + (("tags",) if tags_path else ())
    parsed = cache / "parsed" / checksum
    tables = _read_parsed(parsed, LARGE_CACHE_FORMAT, names)
    if tables is None:
        first = 2 if ratings_path.suffix == ".csv" else 1  # CSV: line 1 is the header
        ratings = formats.read_half_star_ratings(ratings_path, MAX_TIMESTAMP)
        items = formats.read_movies_table(movies_path)
        tags = formats.read_tags_table(tags_path, MAX_TIMESTAMP) if tags_path else None
        hint = _fix_hint(spec)
        for path, table, what in (
            (ratings_path, ratings, "ratings"),
            (movies_path, items, "movies"),
        ):
            if table.empty:
                raise DataError(
                    f"the data set in {folder} is empty: {path.name} has no {what}. {hint}."
                )
        if len(ratings) < MIN_RATINGS:
            raise DataError(
                f"the data set in {folder} is too small: {ratings_path.name} has {len(ratings)} "
                f"ratings, at least {MIN_RATINGS} are needed to split it into train, valid and "
                f"test. {hint}."
            )
        formats.check_references(ratings_path, ratings, items, first, spec.movies)
        if tags is not None:
            formats.check_references(tags_path, tags, items, first, spec.movies)
        users = formats.users_from_ratings(ratings)
        tables = (ratings, users, items) + ((tags,) if tags is not None else ())
        _write_parsed(parsed, tables, checksum, LARGE_CACHE_FORMAT, names)
    ratings, users, items = tables[:3]
    tags = tables[3] if len(tables) > 3 else None
    return MovieLens(ratings, users, items, checksum, source=folder, dataset=spec.name, tags=tags)


def _fix_hint(spec: DatasetSpec) -> str:
    """How to point the loader at a folder of `spec`'s files."""
    if spec.format == "ml-1m":
        return _FIX_HINT
    files = [spec.ratings, spec.movies] + ([spec.tags + " (optional)"] if spec.tags else [])
    return (
        f"Pass --data-dir (or set RECFUNNEL_DATA_DIR) to a folder holding {', '.join(files)} "
        f"(the {spec.archive_folder} folder of GroupLens' {spec.archive}), with --dataset "
        f"{spec.name}"
    )


def _resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser()


def _resolve_data_dir(
    data_dir: str | Path | None,
    cache: Path,
    spec: DatasetSpec | None = None,
    *,
    download: bool,
    progress: bool,
) -> Path:
    """The folder holding the data set's files, checked to exist (see `load_movielens`)."""
    spec = spec or dataset_spec(DEFAULT_DATASET)
    hint = _fix_hint(spec)
    if data_dir is not None:
        folder, origin = Path(data_dir).expanduser(), "data folder"
    elif os.environ.get(DATA_DIR_ENV):
        folder, origin = Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    elif download:
        return fetch_movielens(cache, dataset=spec.name, progress=progress)
    else:
        raise DataError(
            f"no data folder given and downloading is off. {hint}, or allow the download."
        )

    fix = f"{hint}, or set neither to download it."
    if not folder.is_dir():
        raise DataError(f"{origin} {folder} does not exist. {fix}")
    required = [n for n in (spec.ratings, spec.users, spec.movies) if n is not None]
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{origin} {folder} has no {', '.join(missing)}. {fix}")
    if spec.users is None and (folder / "users.dat").is_file():
        # ML-1M's folder has ratings.dat and movies.dat too, and its whole stars are valid
        # half stars: without this it would load as ML-10M under the wrong name.
        raise DataError(
            f"{origin} {folder} holds users.dat, so it is ML-1M, not {spec.name}: "
            "pass --dataset ml-1m, or point at the other data set's folder"
        )
    return folder.resolve()


def _checksum(paths: tuple[Path, ...]) -> str:
    """Hex SHA-256 over a line `name NUL size NUL sha256(bytes) LF` per file, in order.

    Each file is hashed on its own: a hash of the bytes run together is the same when a
    line moves from the end of one file to the start of the next, and a warm cache would
    then serve tables of files that no longer parse.
    """
    digest = hashlib.sha256()
    for path in paths:
        file_digest, size = hashlib.sha256(), 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    file_digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
        digest.update(f"{path.name}\0{size}\0{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def _check_size(
    folder: Path, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame
) -> None:
    """No file may be empty, and there must be MIN_RATINGS ratings or more to split."""
    empty = [
        f"{file} has no {what}"
        for file, what, table in (
            ("ratings.dat", "ratings", ratings),
            ("users.dat", "users", users),
            ("movies.dat", "movies", items),
        )
        if table.empty
    ]
    if empty:
        raise DataError(f"the data set in {folder} is empty: {', '.join(empty)}. {_FIX_HINT}.")
    if len(ratings) < MIN_RATINGS:
        raise DataError(
            f"the data set in {folder} is too small: ratings.dat has {len(ratings)} ratings, "
            f"at least {MIN_RATINGS} are needed to split it into train, valid and test. "
            f"{_FIX_HINT}."
        )


def _check_references(
    ratings_path: Path, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame
) -> None:
    """Every rating must name a user of users.dat and a movie of movies.dat."""
    for column, table, file in ((USER, users, "users.dat"), (ITEM, items, "movies.dat")):
        ids = ratings[column].to_numpy()
        _check(
            ratings_path,
            ~np.isin(ids, table[column].to_numpy()),
            lambda row, ids=ids, column=column, file=file: (
                f"{_LABELS[column]} {ids[row]} is not in {file}"
            ),
        )


def _read_parsed(
    folder: Path, cache_format: int = CACHE_FORMAT, names: tuple[str, ...] = _TABLES
) -> tuple[pd.DataFrame, ...] | None:
    """The cached tables in `folder`, or None if absent, of another format or unreadable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != cache_format:
            return None
        tables = tuple(pd.read_parquet(folder / f"{name}.parquet") for name in names)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("ignoring the unreadable parsed cache %s (%s)", folder, exc)
        return None
    if any(tuple(t.columns) != _COLUMNS[name] for name, t in zip(names, tables, strict=True)):
        return None
    log.info("read parsed tables from %s", folder)
    return tables


def _write_parsed(
    folder: Path,
    tables: tuple[pd.DataFrame, ...],
    checksum: str,
    cache_format: int = CACHE_FORMAT,
    names: tuple[str, ...] = _TABLES,
) -> None:
    """Write the tables to `folder` atomically (temp folder, then rename).

    A cache that cannot be written (read-only disk, full disk) only costs a re-parse next
    time, so it is a warning, not an error.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{folder.name[:16]}.", suffix=".tmp", dir=folder.parent)
        )
        try:
            for name, table in zip(names, tables, strict=True):
                table.to_parquet(tmp / f"{name}.parquet", index=False)
            (tmp / "meta.json").write_text(
                json.dumps({"format": cache_format, "sha256": checksum}) + "\n"
            )
            if folder.exists():  # another format, or damaged: replace it
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.warning("could not cache the parsed tables in %s (%s)", folder, exc)


# ---------------------------------------------------------------------------------------
# Summary


def dataset_stats(ml: MovieLens) -> dict[str, int | float | str | None]:
    """Headline numbers of a data set, flat so the CLI can print one per line.

    `density` is n_ratings / (users with a rating x movies with a rating); dates are UTC.
    Means, dates and density are None for a data set without ratings.
    """
    ratings = ml.ratings
    n = len(ratings)
    values = ratings[RATING].to_numpy()
    if np.issubdtype(values.dtype, np.integer):  # ML-1M: whole stars, n_rating_1 .. n_rating_5
        counts = np.bincount(values, minlength=6)
        by_star = {f"n_rating_{k}": int(counts[k]) for k in range(1, 6)}
    else:  # half stars: n_rating_0.5, n_rating_1, ..., n_rating_5
        counts = np.bincount(np.rint(values * 2).astype(np.int64), minlength=11)
        by_star = {f"n_rating_{k / 2:g}": int(counts[k]) for k in range(1, 11)}
    n_users_rated = int(ratings[USER].nunique())
    n_items_rated = int(ratings[ITEM].nunique())
    first = int(ratings[TIME].min()) if n else None
    last = int(ratings[TIME].max()) if n else None
    return {
        "n_ratings": n,
        "n_users": len(ml.users),
        "n_users_rated": n_users_rated,
        "n_movies": len(ml.items),
        "n_items_rated": n_items_rated,
        **({"n_tags": len(ml.tags)} if ml.tags is not None else {}),
        **by_star,
        "mean_rating": float(ratings[RATING].mean()) if n else None,
        "liked_share": float((ratings[RATING] >= LIKE_THRESHOLD).mean()) if n else None,
        "first_timestamp": first,
        "last_timestamp": last,
        "first_date": _iso_date(first),
        "last_date": _iso_date(last),
        "density": n / (n_users_rated * n_items_rated) if n else None,
    }


def _iso_date(timestamp: int | None) -> str | None:
    """The UTC date of a Unix timestamp; None for None or a time no date can hold.

    Epoch plus a timedelta rather than datetime.fromtimestamp, which raises OSError for
    times the platform's C library cannot convert (negative ones on Windows, say).
    """
    if timestamp is None:
        return None
    try:
        return (_EPOCH + timedelta(seconds=int(timestamp))).date().isoformat()
    except OverflowError:  # beyond year 9999 (or before year 1)
        return None
