"""The item-to-item score of every candidate: a component between recall and pre-rank.

    score(u, i) = sum over the items h that u liked of W[h, i]

with W the EASE weights (Steck, 2019) fitted on liked train ratings. It is cheap to compute
for a few hundred candidates (only the liked x candidate block of W is read) and it is a
strong signal that the two-tower logit does not carry, so pre-rank and rank read it. It is
another stacked score: the training recipe fits it on the early part of train, like the
recall channels, so the later stages' examples see it out of sample.

With `rating_dim` set it adds a second pair score, scores["item_to_item.rating"]: the stars
the user would give, from a factorisation of every train rating whose user side is folded
in from the request's history (`rating_model`). The rank model's like head reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.artifacts import RunFileError
from recfunnel.config import param
from recfunnel.errors import ConfigError
from recfunnel.evaluation.baselines import ease_weights
from recfunnel.features import check_decay_days, liked_pair_scores
from recfunnel.kernel import Kernel, Row, UserRequest, WeightsKernel
from recfunnel.rating_model import RatingModel, fit_ratings
from recfunnel.scale import load_weights_matrix, save_weights
from recfunnel.stage import FitData, Scorer, Stacked, Validate
from recfunnel.types import Candidates, Pairs, Requests, pair_values

RATING_SCORE = "item_to_item.rating"  # the predicted stars' name in Candidates.scores


@dataclass(frozen=True)
class ItemToItemConfig:
    """The item-to-item (EASE) score."""

    lam: float = param(1000.0, "EASE L2 regularisation")
    decay_days: float = param(
        0.0,
        "recency of the user's liked movies, as recall.ease.decay_days (0: 1 each)",
        saved_without=0.0,  # runs saved before the field summed their liked rows, 1 each
    )
    neighbours: int = param(
        0,
        "largest EASE weights kept per item row, the rest set to 0 (0: all), as "
        "recall.ease.neighbours",
        saved_without=0,  # runs saved before the field kept every weight
    )
    rating_dim: int | None = param(
        16,
        "factors of the star-rating model whose prediction is the second pair score (none: "
        "no rating score). 16 and rating_lam 20 were chosen on valid's rated pairs (AUC)",
        saved_without=None,  # runs saved before the rating score had none
    )
    rating_lam: float = param(20.0, "the rating model's L2 penalty, in fitting and fold-in")
    rating_iters: int = param(8, "ALS rounds of the rating model")

    def validate(self) -> None:
        if not self.lam > 0:
            raise ConfigError(f"item_to_item.lam must be > 0, got {self.lam}")
        check_decay_days(self.decay_days, "item_to_item.decay_days")
        if self.neighbours < 0:
            raise ConfigError(f"item_to_item.neighbours must be >= 0, got {self.neighbours}")
        if self.rating_dim is not None and self.rating_dim < 1:
            raise ConfigError(
                f"item_to_item.rating_dim must be >= 1 (or none), got {self.rating_dim}"
            )
        if not self.rating_lam > 0 or self.rating_iters < 1:
            raise ConfigError("item_to_item.rating_lam must be > 0 and rating_iters >= 1")


class ItemToItem(Scorer):
    """Adds scores["item_to_item"] (and scores["item_to_item.rating"] with a rating model)
    to every candidate; keeps the list as it is."""

    name = "item_to_item"
    config_class = ItemToItemConfig
    fitted_attribute = "weights_"

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> ItemToItem:
        """W (n_items, n_items) float32 from the liked ratings of data.split.train, and the
        rating model's item side from all of its ratings."""
        cfg = self.config
        cfg.validate()
        self.weights_ = ease_weights(
            data.split.train, data.item_ids, cfg.lam, data.scale, cfg.neighbours
        )
        self.ratings_: RatingModel | None = None
        if cfg.rating_dim is not None:
            self.ratings_ = fit_ratings(
                data.split.train,
                data.item_ids,
                dim=cfg.rating_dim,
                lam=cfg.rating_lam,
                iters=cfg.rating_iters,
            )
        self.carried = (RATING_SCORE,) if self.ratings_ is not None else ()
        self._fitted()
        return self

    def score_pairs(self, requests: Requests, pairs: Pairs) -> Pairs:
        self.check_fitted()
        scores = partial(liked_pair_scores, self.weights_, decay_days=self.config.decay_days)
        values = pair_values(requests, pairs, scores)
        out = pairs.with_scores(self.name, values.astype(np.float32))
        if self.ratings_ is not None:
            stars = pair_values(requests, pairs, self.ratings_.pair_scores)
            out = out.with_scores(RATING_SCORE, stars.astype(np.float32))
        return out

    def serving_kernel(self) -> Kernel:
        """The one-request fast path: the liked rows of W summed once per request (and the
        user folded into the rating model once)."""
        self.check_fitted()
        if not isinstance(self.weights_, np.ndarray):  # sparse (a large catalogue): batch call
            return super().serving_kernel()
        weights = WeightsKernel(self.name, self.weights_, self.config.decay_days)
        return weights if self.ratings_ is None else _WithRatingKernel(weights, self.ratings_)

    def _save(self, directory: Path) -> None:
        save_weights(directory, self.weights_)
        if self.ratings_ is not None:
            np.savez(directory / "rating_model.npz", **self.ratings_.arrays())

    def _load(self, directory: Path, data: FitData) -> None:
        self.weights_ = load_weights_matrix(directory, len(data.item_ids))
        self.ratings_ = None
        if self.config.rating_dim is not None:
            self.ratings_ = load_rating_model(
                directory / "rating_model.npz", len(data.item_ids), self.config.rating_dim
            )
        self.carried = (RATING_SCORE,) if self.ratings_ is not None else ()


class _WithRatingKernel:
    """The EASE kernel, then scores[RATING_SCORE]: the request's user folded in once, the
    valid candidates' stars as float32 like the batch path."""

    def __init__(self, weights: WeightsKernel, ratings: RatingModel) -> None:
        self.weights, self.ratings = weights, ratings

    def __call__(self, request: UserRequest, candidates: Candidates, **_: Any) -> Candidates:
        return self.row(request, Row.of(candidates)).candidates()

    def row(self, request: UserRequest, row: Row, **_: Any) -> Row:
        row = self.weights.row(request, row)
        valid = row.valid
        stars = self.ratings.predict(request.items, request.ratings, row.items[valid])
        return row.with_score(RATING_SCORE, stars.astype(np.float32), valid)


def load_rating_model(path: Path, n_items: int, dim: int) -> RatingModel:
    """The rating model saved at `path`, checked against the catalogue and the config."""
    if not path.exists():
        raise RunFileError(f"{path} is missing (the config sets item_to_item.rating_dim)")
    try:
        with np.load(path) as arrays:
            model = RatingModel.of_arrays(dict(arrays))
    except (OSError, ValueError, KeyError) as error:
        raise RunFileError(f"{path}: not a rating model ({error})") from None
    if model.item_factors.shape != (n_items, dim) or model.item_bias.shape != (n_items,):
        raise RunFileError(
            f"{path}: expected item factors ({n_items}, {dim}), got {model.item_factors.shape}"
        )
    return model
