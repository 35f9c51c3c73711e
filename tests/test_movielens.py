"""Parsing, validation, caching and folder resolution of the MovieLens-1M loader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.data import MovieLens, movielens
from recfunnel.data.movielens import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    MAX_TIMESTAMP,
    MIN_RATINGS,
    dataset_stats,
    load_movielens,
    read_movies,
    read_ratings,
)
from recfunnel.data.synthetic import write_synthetic_movielens
from recfunnel.errors import DataError

MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)::Sci-Fi|War",
    "3::Professional, The (a.k.a. Leon: The Professional) (1994)::Crime|Drama|Romance|Thriller",
    '4::"Quoted, With Comma" (2000)::Comedy',
    "5::Associate, The (L'Associe)(1982)::Comedy",
    "6::Seven (Se7en) (1995)::Crime|Thriller",
    "7::Café Society::Drama",
]
USERS = [
    "1::F::1::10::48067",
    "2::M::56::16::70072",
    "3::M::25::15::55117",
]
RATINGS = [
    "1::1::5::978300760",
    "1::2::3::978302109",
    "2::1::4::978301968",
    "2::3::1::978300275",
    "3::6::2::978824291",
    "3::7::4::978302268",
    "1::6::4::978300500",
    "2::7::5::978301000",
    "3::3::3::978302000",
    "3::2::5::978303000",
]  # MIN_RATINGS (10) ratings: the fewest a data set may have
FILE_LINES = {"ratings.dat": RATINGS, "users.dat": USERS, "movies.dat": MOVIES}


def write_ml(folder: Path, end: str = "\n", **replace: list[str]) -> Path:
    """Write the three files (latin-1, like GroupLens'); `ratings=[...]` etc. swaps one."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in FILE_LINES.items():
        lines = replace.get(name.removesuffix(".dat"), lines)
        (folder / name).write_bytes((end.join(lines) + end).encode("latin-1"))
    return folder


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither CI's data/cache variables nor the user's home may leak into these tests."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_parses_tables_with_schema_dtypes(tmp_path: Path) -> None:
    ml = load_movielens(write_ml(tmp_path / "data"), cache_dir=tmp_path / "cache")

    assert ml.ratings.dtypes.to_dict() == {
        "user_id": np.int32,
        "item_id": np.int32,
        "rating": np.int8,
        "timestamp": np.int64,
    }
    assert ml.ratings.to_numpy().tolist() == [
        [int(x) for x in line.split("::")] for line in RATINGS
    ]  # every line, in file order
    assert list(ml.ratings.index) == list(range(len(RATINGS)))

    users = ml.users
    assert [users[c].dtype for c in ("user_id", "age", "occupation")] == [
        np.int32,
        np.int8,
        np.int8,
    ]
    assert pd.api.types.is_string_dtype(users["gender"])
    assert pd.api.types.is_string_dtype(users["zip"])
    assert users.iloc[1].tolist() == [2, "M", 56, 16, "70072"]

    items = ml.items
    assert items["item_id"].dtype == np.int32 and items["year"].dtype == "Int16"
    assert pd.api.types.is_string_dtype(items["title"])
    assert pd.api.types.is_string_dtype(items["genres"])
    rows = {int(r.item_id): (r.title, r.year, r.genres) for r in items.itertuples()}
    assert rows[1] == ("Toy Story", 1995, "Animation|Children's|Comedy")
    assert rows[2] == (
        "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb",
        1963,
        "Sci-Fi|War",
    )
    assert rows[3] == (
        "Professional, The (a.k.a. Leon: The Professional)",
        1994,
        "Crime|Drama|Romance|Thriller",
    )
    assert rows[4] == ('"Quoted, With Comma"', 2000, "Comedy")  # quotes are plain text
    assert rows[5] == ("Associate, The (L'Associe)", 1982, "Comedy")  # no space before year
    assert rows[6] == ("Seven (Se7en)", 1995, "Crime|Thriller")
    assert rows[7][0] == "Café Society" and rows[7][1] is pd.NA  # latin-1; no year


def test_genres_are_put_in_schema_order(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_text("1::X (2000)::War|Action|Comedy\n")
    assert read_movies(tmp_path / "movies.dat")["genres"].tolist() == ["Action|Comedy|War"]


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_windows_line_ends_and_blank_trailing_lines_are_fine(tmp_path: Path, end: str) -> None:
    folder = write_ml(tmp_path / "data", end=end)
    with open(folder / "ratings.dat", "ab") as f:
        f.write(end.encode() * 2)
    ml = load_movielens(folder, cache_dir=tmp_path / "cache")
    assert len(ml.ratings) == len(RATINGS) and len(ml.items) == len(MOVIES)
    assert ml.items["genres"].iloc[0] == "Animation|Children's|Comedy"  # no stray "\r"


@pytest.mark.parametrize("file", ["ratings.dat", "users.dat", "movies.dat"])
@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_file_cut_inside_its_last_line_is_rejected(tmp_path: Path, file: str, end: str) -> None:
    folder = write_ml(tmp_path / "data", end=end)
    data = (folder / file).read_bytes()
    # Cut two bytes into the last line's end: for ratings.dat the timestamp 978303000
    # becomes 9783030, still a valid number.
    cut = data[: -len(end) - 2]
    (folder / file).write_bytes(cut)
    with pytest.raises(DataError, match="no line end: the file looks cut short") as info:
        load_movielens(folder, cache_dir=tmp_path / "cache")
    n_lines = len(FILE_LINES[file])
    last = cut.split(b"\n")[-1].decode("latin-1")
    assert f"{file}, line {n_lines}: " in str(info.value) and repr(last) in str(info.value)


def test_empty_ratings_file_gives_an_empty_table(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("")
    ratings = read_ratings(tmp_path / "ratings.dat")
    assert len(ratings) == 0 and list(ratings.columns) == [
        "user_id",
        "item_id",
        "rating",
        "timestamp",
    ]
    assert ratings.dtypes.tolist() == [np.int32, np.int32, np.int8, np.int64]


# (file, 1-based line to overwrite, its new text, expected words of the message)
MALFORMED = {
    "ratings-too-few-fields": ("ratings.dat", 2, "1::4::5", "expected 4 fields"),
    "ratings-too-many-fields": ("ratings.dat", 3, "2::1::4::978301968::7", "expected 4 fields"),
    "ratings-blank-line": ("ratings.dat", 3, "", "found 1"),
    "ratings-user-not-int": ("ratings.dat", 2, "x::2::3::978302109", "user id is not"),
    "ratings-item-empty": ("ratings.dat", 4, "2::::1::978300275", "movie id is not"),
    "ratings-rating-fraction": ("ratings.dat", 5, "3::6::2.5::978824291", "rating is not"),
    "ratings-rating-6": ("ratings.dat", 5, "3::6::6::978824291", "rating must be one of"),
    "ratings-rating-0": ("ratings.dat", 1, "1::1::0::978300760", "rating must be one of"),
    "ratings-user-0": ("ratings.dat", 6, "0::7::4::978302268", "user id must be"),
    "ratings-timestamp-negative": ("ratings.dat", 2, "1::2::3::-5", "timestamp is not"),
    "ratings-timestamp-far-future": (
        "ratings.dat",
        3,
        "2::1::4::999999999999999999",
        "timestamp must be 0..4102444800",
    ),
    "ratings-timestamp-milliseconds": (
        "ratings.dat",
        4,
        "2::3::1::978300275000",
        "timestamp must be 0..4102444800",
    ),
    "ratings-duplicate-pair": (
        "ratings.dat",
        6,
        "1::2::4::978400000",
        "user 1 rated movie 2 twice: first on line 2, again on line 6",
    ),
    "ratings-unknown-movie": (
        "ratings.dat",
        4,
        "2::99::1::978300275",
        "movie id 99 is not in movies.dat",
    ),
    "ratings-unknown-user": (
        "ratings.dat",
        6,
        "9::7::4::978302268",
        "user id 9 is not in users.dat",
    ),
    "users-too-few-fields": ("users.dat", 2, "2::M::56::16", "expected 5 fields"),
    "users-gender": ("users.dat", 3, "3::X::25::15::55117", "gender must be M or F"),
    "users-age-not-int": ("users.dat", 1, "1::F::one::10::48067", "age is not"),
    "users-age-bucket": ("users.dat", 2, "2::M::30::16::70072", "age must be one of"),
    "users-occupation": ("users.dat", 3, "3::M::25::21::55117", "occupation must be 0..20"),
    "users-duplicate-id": (
        "users.dat",
        3,
        "1::M::25::15::55117",
        "user id 1 repeats: first on line 1, again on line 3",
    ),
    "movies-too-few-fields": ("movies.dat", 4, "4::Quoted (2000)", "expected 3 fields"),
    "movies-id-not-int": ("movies.dat", 2, "two::Jumanji (1995)::Comedy", "movie id is not"),
    "movies-unknown-genre": ("movies.dat", 5, "5::X (1982)::Comedy|Cartoon", "'Cartoon'"),
    "movies-empty-genres": ("movies.dat", 6, "6::Seven (1995)::", "empty genre"),
    "movies-empty-genre-inside": ("movies.dat", 7, "7::Y::Comedy||Drama", "empty genre"),
    "movies-repeated-genre": ("movies.dat", 7, "7::Y::Drama|Drama", "listed twice"),
    "movies-empty-title": ("movies.dat", 3, "3:: (1994)::Drama", "empty title"),
    "movies-duplicate-id": (
        "movies.dat",
        7,
        "1::Toy Story 2 (1999)::Comedy",
        "movie id 1 repeats: first on line 1, again on line 7",
    ),
}


@pytest.mark.parametrize(("file", "line", "text", "words"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, file: str, line: int, text: str, words: str
) -> None:
    lines = list(FILE_LINES[file])
    lines[line - 1] = text
    folder = write_ml(tmp_path / "data", **{file.removesuffix(".dat"): lines})
    with pytest.raises(DataError) as info:
        load_movielens(folder, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert f"{file}, line {line}: " in message
    assert words in message
    assert repr(text) in message  # the offending text, quoted
    assert not (tmp_path / "cache" / "parsed").exists()  # nothing bad was cached


def test_empty_ratings_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = write_ml(tmp_path / "data", ratings=[])
    (folder / "ratings.dat").write_bytes(b"")
    with pytest.raises(DataError, match="is empty: ratings.dat has no ratings") as info:
        load_movielens(folder, cache_dir=tmp_path / "cache")
    assert str(folder.resolve()) in str(info.value) and "--data-dir" in str(info.value)
    assert not (tmp_path / "cache" / "parsed").exists()


@pytest.mark.parametrize(("file", "what"), [("users.dat", "users"), ("movies.dat", "movies")])
def test_empty_users_or_movies_file_is_a_clear_error(tmp_path: Path, file: str, what: str) -> None:
    folder = write_ml(tmp_path / "data")
    (folder / file).write_bytes(b"\n")  # only a blank line: no records either
    with pytest.raises(DataError, match=f"is empty: {file} has no {what}") as info:
        load_movielens(folder, cache_dir=tmp_path / "cache")
    assert str(folder.resolve()) in str(info.value)


def test_too_few_ratings_to_split_is_a_clear_error(tmp_path: Path) -> None:
    folder = write_ml(tmp_path / "data", ratings=RATINGS[: MIN_RATINGS - 1])
    with pytest.raises(DataError, match="too small: ratings.dat has 9 ratings, at least 10"):
        load_movielens(folder, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "parsed").exists()


def test_small_synthetic_data_sets_load(tmp_path: Path) -> None:
    # The sizes tests/test_synthetic.py writes, and the smallest the generator allows.
    small = write_synthetic_movielens(
        tmp_path / "small", n_users=40, n_items=120, ratings_per_user=(25, 30), n_factors=4
    )
    assert len(load_movielens(small, cache_dir=tmp_path / "cache").ratings) >= 40 * 25
    tiny = write_synthetic_movielens(
        tmp_path / "tiny", n_users=1, n_items=60, ratings_per_user=(MIN_RATINGS, MIN_RATINGS)
    )
    assert len(load_movielens(tiny, cache_dir=tmp_path / "cache").ratings) == MIN_RATINGS


def test_second_load_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache = write_ml(tmp_path / "data"), tmp_path / "cache"
    first = load_movielens(data, cache_dir=cache)
    assert (cache / "parsed" / first.checksum / "ratings.parquet").is_file()

    def parse_again(path: Path) -> pd.DataFrame:
        raise AssertionError(f"{path} was parsed again instead of read from the cache")

    for name in ("read_ratings", "read_users", "read_movies"):
        monkeypatch.setattr(movielens, name, parse_again)
    second = load_movielens(data, cache_dir=cache)
    assert second.checksum == first.checksum and second.source == first.source
    for a, b in ((first.ratings, second.ratings), (first.users, second.users)):
        pd.testing.assert_frame_equal(a, b)  # values, dtypes and index
    pd.testing.assert_frame_equal(first.items, second.items)


def test_changed_source_file_is_parsed_again(tmp_path: Path) -> None:
    data, cache = write_ml(tmp_path / "data"), tmp_path / "cache"
    first = load_movielens(data, cache_dir=cache)
    write_ml(data, ratings=[*RATINGS, "3::1::5::978900000"])
    second = load_movielens(data, cache_dir=cache)
    assert second.checksum != first.checksum
    assert len(second.ratings) == len(RATINGS) + 1
    assert sorted(p.name for p in (cache / "parsed").iterdir()) == sorted(
        [first.checksum, second.checksum]
    )


def test_checksum_hashes_ratings_users_movies_each_by_name(tmp_path: Path) -> None:
    data = write_ml(tmp_path / "data")
    digest = hashlib.sha256()
    for name in ("ratings.dat", "users.dat", "movies.dat"):
        body = (data / name).read_bytes()
        digest.update(f"{name}\0{len(body)}\0{hashlib.sha256(body).hexdigest()}\n".encode())
    assert load_movielens(data, cache_dir=tmp_path / "cache").checksum == digest.hexdigest()


def test_line_moved_between_files_changes_the_key_and_is_not_served_from_cache(
    tmp_path: Path,
) -> None:
    data, cache = write_ml(tmp_path / "data"), tmp_path / "cache"
    first = load_movielens(data, cache_dir=cache)  # warms the cache
    # The last rating becomes the first line of users.dat: the bytes of ratings.dat then
    # users.dat, run together, are unchanged.
    before = b"".join((data / name).read_bytes() for name in ("ratings.dat", "users.dat"))
    write_ml(data, ratings=RATINGS[:-1], users=[RATINGS[-1], *USERS])
    after = b"".join((data / name).read_bytes() for name in ("ratings.dat", "users.dat"))
    assert before == after
    with pytest.raises(DataError, match=r"users.dat, line 1: expected 5 fields"):
        load_movielens(data, cache_dir=cache)  # parsed afresh, not the stale cached tables
    paths = tuple(data / name for name in ("ratings.dat", "users.dat", "movies.dat"))
    assert movielens._checksum(paths) != first.checksum


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    data, cache = write_ml(tmp_path / "data"), tmp_path / "cache"
    first = load_movielens(data, cache_dir=cache)
    (cache / "parsed" / first.checksum / "ratings.parquet").write_bytes(b"not parquet")
    second = load_movielens(data, cache_dir=cache)
    pd.testing.assert_frame_equal(first.ratings, second.ratings)
    assert load_movielens(data, cache_dir=cache).ratings.equals(first.ratings)


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_ml(tmp_path / "data")
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env-cache"))
    ml = load_movielens()
    assert ml.source == data.resolve()
    assert (tmp_path / "env-cache" / "parsed" / ml.checksum).is_dir()


def test_explicit_data_dir_beats_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_ml(tmp_path / "data")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "does-not-exist"))
    assert load_movielens(data, cache_dir=tmp_path / "cache").source == data.resolve()


def test_without_a_folder_it_downloads_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_ml(tmp_path / "fetched")
    calls = []

    def fake_fetch(cache_dir: Path, *, dataset: str, progress: bool) -> Path:
        calls.append((cache_dir, dataset, progress))
        return data

    monkeypatch.setattr(movielens, "fetch_movielens", fake_fetch)
    ml = load_movielens(progress=False)  # cache dir: ~/.cache/recfunnel, HOME is tmp here
    assert calls == [(tmp_path / "home" / ".cache" / "recfunnel", "ml-1m", False)]
    assert len(ml.ratings) == len(RATINGS)


def test_no_folder_and_no_download_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="downloading is off") as info:
        load_movielens(cache_dir=tmp_path / "cache", download=False)
    assert "RECFUNNEL_DATA_DIR" in str(info.value) and "--data-dir" in str(info.value)


def test_missing_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        load_movielens(missing, cache_dir=tmp_path / "cache")
    assert str(missing) in str(info.value) and "--data-dir" in str(info.value)

    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(DataError, match=r"\$RECFUNNEL_DATA_DIR .*nowhere does not exist"):
        load_movielens(cache_dir=tmp_path / "cache")


def test_folder_without_movies_dat_is_named(tmp_path: Path) -> None:
    data = write_ml(tmp_path / "data")
    (data / "movies.dat").unlink()
    with pytest.raises(DataError, match="has no movies.dat"):
        load_movielens(data, cache_dir=tmp_path / "cache")


def test_dataset_stats(tmp_path: Path) -> None:
    stats = dataset_stats(load_movielens(write_ml(tmp_path / "data"), cache_dir=tmp_path / "c"))
    # Ratings 5, 3, 4, 1, 2, 4, 4, 5, 3, 5 by 3 users on movies 1, 2, 3, 6, 7 (movie 4 and 5
    # unrated).
    assert stats == {
        "n_ratings": 10,
        "n_users": 3,
        "n_users_rated": 3,
        "n_movies": 7,
        "n_items_rated": 5,
        "n_rating_1": 1,
        "n_rating_2": 1,
        "n_rating_3": 2,
        "n_rating_4": 3,
        "n_rating_5": 3,
        "mean_rating": pytest.approx(36 / 10),
        "liked_share": pytest.approx(6 / 10),
        "first_timestamp": 978300275,
        "last_timestamp": 978824291,
        "first_date": "2000-12-31",  # 978300275 = 2000-12-31 22:04:35 UTC
        "last_date": "2001-01-06",  # 978824291 = 2001-01-06 23:38:11 UTC
        "density": pytest.approx(10 / (3 * 5)),
    }


def test_timestamp_bounds_are_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::1::5::0\n1::2::3::4102444800\n")
    assert read_ratings(path)["timestamp"].tolist() == [0, MAX_TIMESTAMP]
    path.write_text("1::1::5::0\n1::2::3::4102444801\n")
    with pytest.raises(DataError, match=r"ratings.dat, line 2: timestamp must be"):
        read_ratings(path)


def test_stats_dates_of_unformattable_times_are_none() -> None:
    ratings = pd.DataFrame(
        {
            "user_id": np.array([1, 1], dtype=np.int32),
            "item_id": np.array([1, 2], dtype=np.int32),
            "rating": np.array([5, 3], dtype=np.int8),
            "timestamp": np.array([-1, 10**17], dtype=np.int64),  # built by hand, unchecked
        }
    )
    ml = MovieLens(ratings, pd.DataFrame(), pd.DataFrame(), "0" * 64, Path("."))
    stats = dataset_stats(ml)
    assert stats["first_date"] == "1969-12-31" and stats["last_date"] is None


@pytest.mark.realdata
def test_real_ml1m(ml1m_dir: Path, tmp_path: Path) -> None:
    ml = load_movielens(ml1m_dir, cache_dir=tmp_path / "cache")
    stats = dataset_stats(ml)
    assert (stats["n_ratings"], stats["n_users"], stats["n_movies"]) == (1_000_209, 6_040, 3_883)
    assert stats["n_items_rated"] == 3_706
    counts = [stats[f"n_rating_{k}"] for k in range(1, 6)]
    assert counts == [56_174, 107_557, 261_197, 348_971, 226_310]
    toy_story = ml.items.iloc[0]
    assert (toy_story.item_id, toy_story.title, toy_story.year, toy_story.genres) == (
        1,
        "Toy Story",
        1995,
        "Animation|Children's|Comedy",
    )
    assert ml.items["year"].notna().all()  # every ML-1M title ends in its year
    cached = load_movielens(ml1m_dir, cache_dir=tmp_path / "cache")
    pd.testing.assert_frame_equal(ml.ratings, cached.ratings)
    pd.testing.assert_frame_equal(ml.items, cached.items)
