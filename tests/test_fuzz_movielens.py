"""Fuzzing the parsers: a damaged file parses to validated tables or is a DataError.

Random edits of small valid files (flip a bit, replace, insert or delete a byte, insert "::",
line ends, NUL, the unit separator or non-ASCII bytes, cut the file short, or put another
number in a field) must never let any exception but DataError escape, and a DataError must
name the file and a line of it. Whatever parses must hold only values the schema allows, in
the same columns and dtypes as a clean parse, one row per line of a file that ends in a line
end. The same holds for the whole loader and its summary.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recfunnel.data.movielens import (
    MAX_TIMESTAMP,
    dataset_stats,
    load_movielens,
    read_movies,
    read_ratings,
    read_users,
)
from recfunnel.data.schema import AGE_BUCKETS, GENRES, N_OCCUPATIONS
from recfunnel.errors import DataError

CLEAN = {
    "ratings.dat": (  # MIN_RATINGS (10) ratings, so the folder also loads as a data set
        b"1::1::5::978300760\n1::2::3::978302109\n1::3::4::978301000\n2::1::4::978301968\n"
        b"2::3::1::978300275\n2::4::2::978300500\n3::2::2::978824291\n3::1::5::978302000\n"
        b"3::3::3::978303000\n3::4::4::978304000\n"
    ),
    "users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117-1234\n",
    "movies.dat": (
        b"1::Toy Story (1995)::Animation|Children's|Comedy\n"
        b"2::Seven (Se7en) (1995)::Crime|Thriller\n"
        b'3::"Quoted, With Comma" (2000)::Comedy\n'
        b"4::Caf\xe9 Society::Drama\n"
    ),
}
READERS = {"ratings.dat": read_ratings, "users.dat": read_users, "movies.dat": read_movies}

# Bytes that matter to the parsers: separators, line ends, and what a latin-1 file or a
# damaged one may hold (NUL, the 0x1f the parser uses internally, NEL 0x85, quotes).
SPECIAL = [b"::", b":", b"\n", b"\r", b"\r\n", b"\x00", b"\x1f", b"\x85", b"\xe9", b"\xff"]
SPECIAL += [b"|", b'"', b"(", b")", b" ", b"-", b"+", b"0", b"9", b"99999999999999999999"]

BYTE_EDITS = ("flip", "replace", "insert", "insert special", "delete", "truncate")

# Numbers at and around the limits the parsers check: ratings 1..5, ids 1..2**31 - 1,
# timestamps 0..MAX_TIMESTAMP, 18 digits (int64) at most.
LIMITS = [0, 1, 5, 6, 2**31 - 1, 2**31, MAX_TIMESTAMP, MAX_TIMESTAMP + 1, 10**18 - 1, 10**18]
# Small numbers, the limits, and numbers of 1..19 digits (hypothesis alone favours small
# magnitudes, and timestamps out of range have 10 digits or more).
NUMBERS = st.one_of(
    st.integers(0, 10),
    st.sampled_from(LIMITS),
    st.integers(1, 19).flatmap(lambda n: st.integers(10 ** (n - 1), 10**n - 1)),
)


def edit_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """One random byte edit; positions span the whole current length, so the last bytes
    (where a file cut short differs) are as likely as the first."""
    kind = draw(st.sampled_from(BYTE_EDITS))
    if kind.startswith("insert"):
        at = draw(st.integers(0, len(data)))
        new = draw(
            st.sampled_from(SPECIAL)
            if kind == "insert special"
            else st.binary(min_size=1, max_size=3)
        )
        return data[:at] + new + data[at:]
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if kind == "replace":
        return data[:at] + draw(st.binary(min_size=1, max_size=1)) + data[at + 1 :]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 3)) :]
    return data[:at]  # truncate: a download or copy cut short


def edit_number(draw: st.DrawFn, data: bytes) -> bytes:
    """Replace one number of the file (an id, rating, age, year, timestamp) by another."""
    numbers = [m.span() for m in re.finditer(rb"[0-9]+", data)]
    if not numbers:
        return data
    start, end = draw(st.sampled_from(numbers))
    return data[:start] + str(draw(NUMBERS)).encode() + data[end:]


def damage(draw: st.DrawFn, data: bytes, n_edits: int, *, numbers: bool = False) -> bytes:
    """`data` after `n_edits` edits: byte edits, or (`numbers`) mostly number edits."""
    for _ in range(n_edits):
        number = numbers and draw(st.integers(0, 3)) > 0
        data = (edit_number if number else edit_bytes)(draw, data)
    return data


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module-scoped: hypothesis reruns the test body, and a fresh folder per example is
    # not needed as each example overwrites its file.
    return tmp_path_factory.mktemp("fuzz")


# derandomize: the same examples on every run, so CI cannot fail by chance; database=None
# writes no .hypothesis folder. Together the tests take a few seconds.
FUZZ = settings(deadline=None, database=None, derandomize=True)


@settings(FUZZ, max_examples=300)
@given(name=st.sampled_from(sorted(CLEAN)), n_edits=st.integers(1, 4), draw=st.data())
def test_damaged_file_parses_validated_or_names_file_and_line(
    fuzz_dir: Path, name: str, n_edits: int, draw: st.DataObject
) -> None:
    check_file(fuzz_dir, name, damage(draw.draw, CLEAN[name], n_edits))


@settings(FUZZ, max_examples=200)
@given(name=st.sampled_from(sorted(CLEAN)), n_edits=st.integers(1, 3), draw=st.data())
def test_out_of_range_numbers_are_rejected_with_file_and_line(
    fuzz_dir: Path, name: str, n_edits: int, draw: st.DataObject
) -> None:
    check_file(fuzz_dir, name, damage(draw.draw, CLEAN[name], n_edits, numbers=True))


def check_file(fuzz_dir: Path, name: str, data: bytes) -> None:
    """`data` as file `name` parses to validated tables or raises a DataError naming a line."""
    path = fuzz_dir / name
    path.write_bytes(data)
    try:
        table = READERS[name](path)
    except DataError as exc:
        match = re.match(rf"{re.escape(str(path))}, line (\d+): \S", str(exc))
        assert match, f"no file and line in {exc}"
        assert 1 <= int(match[1]) <= data.count(b"\n") + 1, str(exc)
        return
    clean_path = fuzz_dir / f"clean-{name}"
    clean_path.write_bytes(CLEAN[name])
    clean = READERS[name](clean_path)
    assert list(table.columns) == list(clean.columns)
    assert table.dtypes.to_dict() == clean.dtypes.to_dict()
    assert list(table.index) == list(range(len(table)))
    assert data == b"" or data.endswith(b"\n")  # a file cut short is never accepted
    lines = data.replace(b"\r\n", b"\n").rstrip(b"\n")
    assert len(table) == (lines.count(b"\n") + 1 if lines else 0)  # one row per line
    CHECKS[name](table)


@settings(FUZZ, max_examples=100)
@given(
    name=st.sampled_from(sorted(CLEAN)),
    n_edits=st.integers(1, 3),
    numbers=st.booleans(),
    draw=st.data(),
)
def test_damaged_data_set_loads_or_is_a_data_error(
    fuzz_dir: Path, name: str, n_edits: int, numbers: bool, draw: st.DataObject
) -> None:
    # The whole loader (size and cross-file checks, the parquet cache) and the summary.
    folder = fuzz_dir / "set"
    folder.mkdir(exist_ok=True)
    for file, data in CLEAN.items():
        (folder / file).write_bytes(data)
    (folder / name).write_bytes(damage(draw.draw, CLEAN[name], n_edits, numbers=numbers))
    try:
        ml = load_movielens(folder, cache_dir=fuzz_dir / "cache", download=False)
    except DataError as exc:
        assert str(folder.resolve()) in str(exc)  # the folder, or a file in it and a line
        return
    dataset_stats(ml)  # formats the dates of the first and last rating
    _check_ratings(ml.ratings)
    _check_users(ml.users)
    _check_movies(ml.items)


def _check_ratings(t: pd.DataFrame) -> None:
    assert (t["user_id"] >= 1).all() and (t["item_id"] >= 1).all()
    assert t["rating"].between(1, 5).all()
    assert t["timestamp"].between(0, MAX_TIMESTAMP).all()
    assert not t.duplicated(["user_id", "item_id"]).any()


def _check_users(t: pd.DataFrame) -> None:
    assert (t["user_id"] >= 1).all() and t["user_id"].is_unique
    assert t["gender"].isin(["M", "F"]).all()
    assert t["age"].isin(AGE_BUCKETS).all()
    assert t["occupation"].between(0, N_OCCUPATIONS - 1).all()
    assert all(isinstance(z, str) for z in t["zip"])


def _check_movies(t: pd.DataFrame) -> None:
    assert (t["item_id"] >= 1).all() and t["item_id"].is_unique
    assert all(isinstance(title, str) and title.strip() == title != "" for title in t["title"])
    years = t["year"].dropna().to_numpy(dtype=np.int64)
    assert ((years >= 0) & (years <= 9999)).all()
    for genres in t["genres"]:
        names = genres.split("|")
        assert all(n in GENRES for n in names) and len(set(names)) == len(names)
        assert names == sorted(names, key=GENRES.index)


CHECKS = {"ratings.dat": _check_ratings, "users.dat": _check_users, "movies.dat": _check_movies}
