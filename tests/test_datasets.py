"""The larger releases: ML-10M's `::` files and ML-20M/25M/32M's CSV, their checks and specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recfunnel.cli import DATASET_CHOICES, main
from recfunnel.data import load_movielens
from recfunnel.data.datasets import DATASETS, dataset_spec
from recfunnel.data.download import fetch_movielens
from recfunnel.data.movielens import dataset_stats
from recfunnel.data.synthetic import write_synthetic_movielens
from recfunnel.errors import ConfigError, DataError, DownloadError

RATINGS_CSV = [
    "userId,movieId,rating,timestamp",
    "1,1,4.0,1112486027",
    "1,2,3.5,1112484676",
    "1,3,0.5,1112484819",
    "2,1,5.0,1112484727",
    "2,3,4.5,1112484580",
    "3,2,1.0,1094785740",
    "3,1,2.5,1094785734",
    "3,4,3.0,1094785709",
    "4,4,4.0,1094785698",
    "4,2,2.0,1094785779",
]
MOVIES_CSV = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
    '2,"American President, The (1995)",Comedy|Drama|Romance',
    '3,"Quoted ""Nickname"" (2001)",IMAX|Action',
    "4,Pull My Daisy,(no genres listed)",
]
TAGS_CSV = [
    "userId,movieId,tag,timestamp",
    "1,1,pixar,1112486027",
    '2,2,"politics, romance",1112484727',
    "9,3,,1112484580",
]


def write_csv(folder: Path, **replace: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("ratings", RATINGS_CSV), ("movies", MOVIES_CSV), ("tags", TAGS_CSV)):
        lines = replace.get(name, lines)
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def as_dat(lines: list[str]) -> list[str]:
    """Numeric CSV records in ML-10M's `::` form (no header)."""
    return [line.replace(",", "::") for line in lines[1:]]


def write_dat(folder: Path, **replace: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "ratings": as_dat(RATINGS_CSV),
        "movies": [
            "1::Toy Story (1995)::Adventure|Animation|Children|Comedy|Fantasy",
            "2::American President: The Sequel (1995)::Comedy|Drama|Romance",
            "3::Café Society (2001)::IMAX|Action",
            "4::Pull My Daisy::(no genres listed)",
        ],
        "tags": ["1::1::pixar::1112486027", "2::2::what::a::tag::1112484727"],
    }
    for name, lines in files.items():
        lines = replace.get(name, lines)
        (folder / f"{name}.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def test_the_cli_knows_every_dataset() -> None:
    assert tuple(DATASETS) == DATASET_CHOICES


def test_every_spec_has_a_url_and_an_md5_with_its_source() -> None:
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert spec.md5 is not None and len(spec.md5) == 32 and int(spec.md5, 16) >= 0
        assert f"{name}.zip.md5" in spec.md5_source
    assert dataset_spec("ml-10m").archive_folder == "ml-10M100K"
    assert dataset_spec("ml-1m").required_files == ("ratings.dat", "users.dat", "movies.dat")
    with pytest.raises(ConfigError, match="unknown dataset 'ml-2m'; choose from ml-1m"):
        dataset_spec("ml-2m")


def test_a_dataset_without_a_known_md5_is_never_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from recfunnel.data import datasets, download

    unknown = dataclasses.replace(DATASETS["ml-25m"], md5=None, md5_source="not published")
    monkeypatch.setitem(datasets.DATASETS, "ml-25m", unknown)
    fetched = []
    monkeypatch.setattr(download, "download_file", lambda *a, **k: fetched.append(a))
    with pytest.raises(DownloadError, match="no published MD5 is known for ml-25m.zip"):
        fetch_movielens(tmp_path, dataset="ml-25m", progress=False)
    assert fetched == [] and not any(tmp_path.iterdir())


def test_csv_release_loads_with_half_stars_tags_and_no_demographics(tmp_path: Path) -> None:
    ml = load_movielens(write_csv(tmp_path / "d"), dataset="ml-20m", cache_dir=tmp_path / "c")
    assert ml.dataset == "ml-20m"
    assert ml.ratings["rating"].dtype == np.float32
    assert ml.ratings["rating"].tolist()[:3] == [4.0, 3.5, 0.5]
    assert ml.users["user_id"].tolist() == [1, 2, 3, 4]
    assert ml.users[["gender", "age", "occupation", "zip"]].isna().all().all()
    assert not ml.has_demographics
    items = ml.items.set_index("item_id")
    assert items.loc[2, "title"] == "American President, The" and items.loc[2, "year"] == 1995
    assert items.loc[1, "genres"] == "Adventure|Animation|Children's|Comedy|Fantasy"
    assert items.loc[3, "title"] == 'Quoted "Nickname"' and items.loc[3, "genres"] == "Action"
    assert items.loc[4, "genres"] == "" and items["year"].isna().sum() == 1
    assert ml.genre_matrix(np.array([4])).sum() == 0  # no genres listed: no genre
    assert ml.tags["tag"].tolist() == ["pixar", "politics, romance", ""]
    stats = dataset_stats(ml)
    assert stats["n_rating_0.5"] == 1 and stats["n_rating_4"] == 2 and stats["n_tags"] == 3


def test_dat_release_loads_the_same_tables(tmp_path: Path) -> None:
    dat = load_movielens(write_dat(tmp_path / "d"), dataset="ml-10m", cache_dir=tmp_path / "c")
    csv = load_movielens(write_csv(tmp_path / "e"), dataset="ml-20m", cache_dir=tmp_path / "c")
    assert dat.ratings.equals(csv.ratings)
    assert dat.users.equals(csv.users)
    assert dat.items["genres"].tolist() == csv.items["genres"].tolist()
    assert dat.items["title"].tolist()[2] == "Café Society"  # latin-1 bytes decode
    # A free-text tag may hold "::" itself: user, movie, ..., time.
    assert dat.tags["tag"].tolist() == ["pixar", "what::a::tag"]


def test_parsed_tables_are_cached_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recfunnel.data import formats

    data, cache = write_csv(tmp_path / "d"), tmp_path / "c"
    first = load_movielens(data, dataset="ml-20m", cache_dir=cache)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed again despite a warm cache")

    monkeypatch.setattr(formats, "read_half_star_ratings", never)
    second = load_movielens(data, dataset="ml-20m", cache_dir=cache)
    assert second.checksum == first.checksum
    for name in ("ratings", "users", "items", "tags"):
        assert getattr(second, name).equals(getattr(first, name)), name
    # A changed file is parsed afresh (and here, refused by the patched parser).
    (data / "ratings.csv").write_text("\n".join([*RATINGS_CSV, "5,1,3.0,1"]) + "\n")
    with pytest.raises(AssertionError, match="parsed again"):
        load_movielens(data, dataset="ml-20m", cache_dir=cache)


def test_tags_are_optional(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d")
    with_tags = load_movielens(data, dataset="ml-20m", cache_dir=tmp_path / "c")
    (data / "tags.csv").unlink()
    ml = load_movielens(data, dataset="ml-20m", cache_dir=tmp_path / "c")
    assert ml.tags is None and ml.checksum != with_tags.checksum


@pytest.mark.parametrize(
    ("name", "lines", "line", "reason"),
    [
        ("ratings", ["userId,movieId,rating"] + RATINGS_CSV[1:], 1, "the header must be"),
        ("ratings", [*RATINGS_CSV[:3], "1,3,4.0", *RATINGS_CSV[4:]], 4, "expected 4 fields"),
        ("ratings", [*RATINGS_CSV[:5], "2,x,4.5,1112484580", *RATINGS_CSV[6:]], 6, "movie id is"),
        ("ratings", [*RATINGS_CSV[:2], "1,1,4.2,1112486027", *RATINGS_CSV[3:]], 3, "half stars"),
        ("ratings", [*RATINGS_CSV[:2], "1,1,5.5,1112486027", *RATINGS_CSV[3:]], 3, "half stars"),
        ("ratings", [*RATINGS_CSV[:2], "1,1,0.0,1112486027", *RATINGS_CSV[3:]], 3, "half stars"),
        ("ratings", [*RATINGS_CSV[:2], "0,1,4.0,1112486027", *RATINGS_CSV[3:]], 3, "user id must"),
        ("ratings", [*RATINGS_CSV[:10], "1,1,3.0,1112486099"], 11, "rated movie 1 twice"),
        ("ratings", [*RATINGS_CSV[:10], "5,9,3.0,1112486099"], 11, "movie id 9 is not in"),
        ("ratings", [*RATINGS_CSV[:3], "", *RATINGS_CSV[3:]], 4, "expected 4 fields"),
        ("ratings", [*RATINGS_CSV[:2], "1,1,4.0,99999999999", *RATINGS_CSV[3:]], 3, "timestamp"),
        ("movies", [*MOVIES_CSV[:2], '2,"Unclosed (1995),Comedy', *MOVIES_CSV[3:]], 3, "quotes"),
        ("movies", [*MOVIES_CSV, "1,Again (1990),Drama"], 6, "movie id 1 repeats"),
        ("movies", [*MOVIES_CSV, "5,Odd (1990),Drama|Space"], 6, "unknown genre 'Space'"),
        ("movies", [*MOVIES_CSV, "5,Odd (1990),Drama|Drama"], 6, "a genre is listed twice"),
        ("movies", [*MOVIES_CSV, "5, (1990),Drama"], 6, "empty title"),
        ("tags", [*TAGS_CSV, "1,7,scary,1112486027"], 5, "movie id 7 is not in movies.csv"),
    ],
)
def test_csv_errors_name_the_file_and_line(
    tmp_path: Path, name: str, lines: list[str], line: int, reason: str
) -> None:
    data = write_csv(tmp_path / "d", **{name: lines})
    with pytest.raises(DataError, match=rf"{name}\.csv, line {line}: .*{reason}"):
        load_movielens(data, dataset="ml-20m", cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    ("name", "lines", "line", "reason"),
    [
        ("ratings", ["1::1::4.0::1112486027", "1::2::3.5"], 2, "expected 4 fields"),
        ("ratings", ["1::1::4.0::1112486027", "1::2::7::1112486027"], 2, "half stars"),
        ("ratings", ["1::1::4.0::1112486027", "1::1::3.0::1112486028"], 2, "twice"),
        ("ratings", ["1::1::4.0::1112486027", "1::1\x1f::3.0::1112486028"], 2, "0x1f"),
        ("movies", ["1::Toy Story (1995)::Comedy", "1::Again (1995)::Comedy"], 2, "repeats"),
        ("tags", ["1::1::pixar::1112486027", "1::1::no time"], 2, "expected 4 fields"),
        ("tags", ["1::1::pixar::1112486027", "1::1::x::soon"], 2, "is not an integer"),
    ],
)
def test_dat_errors_name_the_file_and_line(
    tmp_path: Path, name: str, lines: list[str], line: int, reason: str
) -> None:
    data = write_dat(tmp_path / "d", **{name: lines})
    with pytest.raises(DataError, match=rf"{name}\.dat, line {line}: .*{reason}"):
        load_movielens(data, dataset="ml-10m", cache_dir=tmp_path / "c")


def test_a_file_cut_short_is_an_error(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d")
    raw = (data / "ratings.csv").read_bytes()
    (data / "ratings.csv").write_bytes(raw[:-3])  # the last timestamp lost its end
    with pytest.raises(DataError, match=r"ratings\.csv, line 11: .*cut short"):
        load_movielens(data, dataset="ml-20m", cache_dir=tmp_path / "c")


def test_folder_errors_name_the_files_to_provide(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d")
    (data / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"has no movies\.csv.*--dataset ml-20m"):
        load_movielens(data, dataset="ml-20m", cache_dir=tmp_path / "c")
    ml1m = write_synthetic_movielens(tmp_path / "ml1m", n_users=30, n_items=60)
    with pytest.raises(DataError, match=r"holds users\.dat, so it is ML-1M"):
        load_movielens(ml1m, dataset="ml-10m", cache_dir=tmp_path / "c")


def test_cli_data_error_is_one_line_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_csv(tmp_path / "d", ratings=[*RATINGS_CSV[:2], "1,1,9,1", *RATINGS_CSV[3:]])
    args = ["data", "--dataset", "ml-25m", "--data-dir", str(data), "--cache-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("recfunnel: error: ") and "ratings.csv, line 3" in err
    assert not (tmp_path / "parsed").exists()  # nothing half-written
    assert main([*args[:2], "ml-20m", *args[3:]]) == 2  # still the same error for 20M
    capsys.readouterr()
    good = write_csv(tmp_path / "ok")
    assert main(["data", "--dataset", "ml-32m", "--data-dir", str(good), "--json"]) == 0
    assert '"dataset": "ml-32m"' in capsys.readouterr().out


@pytest.mark.parametrize(("fmt", "dataset"), [("ml-10m", "ml-10m"), ("csv", "ml-20m")])
def test_synthetic_later_formats_load(tmp_path: Path, fmt: str, dataset: str) -> None:
    out = write_synthetic_movielens(tmp_path / fmt, n_users=80, n_items=120, format=fmt)
    names = {p.name for p in out.iterdir()}
    assert names == set(dataset_spec(dataset).required_files)
    ml = load_movielens(out, dataset=dataset, cache_dir=tmp_path / "c")
    assert len(ml.users) == 80 and len(ml.items) == 120
    assert set(np.unique(ml.ratings["rating"] * 2)) <= set(range(1, 11))
    assert 0.4 < (ml.ratings["rating"] >= 4).mean() < 0.6  # ML-20M's liked share ~ 0.5
    assert ml.tags is not None and 0.01 < len(ml.tags) / len(ml.ratings) < 0.04
    assert ml.tags["tag"].str.contains(",").any()  # quoted tags round-trip
    assert ml.ratings["timestamp"].min() >= 789_652_009  # the 20-year timeline
    again = write_synthetic_movielens(tmp_path / "again", n_users=80, n_items=120, format=fmt)
    for name in names:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_synthetic_tags_predict_co_rating(tmp_path: Path) -> None:
    """Planted tags follow the item factors, so two movies sharing their top tag are liked
    by the same users more often than two random movies."""
    out = write_synthetic_movielens(tmp_path / "d", n_users=400, n_items=200, format="csv")
    ml = load_movielens(out, dataset="ml-20m", cache_dir=tmp_path / "c")
    liked = ml.ratings[ml.ratings["rating"] >= 4]
    x = np.zeros((liked["user_id"].max() + 1, ml.items["item_id"].max() + 1))
    x[liked["user_id"], liked["item_id"]] = 1
    norms = np.maximum(np.linalg.norm(x, axis=0), 1e-9)
    cosine = (x.T @ x) / np.outer(norms, norms)
    top = ml.tags.groupby("item_id")["tag"].agg(lambda t: t.value_counts().index[0])
    same = [(a, b) for a in top.index for b in top.index if a < b and top[a] == top[b]]
    assert len(same) >= 20
    shared = np.mean([cosine[a, b] for a, b in same])
    assert shared > 1.3 * cosine[np.triu_indices_from(cosine, 1)].mean()


def test_a_run_remembers_its_dataset_and_its_sparse_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Train on ML-20M-format data with the sparse item x item models, then evaluate and
    recommend without --dataset: the run's manifest says which data and which models."""
    import json

    from recfunnel.run import SMOKE_OVERRIDES

    data = write_synthetic_movielens(tmp_path / "d", n_users=300, n_items=200, format="csv")
    common = ["--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    run = tmp_path / "run"
    sparse = ["--scale.item_item=sparse", "--scale.ease_items=120", "--scale.neighbours=30"]
    argv = ["train", "--dataset", "ml-20m", *common, *SMOKE_OVERRIDES, *sparse, "--out", str(run)]
    assert main(argv) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["dataset"] == "ml-20m"
    assert manifest["item_item"]["mode"] == "sparse"
    assert manifest["item_item"]["ease_items"] == 120
    assert (run / "recall" / "ease" / "weights_indptr.npy").is_file()
    assert not (run / "recall" / "ease" / "weights.npy").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run), *common]) == 0
    assert "item x item: sparse, EASE on the 120 most liked" in (run / "report.md").read_text()
    assert main(["recommend", str(run), "--user", "1", *common]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--dataset", "ml-1m", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "was trained on ml-20m, not ml-1m" in err
