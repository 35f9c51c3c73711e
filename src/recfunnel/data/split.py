"""Train / valid / test splits of the ratings, exactly as `shared/docs/protocol.md` defines them.

The default is the global temporal 80/10/10 split: every model is trained on the past and
evaluated on the future, the way a deployed recommender is. A random split would let a model
see ratings made after the ones it is asked to predict (leakage), and flatter every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from recfunnel.data.schema import ITEM, LIKE_THRESHOLD, RATING, TIME, USER
from recfunnel.errors import ConfigError

SplitName = Literal["train", "valid", "test"]
SplitKind = Literal["global", "per_user", "backtest"]

# The backtest split (a holdout for choosing defaults, built from train + valid only): row
# shares of ALL ratings by time. Its "test" runs from the 45 % mark to the end of the real
# valid part (90 %), four months on ML-1M, so that, like the real test, it holds users who come
# back long after their last known rating, and it never reads a real test rating. A later
# cut would leave fewer warm users to evaluate (ML-1M: 321 warm test users, 225 valid ones).
BACKTEST_FRACS = (0.4, 0.05, 0.45)


@dataclass(frozen=True)
class Split:
    """The three parts of the ratings (columns as in `recfunnel.data.schema`, fresh 0..n index).

    `kind` records which protocol produced it so every report can name it.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    kind: SplitKind

    def part(self, name: SplitName) -> pd.DataFrame:
        """The named part; raises ConfigError for anything but train / valid / test."""
        if name not in ("train", "valid", "test"):
            raise ConfigError(f"unknown split part {name!r}; choose train, valid or test")
        return getattr(self, name)

    def known_history(self, name: SplitName) -> pd.DataFrame:
        """Ratings known when `name` is evaluated: train for valid, train + valid for test."""
        if name == "valid":
            return self.train
        if name == "test":
            return pd.concat([self.train, self.valid], ignore_index=True)
        raise ConfigError(f"known history is defined for valid and test, not {name!r}")


def _sorted_by_time(ratings: pd.DataFrame) -> pd.DataFrame:
    # (timestamp, user, item) makes the order total, so the split never depends on file order.
    return ratings.sort_values([TIME, USER, ITEM], kind="stable").reset_index(drop=True)


def global_temporal_split(
    ratings: pd.DataFrame, train_frac: float = 0.8, valid_frac: float = 0.1
) -> Split:
    """Global temporal split: first `int(train_frac * n)` rows by time are train, the rows up to
    `int((train_frac + valid_frac) * n)` valid, the rest test. On ML-1M: 800,167 / 100,021 /
    100,021 ratings."""
    _check_fracs(train_frac, valid_frac)
    ordered = _sorted_by_time(ratings)
    n = len(ordered)
    cut_train = int(train_frac * n)
    cut_valid = int((train_frac + valid_frac) * n)
    return Split(
        train=ordered.iloc[:cut_train].reset_index(drop=True),
        valid=ordered.iloc[cut_train:cut_valid].reset_index(drop=True),
        test=ordered.iloc[cut_valid:].reset_index(drop=True),
        kind="global",
    )


def per_user_temporal_split(
    ratings: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1
) -> Split:
    """Per-user temporal split: each user's ratings sorted by time; the last
    `floor(test_frac * n_u)` are test, the `floor(valid_frac * n_u)` before them valid.

    Every ML-1M user has >= 20 ratings, so each gets >= 2 valid and >= 2 test ratings. Unlike
    the global split, train of one user can be later than test of another: report the kind.
    """
    _check_fracs(1.0 - valid_frac - test_frac, valid_frac)
    ordered = _sorted_by_time(ratings)
    # Rank of each rating from the end of its user's timeline: 0 = the user's latest.
    order = ordered.sort_values([USER, TIME, ITEM], kind="stable")
    n_user = order.groupby(USER, sort=False)[USER].transform("size").to_numpy()
    from_end = n_user - 1 - order.groupby(USER, sort=False).cumcount().to_numpy()
    n_test = np.floor(test_frac * n_user).astype(np.int64)
    n_valid = np.floor(valid_frac * n_user).astype(np.int64)
    part = np.where(from_end < n_test, 2, np.where(from_end < n_test + n_valid, 1, 0))
    labels = pd.Series(part, index=order.index).reindex(ordered.index).to_numpy()
    return Split(
        train=ordered[labels == 0].reset_index(drop=True),
        valid=ordered[labels == 1].reset_index(drop=True),
        test=ordered[labels == 2].reset_index(drop=True),
        kind="per_user",
    )


def backtest_split(ratings: pd.DataFrame) -> Split:
    """A global temporal split of the protocol's train + valid alone (the real test part is
    dropped first): `BACKTEST_FRACS` of all ratings as train / valid / test. Choosing on
    its test is choosing on a time-respecting holdout (protocol.md); on ML-1M its train ends
    on 2000-08-29 and its test runs to 2000-12-29."""
    ordered = _sorted_by_time(ratings)
    n = len(ordered)
    train, valid, test = BACKTEST_FRACS
    known = ordered.iloc[: int(0.9 * n)]  # the protocol's train + valid
    cut_train, cut_valid = int(train * n), int((train + valid) * n)
    assert int((train + valid + test) * n) == len(known)
    return Split(
        train=known.iloc[:cut_train].reset_index(drop=True),
        valid=known.iloc[cut_train:cut_valid].reset_index(drop=True),
        test=known.iloc[cut_valid:].reset_index(drop=True),
        kind="backtest",
    )


def make_split(ratings: pd.DataFrame, kind: SplitKind = "global") -> Split:
    """The protocol's split by name: "global" (default), "per_user" or "backtest" (a holdout
    inside train + valid, for choosing defaults; see `backtest_split`)."""
    if kind == "global":
        return global_temporal_split(ratings)
    if kind == "per_user":
        return per_user_temporal_split(ratings)
    if kind == "backtest":
        return backtest_split(ratings)
    raise ConfigError(f"unknown split {kind!r}; choose 'global', 'per_user' or 'backtest'")


def liked(ratings: pd.DataFrame) -> pd.DataFrame:
    """The ratings labelled 1 by the protocol (rating >= 4)."""
    return ratings[ratings[RATING] >= LIKE_THRESHOLD]


def _check_fracs(train_frac: float, valid_frac: float) -> None:
    if not (0.0 < train_frac < 1.0 and valid_frac >= 0.0 and train_frac + valid_frac <= 1.0):
        raise ConfigError(
            f"split fractions must satisfy 0 < train < 1, valid >= 0 and train + valid <= 1; "
            f"got train={train_frac}, valid={valid_frac}"
        )
