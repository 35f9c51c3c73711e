"""Data: MovieLens-1M download, parsing, validation and the `MovieLens` value type."""

from recfunnel.data.dataset import MovieLens
from recfunnel.data.download import fetch_movielens
from recfunnel.data.movielens import dataset_stats, load_movielens
from recfunnel.data.schema import (
    AGE_BUCKETS,
    GENRES,
    ITEM,
    ITEM_COLUMNS,
    LIKE_THRESHOLD,
    N_OCCUPATIONS,
    RATING,
    RATING_COLUMNS,
    TIME,
    USER,
    USER_COLUMNS,
)

__all__ = [
    "AGE_BUCKETS",
    "GENRES",
    "ITEM",
    "ITEM_COLUMNS",
    "LIKE_THRESHOLD",
    "N_OCCUPATIONS",
    "RATING",
    "RATING_COLUMNS",
    "TIME",
    "USER",
    "USER_COLUMNS",
    "MovieLens",
    "dataset_stats",
    "fetch_movielens",
    "load_movielens",
]
