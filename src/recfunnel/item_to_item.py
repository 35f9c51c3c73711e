"""The item-to-item score of every candidate: a component between recall and pre-rank.

    score(u, i) = sum over the items h that u liked of W[h, i]

with W the EASE weights (Steck, 2019) fitted on liked train ratings. It is cheap to compute
for a few hundred candidates (only the liked x candidate block of W is read) and it is a
strong signal that the two-tower logit does not carry, so pre-rank and rank read it. It is
another stacked score: the training recipe fits it on the early part of train, like the
recall channels, so the later stages' examples see it out of sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from recfunnel.config import param
from recfunnel.errors import ConfigError
from recfunnel.evaluation.baselines import ease_weights
from recfunnel.features import liked_pair_scores
from recfunnel.kernel import Kernel, WeightsKernel
from recfunnel.scale import load_weights_matrix, save_weights
from recfunnel.stage import FitData, Scorer, Stacked, Validate
from recfunnel.types import Pairs, Requests, pair_values


@dataclass(frozen=True)
class ItemToItemConfig:
    """The item-to-item (EASE) score."""

    lam: float = param(1000.0, "EASE L2 regularisation")

    def validate(self) -> None:
        if not self.lam > 0:
            raise ConfigError(f"item_to_item.lam must be > 0, got {self.lam}")


class ItemToItem(Scorer):
    """Adds scores["item_to_item"] to every candidate; keeps the list as it is."""

    name = "item_to_item"
    config_class = ItemToItemConfig
    fitted_attribute = "weights_"

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> ItemToItem:
        """W (n_items, n_items) float32 from the liked ratings of data.split.train."""
        self.config.validate()
        self.weights_ = ease_weights(data.split.train, data.item_ids, self.config.lam, data.scale)
        self._fitted()
        return self

    def score_pairs(self, requests: Requests, pairs: Pairs) -> Pairs:
        self.check_fitted()
        values = pair_values(requests, pairs, partial(liked_pair_scores, self.weights_))
        return pairs.with_scores(self.name, values.astype(np.float32))

    def serving_kernel(self) -> Kernel:
        """The one-request fast path: the liked rows of W summed once per request."""
        self.check_fitted()
        if not isinstance(self.weights_, np.ndarray):  # sparse (a large catalogue): batch call
            return super().serving_kernel()
        return WeightsKernel(self.name, self.weights_)

    def _save(self, directory: Path) -> None:
        save_weights(directory, self.weights_)

    def _load(self, directory: Path, data: FitData) -> None:
        self.weights_ = load_weights_matrix(directory, len(data.item_ids))
