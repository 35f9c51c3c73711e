"""Full-ranking top-N evaluation of any scorer, exactly as `shared/docs/protocol.md` defines it.

For every evaluated user the scorer scores the whole catalogue; the user's known history is
removed; the rest is sorted by score (ties: smaller movie id first) and the top K is compared
with the user's liked items in the evaluated part. Warm users (>= 1 train rating) and cold
users (none) are reported separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.data.schema import ITEM, LIKE_THRESHOLD, RATING, TIME, USER
from recfunnel.data.split import Split, SplitName, liked
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.evaluation import metrics
from recfunnel.types import History, Pairs

HistorySource = Literal["train", "known"]
DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100, 200)


class Scorer(Protocol):
    """Anything that scores a catalogue for a batch of users.

    `item_ids_` (n_items,) are the catalogue's movie ids, ascending, fixed at `fit` time.
    `score` gets the users' raw ids (n_users,) and their input `History` over the same
    columns, and returns float scores (n_users, n_items). Higher is better.
    """

    item_ids_: np.ndarray

    def score(self, user_ids: np.ndarray, history: History) -> np.ndarray: ...


LIST_METRICS = ("recall", "ndcg", "hit_rate", "precision")


def metric_cutoff(name: str, key: str) -> int:
    """K of a list-metric name such as "ndcg@20"; a ConfigError naming `key` otherwise."""
    metric, _, k = name.partition("@")
    if metric not in LIST_METRICS or not k.isdigit() or int(k) <= 0:
        raise ConfigError(f"{key} must look like recall@200 or ndcg@20, got {name!r}")
    return int(k)


def catalogue(ratings: pd.DataFrame) -> np.ndarray:
    """The protocol's candidate set: every movie id that appears in the ratings, ascending.

    On ML-1M: 3,706 movies. Ascending order is what makes the tie rule a stable sort.
    """
    return np.unique(ratings[ITEM].to_numpy()).astype(np.int64)


def interaction_matrix(
    ratings: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray, column: str = RATING
) -> sp.csr_matrix:
    """CSR (len(user_ids), len(item_ids)) of `column` values; rows and columns in the given order.

    Ratings of users or items outside the given ids are ignored: the caller decides the space.
    """
    rows = pd.Index(user_ids).get_indexer(ratings[USER].to_numpy())
    cols = pd.Index(item_ids).get_indexer(ratings[ITEM].to_numpy())
    keep = (rows >= 0) & (cols >= 0)
    values = ratings[column].to_numpy()[keep].astype(np.float64)
    matrix = sp.csr_matrix((values, (rows[keep], cols[keep])), shape=(len(user_ids), len(item_ids)))
    matrix.sum_duplicates()
    return matrix


def top_k(scores: np.ndarray, known: sp.csr_matrix, k: int) -> np.ndarray:
    """Positions (n_users, k) of the k best unknown candidates; -1 where none is left.

    scores (n_users, n_items) over catalogue columns in ascending movie id order; known
    (n_users, n_items) marks the items to remove. A stable sort of -score keeps equal scores in
    column order, i.e. ties go to the smaller movie id, as the protocol requires.
    """
    if np.isnan(scores).any():
        raise RecfunnelError("the scorer returned NaN scores; cannot rank them")
    masked = np.array(scores, dtype=np.float64, copy=True)
    masked[known.nonzero()] = -np.inf
    k = min(k, masked.shape[1])
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    removed = np.take_along_axis(masked, order, axis=1) == -np.inf
    order[removed] = -1
    return order


UserGroup = Literal["warm", "cold", "return"]
USER_GROUPS: tuple[str, ...] = ("warm", "cold", "return")

# The "return" group: warm users whose first rating in the evaluated part follows a pause of
# at least this many days since their last known rating. Test users mostly come back after
# months, while most valid users rate on within days of their train ratings, so valid's
# returning users look closer to the test task. Fixed at two weeks before any test number
# was looked at: longer than a rating session, short enough to keep a few hundred valid
# users (282 on ML-1M). Measured, they order the report's lists less like test does than
# all of valid (bench/holdout.py); the backtest split is the holdout that agrees best.
RETURN_GAP_DAYS = 14.0


def returning(
    part: pd.DataFrame, known: pd.DataFrame, user_ids: np.ndarray, gap_days: float = RETURN_GAP_DAYS
) -> np.ndarray:
    """(n,) bool: which of `user_ids` (all in `known`) first rate in `part` at least
    `gap_days` after their last rating in `known`."""
    last = known.groupby(USER)[TIME].max().reindex(user_ids).to_numpy(dtype=np.float64)
    first = part.groupby(USER)[TIME].min().reindex(user_ids).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):  # nan (no rating in one of them) compares False
        return (first - last) >= gap_days * 86400.0


def rated_pairs(part: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> Pairs:
    """The rated (user, movie) pairs of `part` whose user is in `user_ids` (sorted): rows
    index `user_ids`, items are catalogue positions, labels are liked (rating >= 4). The
    pairs of the pointwise metrics (AUC, GAUC, LogLoss, ECE) and of calibration."""
    rated = part[part[USER].isin(user_ids)]
    return Pairs(
        np.searchsorted(user_ids, rated[USER].to_numpy()).astype(np.int64),
        np.searchsorted(item_ids, rated[ITEM].to_numpy()).astype(np.int64),
        labels=(rated[RATING].to_numpy() >= LIKE_THRESHOLD).astype(np.float32),
    )


@dataclass(frozen=True)
class EvalUsers:
    """Everything the evaluator needs about one part, for one group of users."""

    user_ids: np.ndarray  # (n_users,) raw ids, ascending
    truth: sp.csr_matrix  # (n_users, n_items) 1 where the item is a liked item of the part
    known: sp.csr_matrix  # (n_users, n_items) items removed from the candidates
    history: History  # what the scorer may read


@dataclass
class EvalResult:
    """Metrics of one scorer on one part: `groups["warm"|"cold"][metric] = value`."""

    part: str
    split_kind: str
    history: str
    groups: dict[str, dict[str, float]] = field(default_factory=dict)


class Evaluator:
    """Full-ranking evaluator for one split.

    Parameters
    ----------
    split: the protocol's split.
    item_ids: the catalogue (see `catalogue`); scorers must be fitted on the same ids.
    ks: cut-offs for Recall / NDCG / HitRate / Precision / coverage.
    history: what the scorer may read for a user: "train" (the reference numbers) or "known"
        (train + valid at test time). The removed candidates are always the full known history.
    item_features: optional (n_items, d) rows used for ILD@K (genre multi-hot in the protocol).
    ild_ks: cut-offs at which ILD is reported when item_features is given.
    """

    def __init__(
        self,
        split: Split,
        item_ids: np.ndarray,
        *,
        ks: Sequence[int] = DEFAULT_KS,
        history: HistorySource = "train",
        item_features: np.ndarray | None = None,
        ild_ks: Sequence[int] = (10, 20),
    ) -> None:
        if history not in ("train", "known"):
            raise ConfigError(f"history must be 'train' or 'known', got {history!r}")
        if not ks or min(ks) <= 0:
            raise ConfigError(f"cut-offs must be positive integers, got {list(ks)}")
        self.split = split
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        if np.any(np.diff(self.item_ids) <= 0):
            raise ConfigError("the catalogue must be sorted ascending with unique ids")
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        self.history = history
        self.item_features = item_features
        self.ild_ks = (
            tuple(k for k in ild_ks if k <= max(self.ks)) if item_features is not None else ()
        )
        self._cache: dict[tuple[str, str], EvalUsers] = {}

    def users(self, part: SplitName, group: UserGroup) -> EvalUsers:
        """The evaluated users of a part: those with >= 1 liked rating in it, warm or cold.
        "return" keeps the warm users who come back after a pause: their first rating in
        the part is at least RETURN_GAP_DAYS after their last known one (see the constant)."""
        key = (part, group)
        if key not in self._cache:
            self._cache[key] = self._build_users(part, group)
        return self._cache[key]

    def _build_users(self, part: SplitName, group: str) -> EvalUsers:
        if part not in ("valid", "test"):
            raise ConfigError(f"evaluate on 'valid' or 'test', not {part!r}")
        if group not in USER_GROUPS:
            raise ConfigError(f"unknown user group {group!r}; choose one of {USER_GROUPS}")
        target = liked(self.split.part(part))
        train_users = np.unique(self.split.train[USER].to_numpy())
        candidates = np.unique(target[USER].to_numpy())
        is_warm = np.isin(candidates, train_users)
        user_ids = candidates[~is_warm] if group == "cold" else candidates[is_warm]
        known_ratings = self.split.known_history(part)
        if group == "return":
            user_ids = user_ids[returning(self.split.part(part), known_ratings, user_ids)]
        input_ratings = self.split.train if self.history == "train" else known_ratings
        truth = interaction_matrix(target, user_ids, self.item_ids)
        truth.data[:] = 1.0
        return EvalUsers(
            user_ids=user_ids,
            truth=truth,
            known=interaction_matrix(known_ratings, user_ids, self.item_ids),
            history=History(
                ratings=interaction_matrix(input_ratings, user_ids, self.item_ids),
                timestamps=interaction_matrix(input_ratings, user_ids, self.item_ids, TIME),
            ),
        )

    def rank(self, scorer: Scorer, users: EvalUsers, k: int, batch_size: int = 1024) -> np.ndarray:
        """Top-k catalogue positions (n_users, k) of the scorer for the given users."""
        if not np.array_equal(np.asarray(scorer.item_ids_), self.item_ids):
            raise ConfigError(
                "the scorer was fitted on another catalogue than the evaluator's; fit it on "
                "recfunnel.evaluation.protocol.catalogue(ratings)"
            )
        out = np.empty((len(users.user_ids), min(k, len(self.item_ids))), dtype=np.int64)
        for start in range(0, len(users.user_ids), batch_size):
            rows = slice(start, start + batch_size)
            scores = np.asarray(scorer.score(users.user_ids[rows], users.history[rows]))
            expected = (len(users.user_ids[rows]), len(self.item_ids))
            if scores.shape != expected:
                raise RecfunnelError(f"scorer returned shape {scores.shape}, expected {expected}")
            out[rows] = top_k(scores, users.known[rows], k)
        return out

    def evaluate(self, scorer: Scorer, part: SplitName = "test") -> EvalResult:
        """All metrics for warm and cold users of `part` ("valid" or "test")."""
        result = EvalResult(part=part, split_kind=self.split.kind, history=self.history)
        kmax = max(self.ks)
        for group in ("warm", "cold"):
            users = self.users(part, group)
            if len(users.user_ids) == 0:
                result.groups[group] = {"users": 0.0}
                continue
            topk = self.rank(scorer, users, kmax)
            result.groups[group] = self.list_metrics(topk, users)
        return result

    def list_metrics(self, topk: np.ndarray, users: EvalUsers) -> dict[str, float]:
        """Protocol metrics of given top lists (n_users, K) of catalogue positions."""
        n_relevant = np.diff(users.truth.indptr)
        hits = metrics.hit_matrix(topk, users.truth)
        row: dict[str, float] = {
            "users": float(len(users.user_ids)),
            "relevant": float(n_relevant.sum()),
        }
        for k in self.ks:
            k_eff = min(k, topk.shape[1])
            row[f"recall@{k}"] = float(metrics.recall_at_k(hits, n_relevant, k_eff).mean())
            row[f"ndcg@{k}"] = float(metrics.ndcg_at_k(hits, n_relevant, k_eff).mean())
            row[f"hit_rate@{k}"] = float(metrics.hit_rate_at_k(hits, k_eff).mean())
            row[f"precision@{k}"] = float(metrics.precision_at_k(hits, k_eff).mean())
            row[f"coverage@{k}"] = metrics.coverage(topk[:, :k_eff], len(self.item_ids))
        for k in self.ild_ks:
            row[f"ild@{k}"] = float(np.nanmean(metrics.ild_at_k(topk[:, :k], self.item_features)))
        return row
