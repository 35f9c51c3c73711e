"""The MovieLens data sets the project loads: where each archive lives, its checksum, its files.

One `DatasetSpec` per `--dataset` name. The formats differ:

- ml-1m: `::`-separated latin-1 `ratings.dat`, `users.dat`, `movies.dat` (integer stars);
- ml-10m: `::`-separated `ratings.dat`, `movies.dat` and `tags.dat` (half stars, no users.dat);
- ml-20m, ml-25m, ml-32m: UTF-8 CSV with a header row, `ratings.csv`, `movies.csv` and
  `tags.csv` (half stars, quoted titles and tags that hold commas, no users file).

The MD5s are the values GroupLens publishes beside each archive
(`https://files.grouplens.org/datasets/movielens/<name>.zip.md5`). This machine has no
internet, so they were not read from GroupLens directly: each was found quoted in public code
that downloads and checks these archives, in agreement across several independent projects
(see each spec's `md5_source`). ML-1M's value is the one the project has always verified
downloads against. A download whose bytes do not match is refused, never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from recfunnel.errors import ConfigError

BASE_URL = "https://files.grouplens.org/datasets/movielens"
DEFAULT_DATASET = "ml-1m"

# Where the 10M / 20M / 25M values were found: one file holding all of them, whose ML-1M
# value is the one this project has verified for years, so the table is not a typo'd copy.
_PWC = "github.com/eli-osherovich/papers_with_code, datasets/movielens/dl_config.py"


@dataclass(frozen=True)
class DatasetSpec:
    """One MovieLens release: its archive, checksum and the files the loader reads."""

    name: str  # the --dataset value, also the folder name in the cache
    archive_folder: str  # the one folder inside the zip
    format: Literal["ml-1m", "ml-10m", "csv"]
    md5: str | None  # GroupLens' published MD5 of the zip; None: unknown, download refused
    md5_source: str  # where the MD5 was found (or why there is none)
    ratings: str
    movies: str
    users: str | None = None  # only ML-1M has demographics
    tags: str | None = None

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.name}.zip"

    @property
    def archive(self) -> str:
        return f"{self.name}.zip"

    @property
    def required_files(self) -> tuple[str, ...]:
        """The files a data folder must hold, in checksum order (ratings, users, movies,
        tags): ML-1M's order is the one its run manifests were hashed with."""
        names = (self.ratings, self.users, self.movies, self.tags)
        return tuple(n for n in names if n is not None)

    @property
    def half_stars(self) -> bool:
        """Ratings in steps of 0.5 (0.5..5.0) rather than whole stars 1..5."""
        return self.format != "ml-1m"


DATASETS: dict[str, DatasetSpec] = {
    "ml-1m": DatasetSpec(
        name="ml-1m",
        archive_folder="ml-1m",
        format="ml-1m",
        md5="c4d9eecfca2ab87c1945afe126590906",
        md5_source=f"{BASE_URL}/ml-1m.zip.md5 (verified by every download since the start)",
        ratings="ratings.dat",
        users="users.dat",
        movies="movies.dat",
    ),
    "ml-10m": DatasetSpec(
        name="ml-10m",
        archive_folder="ml-10M100K",  # GroupLens named the folder after 10M ratings, 100K tags
        format="ml-10m",
        md5="ce571fd55effeba0271552578f2648bd",
        md5_source=f"{BASE_URL}/ml-10m.zip.md5 as quoted in {_PWC} and other public loaders",
        ratings="ratings.dat",
        movies="movies.dat",
        tags="tags.dat",
    ),
    "ml-20m": DatasetSpec(
        name="ml-20m",
        archive_folder="ml-20m",
        format="csv",
        md5="cd245b17a1ae2cc31bb14903e1204af3",
        md5_source=f"{BASE_URL}/ml-20m.zip.md5 as quoted in {_PWC} and other public loaders",
        ratings="ratings.csv",
        movies="movies.csv",
        tags="tags.csv",
    ),
    "ml-25m": DatasetSpec(
        name="ml-25m",
        archive_folder="ml-25m",
        format="csv",
        md5="6b51fb2759a8657d3bfcbfc42b592ada",
        md5_source=f"{BASE_URL}/ml-25m.zip.md5 as quoted in {_PWC}",
        ratings="ratings.csv",
        movies="movies.csv",
        tags="tags.csv",
    ),
    "ml-32m": DatasetSpec(
        name="ml-32m",
        archive_folder="ml-32m",
        format="csv",
        md5="d472be332d4daa821edc399621853b57",
        md5_source=(
            f"{BASE_URL}/ml-32m.zip.md5 as quoted by several public loaders (pooch "
            "known_hash='md5:d472be...', download scripts citing the .md5 file)"
        ),
        ratings="ratings.csv",
        movies="movies.csv",
        tags="tags.csv",
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of `name`; ConfigError listing the choices for anything else."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}") from None
