"""Readers of the larger MovieLens releases: ML-10M's `::` files and ML-20M/25M/32M's CSV.

They return the tables of `recfunnel.data.schema`, checked by the same rules as ML-1M's
(`recfunnel.data.movielens`): every malformed line is a DataError naming the file, the
1-based line number and the line's text; nothing is dropped or repaired silently. What
differs from ML-1M, and why:

- ratings are half stars, 0.5..5.0 (float32); "liked" is still rating >= 4;
- there is no users file: `users_from_ratings` lists the rating users with every
  demographic missing (<NA>), which every model reads as its "unknown" slot 0;
- genres: ML-10M+ spell "Children" (ML-1M: "Children's"), which is mapped onto ML-1M's
  genre; "(no genres listed)" means no genre; "IMAX" is a screen format, not one of the
  18 genres the protocol's ILD and the models' genre vectors use, so it is left out of
  `genres` (the movie keeps its other genres);
- tags (`tags.dat` / `tags.csv`) become a table user_id, item_id, tag, timestamp; an empty
  tag is kept as "" (real files have a few) and ignored by the features that read tags.

Speed: pyarrow parses every file (ML-32M's 32 M ratings in seconds, multithreaded); a
`::` file first has each "::" replaced by one byte (0x1f, which a valid file cannot hold) so
pyarrow can split it. The line-by-line Python scan in `_locate` runs only after pyarrow
rejected a file, to name the first bad line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv

from recfunnel.data.schema import GENRES, ITEM, RATING, TAG_COLUMNS, TIME, USER, USER_COLUMNS
from recfunnel.errors import DataError

_SEP = "\x1f"  # what "::" becomes; the ASCII unit separator cannot occur in a valid file
_INT32_MAX = int(np.iinfo(np.int32).max)
_GENRE_ORDER = {genre: j for j, genre in enumerate(GENRES)}
# ML-10M+ spellings of ML-1M genres, and entries that are not one of the 18 genres.
GENRE_ALIASES = {"Children": "Children's"}
NOT_GENRES = ("IMAX", "(no genres listed)")
_LABELS = {USER: "user id", ITEM: "movie id"}

# Header rows of the CSV releases (ML-20M, 25M and 32M share them).
CSV_HEADERS = {
    "ratings": ("userId", "movieId", "rating", "timestamp"),
    "movies": ("movieId", "title", "genres"),
    "tags": ("userId", "movieId", "tag", "timestamp"),
}
_INT_RE = re.compile(r"[0-9]{1,18}")
_FLOAT_RE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")


# ---------------------------------------------------------------------------------------
# Errors that name a line


def line_text(path: Path, line: int) -> str:
    """Line `line` (1-based) of `path` as latin-1 text, read by streaming (the file may be
    GBs); "" past the end, "?" if unreadable. Only called on the error path."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):  # binary files split on b"\n" only
                if number == line:
                    return raw.rstrip(b"\n").rstrip(b"\r").decode("latin-1")
    except OSError:
        return "?"
    return ""


def line_error(path: Path, line: int, reason: str) -> DataError:
    """A DataError quoting line `line` (1-based) of `path`."""
    text = line_text(path, line)
    if len(text) > 200:
        text = text[:200] + "..."
    return DataError(f"{path}, line {line}: {reason}: {text!r}")


def check_rows(
    path: Path, bad: np.ndarray, reason: str | Callable[[int], str], first_line: int
) -> None:
    """Raise for the first True row of `bad`; row i is line i + first_line."""
    if bad.any():
        row = int(bad.argmax())
        raise line_error(path, row + first_line, reason(row) if callable(reason) else reason)


def _check_ids(path: Path, ids: np.ndarray, column: str, first_line: int) -> None:
    check_rows(
        path,
        (ids < 1) | (ids > _INT32_MAX),
        f"{_LABELS[column]} must be 1..{_INT32_MAX}",
        first_line,
    )


def check_unique(
    path: Path, keys: np.ndarray, describe: Callable[[int], str], first_line: int
) -> None:
    """Raise naming both lines when a key repeats an earlier row's key."""
    check_rows(
        path,
        pd.Series(keys).duplicated().to_numpy(),
        lambda row: (
            f"{describe(row)}: first on line "
            f"{int(np.flatnonzero(keys == keys[row])[0]) + first_line}, "
            f"again on line {row + first_line}"
        ),
        first_line,
    )


# ---------------------------------------------------------------------------------------
# Reading a file into typed columns


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _check_ends(path: Path, raw: bytes) -> None:
    """A non-empty file must end in a line end: a file cut inside its last field (a
    timestamp missing digits) would otherwise parse."""
    if raw and not raw.endswith(b"\n"):
        raise line_error(
            path, raw.count(b"\n") + 1, "the last line has no line end: the file looks cut short"
        )


def _as_utf8(raw: bytes) -> bytes:
    """UTF-8 bytes as they are; anything else read as latin-1 (ML-1M's encoding), so a
    title never fails to decode and the bytes pyarrow sees are valid UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1").encode("utf-8")
    return raw


def _parse(
    path: Path,
    data: bytes,
    names: tuple[str, ...],
    types: dict[str, pa.DataType],
    *,
    delimiter: str,
    quoted: bool,
    first_line: int,
) -> pa.Table:
    """pyarrow parse of `data` (the file's records, header removed) into typed columns;
    on any rejection, DataError naming the first bad line (see `_locate`)."""
    if not data:
        return pa.table({n: pa.array([], type=types[n]) for n in names})
    try:
        return pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(
                column_names=list(names), block_size=1 << 24, use_threads=True
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                double_quote=quoted,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,  # a blank line is a wrong field count, as in ML-1M
            ),
            convert_options=pcsv.ConvertOptions(
                column_types=types,
                null_values=[],  # an empty id or rating is an error, never a null
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        _locate(path, data, names, types, delimiter=delimiter, quoted=quoted, first=first_line)
        raise DataError(f"{path}: cannot be parsed ({exc})") from exc


def _locate(
    path: Path,
    data: bytes,
    names: tuple[str, ...],
    types: dict[str, pa.DataType],
    *,
    delimiter: str,
    quoted: bool,
    first: int,
) -> None:
    """Scan the records one by one and raise for the first one pyarrow would reject."""
    shown = "','" if delimiter == "," else "'::'"
    for offset, line in enumerate(_lines(data)):
        fields = next(csv.reader([line], delimiter=delimiter)) if quoted else line.split(delimiter)
        if quoted and line.count('"') % 2:
            raise line_error(path, offset + first, "unbalanced quotes")
        if len(fields) != len(names):
            raise line_error(
                path,
                offset + first,
                f"expected {len(names)} fields separated by {shown}, found {len(fields)}",
            )
        for name, value in zip(names, fields, strict=True):
            kind = types.get(name)
            if kind is None or pa.types.is_string(kind):
                continue
            pattern = _FLOAT_RE if pa.types.is_floating(kind) else _INT_RE
            if not pattern.fullmatch(value):
                what = _LABELS.get(name, name)
                expected = "a number" if pattern is _FLOAT_RE else "a non-negative integer"
                raise line_error(path, offset + first, f"{what} is not {expected}")


def _lines(data: bytes) -> Iterator[str]:
    for line in data.decode("utf-8", errors="replace").split("\n"):
        yield line.removesuffix("\r")


def read_dat(
    path: Path, names: tuple[str, ...], types: dict[str, pa.DataType]
) -> tuple[pa.Table, int]:
    """A `::`-separated file without header; returns (table, first line number = 1)."""
    raw = _read_bytes(path)
    _check_ends(path, raw)
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    raw = raw.rstrip(b"\n")  # blank lines at the very end are accepted, as in ML-1M
    if _SEP.encode() in raw:
        line = raw.count(b"\n", 0, raw.index(_SEP.encode())) + 1
        raise line_error(path, line, "control character 0x1f (unit separator)")
    data = _as_utf8(raw).replace(b"::", _SEP.encode())
    if data:
        data += b"\n"
    table = _parse(path, data, names, types, delimiter=_SEP, quoted=False, first_line=1)
    return table, 1


def read_csv_file(
    path: Path, kind: str, names: tuple[str, ...], types: dict[str, pa.DataType]
) -> tuple[pa.Table, int]:
    """A CSV file of the ML-20M family: its header must be `CSV_HEADERS[kind]`; returns
    (table with columns `names`, first data line number = 2)."""
    raw = _read_bytes(path)
    _check_ends(path, raw)
    header, _, body = raw.partition(b"\n")
    expected = ",".join(CSV_HEADERS[kind])
    got = header.rstrip(b"\r").decode("utf-8", errors="replace").removeprefix("\ufeff")
    if got != expected:
        raise line_error(path, 1, f"the header must be {expected!r}")
    body = body.rstrip(b"\n").rstrip(b"\r")
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n")
    if b'"' in body:
        # A quote left open makes pyarrow run the record on into the next line(s), which can
        # still parse; every well-formed line holds an even number of quotes.
        for number, line in enumerate(body.split(b"\n"), start=2):
            if line.count(b'"') % 2:
                raise line_error(path, number, "unbalanced quotes")
    if body:
        body += b"\n"
    table = _parse(path, body, names, types, delimiter=",", quoted=True, first_line=2)
    return table, 2


# ---------------------------------------------------------------------------------------
# The tables

_RATING_TYPES = {USER: pa.int64(), ITEM: pa.int64(), RATING: pa.float64(), TIME: pa.int64()}
_MOVIE_TYPES = {ITEM: pa.int64(), "title": pa.string(), "genres": pa.string()}
_TAG_TYPES = {USER: pa.int64(), ITEM: pa.int64(), "tag": pa.string(), TIME: pa.int64()}


def _read(path: Path, kind: str, types: dict[str, pa.DataType]) -> tuple[pa.Table, int]:
    names = tuple(types)
    if path.suffix == ".csv":
        return read_csv_file(path, kind, names, types)
    return read_dat(path, names, types)


def read_half_star_ratings(path: str | Path, max_timestamp: int) -> pd.DataFrame:
    """ratings.dat (ML-10M, `UserID::MovieID::Rating::Timestamp`) or ratings.csv (ML-20M+),
    in file order: user_id, item_id (int32), rating (float32, 0.5..5.0 in steps of 0.5),
    timestamp (int64, 0..max_timestamp); row i is the i-th record."""
    path = Path(path)
    table, first = _read(path, "ratings", _RATING_TYPES)
    users = table.column(USER).to_numpy()
    items = table.column(ITEM).to_numpy()
    _check_ids(path, users, USER, first)
    _check_ids(path, items, ITEM, first)
    rating = table.column(RATING).to_numpy()
    twice = rating * 2
    check_rows(
        path,
        ~((twice >= 1) & (twice <= 10) & (twice == np.round(twice))),
        "rating must be one of 0.5, 1.0, ..., 5.0 (half stars)",
        first,
    )
    times = table.column(TIME).to_numpy()
    check_rows(
        path,
        (times < 0) | (times > max_timestamp),
        f"timestamp must be 0..{max_timestamp} (1970-01-01 to 2100-01-01 UTC)",
        first,
    )
    del table
    # Ids are < 2**31 now, so this packs each (user, movie) pair into one int64.
    pair = (users << 32) | items
    check_unique(path, pair, lambda row: f"user {users[row]} rated movie {items[row]} twice", first)
    del pair
    return pd.DataFrame(
        {
            USER: users.astype(np.int32),
            ITEM: items.astype(np.int32),
            RATING: rating.astype(np.float32),
            TIME: times,
        }
    )


def read_movies_table(path: str | Path) -> pd.DataFrame:
    """movies.dat (ML-10M) or movies.csv (ML-20M+): item_id (int32), title (without the
    year), year (Int16, <NA> without a trailing "(YYYY)"), genres ("|"-joined, in GENRES
    order; see the module docstring for "Children", "IMAX" and "(no genres listed)")."""
    path = Path(path)
    table, first = _read(path, "movies", _MOVIE_TYPES)
    ids = table.column(ITEM).to_numpy()
    _check_ids(path, ids, ITEM, first)
    check_unique(path, ids, lambda row: f"movie id {ids[row]} repeats", first)
    titles = pd.Series(table.column("title").to_pylist(), dtype=str)
    parts = titles.str.extract(r"^(.*?)\s*\(([0-9]{4})\)\s*$")
    title = parts[0].fillna(titles).str.strip()
    check_rows(path, (title == "").to_numpy(), "empty title", first)
    genres = []
    for row, value in enumerate(table.column("genres").to_pylist()):
        names = [GENRE_ALIASES.get(n, n) for n in value.split("|")]
        for name in names:
            if name not in _GENRE_ORDER and name not in NOT_GENRES:
                what = "empty genre" if name == "" else f"unknown genre {name!r}"
                raise line_error(path, row + first, f"{what} (genres are {'|'.join(GENRES)})")
        if len(set(names)) < len(names):
            raise line_error(path, row + first, "a genre is listed twice")
        kept = sorted((n for n in names if n in _GENRE_ORDER), key=_GENRE_ORDER.__getitem__)
        genres.append("|".join(kept))
    return pd.DataFrame(
        {
            ITEM: ids.astype(np.int32),
            "title": title.astype(str),
            "year": pd.to_numeric(parts[1]).astype("Int16"),
            "genres": pd.Series(genres, dtype=str),
        }
    )


def read_tags_table(path: str | Path, max_timestamp: int) -> pd.DataFrame:
    """tags.dat (ML-10M) or tags.csv (ML-20M+): user_id, item_id (int32), tag (str, as
    written; "" kept), timestamp (int64), one row per tag application, in file order."""
    path = Path(path)
    if path.suffix == ".csv":
        table, first = read_csv_file(path, "tags", tuple(_TAG_TYPES), _TAG_TYPES)
        users, items = table.column(USER).to_numpy(), table.column(ITEM).to_numpy()
        tags = table.column("tag").to_pylist()
        times = table.column(TIME).to_numpy()
    else:
        users, items, tags, times = _split_dat_tags(path)
        first = 1
    _check_ids(path, users, USER, first)
    _check_ids(path, items, ITEM, first)
    check_rows(
        path,
        (times < 0) | (times > max_timestamp),
        f"timestamp must be 0..{max_timestamp} (1970-01-01 to 2100-01-01 UTC)",
        first,
    )
    return pd.DataFrame(
        {
            USER: users.astype(np.int32),
            ITEM: items.astype(np.int32),
            "tag": pd.Series(tags, dtype=str),
            TIME: times.astype(np.int64),
        },
        columns=list(TAG_COLUMNS),
    )


def _split_dat_tags(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """tags.dat line by line (100k lines in ML-10M): a tag is free text and may itself hold
    "::", so a line is user, movie, then everything up to the last "::", then the time."""
    raw = _read_bytes(path)
    _check_ends(path, raw)
    text = _as_utf8(raw.replace(b"\r\n", b"\n").rstrip(b"\n")).decode("utf-8")
    users, items, tags, times = [], [], [], []
    for number, line in enumerate(text.split("\n") if text else [], start=1):
        head = line.split("::", 2)
        tail = head[-1].rsplit("::", 1) if len(head) == 3 else []
        if len(tail) != 2:
            raise line_error(path, number, "expected 4 fields separated by '::'")
        fields = (head[0], head[1], tail[1])
        for name, value in zip((USER, ITEM, TIME), fields, strict=True):
            if not _INT_RE.fullmatch(value):
                raise line_error(path, number, f"{_LABELS.get(name, name)} is not an integer")
        users.append(int(head[0]))
        items.append(int(head[1]))
        tags.append(tail[0])
        times.append(int(tail[1]))
    return (
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        tags,
        np.asarray(times, dtype=np.int64),
    )


def users_from_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """The users table of a release without users.dat: every rating user, ascending, with
    gender, age, occupation and zip missing (<NA>), so `FeatureSpace` maps each of them to
    the unknown slot 0 (the models then learn nothing from demographics)."""
    ids = np.unique(ratings[USER].to_numpy())
    n = len(ids)
    return pd.DataFrame(
        {
            USER: ids.astype(np.int32),
            # None in object columns (not pd.NA): compared with "F" it is simply False.
            "gender": pd.Series([None] * n, dtype=object),
            "age": pd.array([pd.NA] * n, dtype="Int8"),
            "occupation": pd.array([pd.NA] * n, dtype="Int8"),
            "zip": pd.Series([None] * n, dtype=object),
        },
        columns=list(USER_COLUMNS),
    )


def check_references(
    path: Path, table: pd.DataFrame, items: pd.DataFrame, first_line: int, what: str
) -> None:
    """Every row of `table` (ratings or tags, row i = line i + first_line) must name a movie
    of the movies file `what`."""
    ids = table[ITEM].to_numpy()
    check_rows(
        path,
        ~np.isin(ids, items[ITEM].to_numpy()),
        lambda row: f"movie id {ids[row]} is not in {what}",
        first_line,
    )
