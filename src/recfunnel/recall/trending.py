"""The trending channel: what was liked most over the last days, for everyone.

score(u, i) = movie i's share of the likes given in the `window_days` days before the serving
moment (the end of the data it is fitted or refreshed on), the same for every user; the
user's own movies are removed as in every channel. It is the "what is hot" row of a product
page, and it carries a signal the personalised channels lack: a test user returns months
later, when other movies are popular.

A share, not a count, because the later stages read the score: they learn from it as of the
end of the early part of train and are served it as of the end of train, when the number of
likes per window differs (with raw counts, the candidates' mean score on ML-1M was 1.8 times
higher at serving than in training, 1.1 training standard deviations off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.artifacts import load_array
from recfunnel.config import param
from recfunnel.data.schema import ITEM, TIME
from recfunnel.data.split import liked
from recfunnel.errors import ConfigError
from recfunnel.features import DAY
from recfunnel.recall.channel import CatalogueChannel
from recfunnel.stage import FitData, Stacked, Validate
from recfunnel.types import Requests


@dataclass(frozen=True)
class TrendingConfig:
    """Recent popularity as a recall channel."""

    window_days: int = param(14, "the window of likes counted, in days before the end")

    def validate(self) -> None:
        if self.window_days <= 0:
            raise ConfigError(f"window_days must be > 0, got {self.window_days}")


class TrendingChannel(CatalogueChannel):
    """The most liked movies of the last `window_days` days."""

    name = "trending"
    config_class = TrendingConfig
    fitted_attribute = "shares_"

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> TrendingChannel:
        self.config.validate()
        self.item_ids_ = np.asarray(data.item_ids, dtype=np.int64)
        self.refresh(data.split.train)
        self._fitted()
        return self

    def refresh(self, train: pd.DataFrame) -> None:
        """Each movie's share of the likes of the window that ends with `train`."""
        likes = liked(train)
        start = likes[TIME].max() - self.config.window_days * DAY
        recent = likes.loc[likes[TIME] > start, ITEM].to_numpy()
        columns = np.searchsorted(self.item_ids_, recent)
        known = (columns < len(self.item_ids_)) & (
            self.item_ids_[np.minimum(columns, len(self.item_ids_) - 1)] == recent
        )
        counts = np.bincount(columns[known], minlength=len(self.item_ids_)).astype(np.float64)
        self.shares_ = counts / max(counts.sum(), 1.0)

    def catalogue_scores(self, requests: Requests) -> np.ndarray:
        return np.broadcast_to(self.shares_, (len(requests), len(self.shares_))).copy()

    def _save(self, directory: Path) -> None:
        np.save(directory / "shares.npy", self.shares_)

    def _load(self, directory: Path, data: FitData) -> None:
        self.item_ids_ = np.asarray(data.item_ids, dtype=np.int64)
        self.shares_ = load_array(directory / "shares.npy", shape=(len(self.item_ids_),))
