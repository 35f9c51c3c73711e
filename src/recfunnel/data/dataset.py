"""The value type every later module reads: the three MovieLens tables plus where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.data.schema import GENRES, ITEM


@dataclass(frozen=True)
class MovieLens:
    """Parsed, validated MovieLens data (column names as in `recfunnel.data.schema`).

    `checksum` is a hex SHA-256 over the source files (ratings, users, movies, in that order
    for ML-1M; ratings, movies and tags for the later releases; each hashed on its own with
    its name and size); run directories record it so a model is never scored against other
    data. `dataset` is the release's name (`data.datasets`); `tags` is None for a release
    (or a folder) without a tags file.
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    checksum: str
    source: Path
    dataset: str = "ml-1m"
    tags: pd.DataFrame | None = None

    @property
    def has_demographics(self) -> bool:
        """Whether the users table carries gender, age, occupation and zip (ML-1M only)."""
        return bool(self.users["gender"].notna().any()) if len(self.users) else False

    def genre_matrix(self, item_ids: np.ndarray) -> np.ndarray:
        """Genre multi-hot vectors, shape (len(item_ids), 18), float64, rows in `item_ids` order.

        Raises KeyError naming the first id that is not in movies.dat.
        """
        lookup = self.items.set_index(ITEM)["genres"]
        missing = np.setdiff1d(item_ids, lookup.index.to_numpy())
        if missing.size:
            raise KeyError(f"item ids not in movies.dat, e.g. {missing[:5].tolist()}")
        return genre_multi_hot(lookup.loc[item_ids].to_numpy())


def genre_multi_hot(genres: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """(n,) "|"-joined genre strings (missing or empty: no genre) -> (n, 18) multi-hot rows,
    columns in GENRES order."""
    column = {g: j for j, g in enumerate(GENRES)}
    out = np.zeros((len(genres), len(GENRES)), dtype=dtype)
    for row, text in enumerate(genres):
        if isinstance(text, str) and text:
            out[row, [column[g] for g in text.split("|")]] = 1.0
    return out
