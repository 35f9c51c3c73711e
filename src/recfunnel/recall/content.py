"""The content channel: movies like the ones a user liked, by their text and metadata.

Each movie becomes a TF-IDF vector over the words of its title, its genres and its decade
(offline: a few lines of scipy, no model to download); a user's profile is the sum of the
vectors of the movies they liked, and score(u, i) = cos(profile_u, v_i). It reads no rating
of the movie itself, so a movie nobody has rated yet is as reachable as any other: the
channel that gives new items a path (the project's offline stand-in for multimodal
embeddings; posters cannot be fetched here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.config import param
from recfunnel.data.schema import ITEM
from recfunnel.errors import ConfigError
from recfunnel.recall.channel import CatalogueChannel
from recfunnel.stage import FitData, Stacked, Validate
from recfunnel.types import Requests

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ContentConfig:
    """TF-IDF content retrieval."""

    genre_weight: float = param(2.0, "weight of the genre terms against the title words")
    min_df: int = param(2, "a title word must occur in at least this many movies")

    def validate(self) -> None:
        if self.genre_weight < 0 or self.min_df < 1:
            raise ConfigError("genre_weight must be >= 0 and min_df >= 1")


def item_terms(items: pd.DataFrame, genre_weight: float, min_df: int) -> sp.csr_matrix:
    """(n_items, n_terms) L2-normalised TF-IDF rows of `items` (title, genres, year), in
    the order of `items`' rows."""
    docs: list[dict[str, float]] = []
    for title, genres, year in zip(items["title"], items["genres"], items["year"], strict=True):
        terms: dict[str, float] = {}
        for word in _WORD.findall(str(title).lower()):
            terms[f"w:{word}"] = terms.get(f"w:{word}", 0.0) + 1.0
        for genre in str(genres).split("|"):
            terms[f"g:{genre}"] = genre_weight
        if not pd.isna(year):
            terms[f"d:{int(year) // 10}"] = 1.0
        docs.append(terms)
    df: dict[str, int] = {}
    for terms in docs:
        for term in terms:
            df[term] = df.get(term, 0) + 1
    vocab = {t: j for j, t in enumerate(sorted(t for t, n in df.items() if n >= min_df))}
    rows, cols, vals = [], [], []
    n = len(docs)
    for i, terms in enumerate(docs):
        for term, tf in terms.items():
            if term in vocab:
                rows.append(i)
                cols.append(vocab[term])
                vals.append((1.0 + np.log(tf)) * np.log((1 + n) / (1 + df[term])) + 1.0)
    x = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(vocab)), dtype=np.float64)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x


class ContentChannel(CatalogueChannel):
    """Movies close, by TF-IDF cosine, to the sum of the user's liked movies."""

    name = "content"
    config_class = ContentConfig
    fitted_attribute = "terms_"

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> ContentChannel:
        """The catalogue's term vectors; nothing is learned from ratings."""
        self.config.validate()
        self._build(data)
        self._fitted()
        return self

    def _build(self, data: FitData) -> None:
        table = data.ml.items.set_index(ITEM).reindex(data.item_ids).reset_index()
        self.terms_ = item_terms(table, self.config.genre_weight, self.config.min_df)

    def catalogue_scores(self, requests: Requests) -> np.ndarray:
        profile = requests.history.liked() @ self.terms_  # (B, n_terms)
        norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1)).ravel())
        profile = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ profile
        return np.asarray((profile @ self.terms_.T).todense(), dtype=np.float64)

    def _load(self, directory: Path, data: FitData) -> None:
        self._build(data)  # a function of the data and the config alone
