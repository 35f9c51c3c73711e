"""The content channel: movies like the ones a user liked, by their text and metadata.

Each movie becomes a TF-IDF vector over the words of its title, its genres, its decade and,
where the release has tags (ML-10M and later), its most applied tags (offline: a few lines
of scipy, no model to download); a user's profile is the sum of the
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
from recfunnel.data.schema import ITEM, TIME, USER
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
    tag_weight: float = param(
        0.0,
        "weight of the tag terms (data sets with tags, ML-10M on; 0: ignore tags). Off by "
        "default: on synthetic ML-20M-format data, weight 1 lowered the channel's valid "
        "NDCG@20 from 0.058 to 0.038 (bench/tags.py, 2 seeds)",
    )
    top_tags: int = param(10, "tags kept per movie: the ones the most users applied")

    def validate(self) -> None:
        if self.genre_weight < 0 or self.min_df < 1 or self.tag_weight < 0 or self.top_tags < 0:
            raise ConfigError("genre_weight, tag_weight, top_tags must be >= 0 and min_df >= 1")


def top_tags(tags: pd.DataFrame, before: int, k: int) -> dict[int, list[str]]:
    """item id -> its `k` tags applied by the most users before time `before` (lower-cased,
    stripped, empty tags dropped; ties by the tag text). Only tags dated before the end of
    train count: a tag written later is information from valid or test."""
    t = tags[tags[TIME] < before]
    text = t["tag"].astype(str).str.strip().str.lower()
    t = pd.DataFrame({ITEM: t[ITEM].to_numpy(), "tag": text.to_numpy(), USER: t[USER].to_numpy()})
    t = t[t["tag"] != ""].drop_duplicates()
    counts = t.groupby([ITEM, "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values([ITEM, "n", "tag"], ascending=[True, False, True])
    kept = counts.groupby(ITEM).head(k)
    return {int(i): list(g["tag"]) for i, g in kept.groupby(ITEM)}


def item_terms(
    items: pd.DataFrame,
    genre_weight: float,
    min_df: int,
    tags: dict[int, list[str]] | None = None,
    tag_weight: float = 0.0,
) -> sp.csr_matrix:
    """(n_items, n_terms) L2-normalised TF-IDF rows of `items` (title, genres, year and,
    with `tags` (item id -> tags), each tag at `tag_weight`), in the order of `items`' rows."""
    docs: list[dict[str, float]] = []
    with_tags = bool(tags) and tag_weight > 0
    ids = items[ITEM].tolist() if with_tags else [0] * len(items)
    for item, title, genres, year in zip(
        ids, items["title"], items["genres"], items["year"], strict=True
    ):
        terms: dict[str, float] = {}
        if with_tags:
            for tag in tags.get(int(item), ()):
                terms[f"t:{tag}"] = tag_weight
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
        cfg = self.config
        table = data.ml.items.set_index(ITEM).reindex(data.item_ids).reset_index()
        tags = None
        if data.ml.tags is not None and cfg.tag_weight > 0 and cfg.top_tags > 0:
            end = int(data.split.train[TIME].max()) + 1
            tags = top_tags(data.ml.tags, end, cfg.top_tags)
        self.terms_ = item_terms(table, cfg.genre_weight, cfg.min_df, tags, cfg.tag_weight)

    def catalogue_scores(self, requests: Requests) -> np.ndarray:
        profile = requests.history.liked() @ self.terms_  # (B, n_terms)
        norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1)).ravel())
        profile = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ profile
        return np.asarray((profile @ self.terms_.T).todense(), dtype=np.float64)

    def _load(self, directory: Path, data: FitData) -> None:
        self._build(data)  # a function of the data and the config alone
