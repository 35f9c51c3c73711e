"""Id vocabularies and side features, fitted on train only.

Every learned stage reads users and items through a `FeatureSpace`: raw MovieLens ids become
contiguous indices (0 = unknown, so an item or user first seen after the train cut maps to a
zero embedding instead of borrowing another's), and demographics, genres and release years
become small categorical indices. Only train ratings decide which ids get a slot; the users
and movies tables are static metadata and may describe anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.artifacts import load_array
from recfunnel.data.dataset import MovieLens, genre_multi_hot
from recfunnel.data.schema import AGE_BUCKETS, ITEM, N_OCCUPATIONS, TIME, USER
from recfunnel.data.split import liked
from recfunnel.errors import ConfigError
from recfunnel.types import Requests

# Release years are bucketed in 5-year bins from 1920 (older films share the first bin).
YEAR_MIN, YEAR_STEP, N_YEAR_BUCKETS = 1920, 5, 17


@dataclass(frozen=True)
class Vocab:
    """Sorted raw ids; `index(raw)` maps them to 1..n and anything else to 0 (unknown)."""

    ids: np.ndarray  # (n,) int64, ascending

    @classmethod
    def fit(cls, raw_ids: np.ndarray) -> Vocab:
        return cls(np.unique(np.asarray(raw_ids, dtype=np.int64)))

    def __len__(self) -> int:
        """Number of slots, the unknown slot 0 included."""
        return len(self.ids) + 1

    def index(self, raw_ids: np.ndarray) -> np.ndarray:
        """(n,) int64 indices in 0..len-1."""
        raw = np.asarray(raw_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, raw)
        found = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == raw)
        return np.where(found, pos + 1, 0).astype(np.int64)


@dataclass(frozen=True)
class FeatureSpace:
    """Vocabularies plus per-user and per-item categorical features.

    User features (indices, 0 = unknown): gender (1..2), age bucket (1..7), occupation (1..21),
    first zip digit (1..10). Item features: genre multi-hot (18 floats), release-year bucket.
    """

    users: Vocab
    items: Vocab
    user_table: pd.DataFrame  # indexed by raw user id: gender, age, occupation, zip
    item_table: pd.DataFrame  # indexed by raw item id: genres, year

    @classmethod
    def fit(cls, ml: MovieLens, train: pd.DataFrame) -> FeatureSpace:
        """Vocabularies from the train ratings; side features from the static tables."""
        return cls(
            users=Vocab.fit(train[USER].to_numpy()),
            items=Vocab.fit(train[ITEM].to_numpy()),
            user_table=ml.users.set_index(USER),
            item_table=ml.items.set_index(ITEM),
        )

    def user_features(self, raw_user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per user: "user" (id index), "gender", "age", "occupation", "zip"; each (n,) int64.
        Users missing from users.dat get 0 (unknown) everywhere."""
        raw = np.asarray(raw_user_ids, dtype=np.int64)
        ids, table = self._user_lookup
        pos = np.clip(np.searchsorted(ids, raw), 0, max(len(ids) - 1, 0))
        found = (ids[pos] == raw) if len(ids) else np.zeros(len(raw), dtype=bool)
        out = {name: np.where(found, column[pos], 0) for name, column in table.items()}
        out["user"] = self.users.index(raw)
        return out

    def user_features_one(self, raw_user_id: int) -> dict[str, np.ndarray]:
        """`user_features` of one raw id as (1,) arrays, read through dicts built once: the
        serving fast path asks for it twice a request (two-tower and rank), where the
        array lookups cost ~10 us each. The arrays are read-only views of shared tables."""
        rows, users, columns, zeros = self._one_user_lookup
        row = rows.get(raw_user_id)
        out = {
            name: column[row : row + 1] if row is not None else zeros
            for name, column in columns.items()
        }
        out["user"] = users.get(raw_user_id, zeros)
        return out

    @cached_property
    def _one_user_lookup(
        self,
    ) -> tuple[dict[int, int], dict[int, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """users.dat id -> row of `_user_lookup`'s columns, train user id -> its (1,) vocab
        index, the columns (read-only), and the (1,) zero (unknown) of a missing id."""
        ids, table = self._user_lookup
        columns = {name: column.astype(np.int64) for name, column in table.items()}
        for column in columns.values():
            column.flags.writeable = False
        index = self.users.index(self.users.ids)
        index.flags.writeable = False
        users = {int(raw): index[i : i + 1] for i, raw in enumerate(self.users.ids.tolist())}
        zeros = np.zeros(1, dtype=np.int64)
        zeros.flags.writeable = False
        return {int(raw): i for i, raw in enumerate(ids.tolist())}, users, columns, zeros

    @cached_property
    def _user_lookup(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # Computed once for every user of users.dat: serving one user is then an array read
        # instead of a pandas reindex (which cost milliseconds per call).
        ids = np.sort(self.user_table.index.to_numpy(dtype=np.int64))
        features = self._user_features_from_table(ids)
        return ids, {name: v for name, v in features.items() if name != "user"}

    def _user_features_from_table(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        table = self.user_table.reindex(raw)
        known = table["gender"].notna().to_numpy()
        gender = np.where(table["gender"].to_numpy() == "F", 2, 1) * known
        age = pd.Index(AGE_BUCKETS).get_indexer(table["age"].fillna(-1).astype(int)) + 1
        occupation = table["occupation"].fillna(-1).astype(int).to_numpy() + 1
        first = table["zip"].astype("string").str[:1]
        zip_digit = pd.to_numeric(first, errors="coerce").fillna(-1).astype(int).to_numpy() + 1
        return {
            "user": self.users.index(raw),
            "gender": gender.astype(np.int64),
            "age": np.where(known, age, 0).astype(np.int64),
            "occupation": np.clip(occupation, 0, N_OCCUPATIONS).astype(np.int64),
            "zip": np.clip(zip_digit, 0, 10).astype(np.int64),
        }

    def item_features(self, raw_item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per item: "item" (id index, int64 (n,)), "genres" (float32 (n, 18)), "year" (int64)."""
        raw = np.asarray(raw_item_ids, dtype=np.int64)
        table = self.item_table.reindex(raw)
        genres = genre_multi_hot(table["genres"].to_numpy(), np.float32)
        year = pd.to_numeric(table["year"], errors="coerce").to_numpy(dtype=np.float64)
        bucket = np.clip((year - YEAR_MIN) // YEAR_STEP, 0, N_YEAR_BUCKETS - 1) + 1
        return {
            "item": self.items.index(raw),
            "genres": genres,
            "year": np.where(np.isnan(year), 0, bucket).astype(np.int64),
        }

    def save(self, directory: Path) -> None:
        """The vocabularies as .npy (the side tables come from the data, checked by checksum)."""
        np.save(directory / "user_vocab.npy", self.users.ids)
        np.save(directory / "item_vocab.npy", self.items.ids)

    @classmethod
    def load(cls, directory: Path, ml: MovieLens) -> FeatureSpace:
        return cls(
            users=Vocab(load_array(directory / "user_vocab.npy", shape=(None,), kind="i")),
            items=Vocab(load_array(directory / "item_vocab.npy", shape=(None,), kind="i")),
            user_table=ml.users.set_index(USER),
            item_table=ml.items.set_index(ITEM),
        )


def ordered_sequences(
    ratings: pd.DataFrame, items: Vocab
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's ratings in time order, concatenated.

    Returns (user_ids (n_users,), starts (n_users + 1,) offsets into the flat arrays,
    item_index (n,) vocab indices, rows (n,) positions of each event in `ratings`).
    Order within a user: (timestamp, item id), so it is deterministic.
    """
    order = np.lexsort(
        (ratings[ITEM].to_numpy(), ratings[TIME].to_numpy(), ratings[USER].to_numpy())
    )
    users_sorted = ratings[USER].to_numpy()[order]
    user_ids, first = np.unique(users_sorted, return_index=True)
    starts = np.append(first, len(order)).astype(np.int64)
    return user_ids, starts, items.index(ratings[ITEM].to_numpy()[order]), order


DAY = 86_400
N_SHARE_BUCKETS = 32  # half-log2 buckets of a share in [2^-16, 1]; 0 = none


def share_bucket(share: np.ndarray) -> np.ndarray:
    """(n,) shares in [0, 1] -> (n,) int64 buckets: 0 for 0, else 1 + floor(2 log2(share
    * 2^16)) clipped to 1..31. Half-log2 steps resolve the long tail and the head alike."""
    share = np.asarray(share, dtype=np.float64)
    scaled = np.floor(2 * np.log2(np.maximum(share, 1e-300) * 2.0**16)).astype(np.int64) + 1
    return np.where(share > 0, np.clip(scaled, 1, N_SHARE_BUCKETS - 1), 0)


class ItemPopularity:
    """Causal item popularity: an item's share of the liked ratings before a given day.

    Built from train ratings only, at the granularity of whole (UTC) days: for each (item, t)
    it counts the likes on the `window_days` days before t's day ("recent") and on all days
    before it ("total"), and divides by the same counts over all items. Shares rather than
    counts, because ML-1M's activity swings tenfold over its timeline: a count learnt in the
    busy summer of 2000 would mean something else in December. A like never counts on its own
    day, so a training example never sees its own or later likes; when serving, t is the day
    after the last train day, so no valid or test rating ever feeds the feature. Whole days
    make every lookup a table read, which keeps training fast.
    """

    def __init__(self, liked_train: pd.DataFrame, items: Vocab, window_days: int) -> None:
        item = items.index(liked_train[ITEM].to_numpy())
        day = liked_train[TIME].to_numpy().astype(np.int64) // DAY
        self.day0 = int(day.min())
        n_days = int(day.max()) - self.day0 + 1
        # The tables are (n_items, n_days + 1): 0.03 G cells for ML-1M, 0.2 G for ML-20M
        # (27k items x 20 years). Counts are int32 (fewer than 2^31 likes) and buckets int8
        # (0..31), built in place and in column blocks, so ML-20M's tables take ~2 GB
        # instead of ~10 GB of int64 and float64 temporaries; lookups return int64, and
        # every value is the one the int64 / float64 computation gives.
        per_day = np.bincount(
            item * n_days + (day - self.day0), minlength=len(items) * n_days
        ).astype(np.int32)
        per_day = per_day.reshape(len(items), n_days)
        # before[i, d]: likes of item i on days < d, for d = 0 .. n_days (n_days = "after train").
        before = np.zeros((len(items), n_days + 1), dtype=np.int32)
        np.cumsum(per_day, axis=1, out=before[:, 1:])
        del per_day
        # recent[i, d] = before[i, d] - before[i, d - window_days] (0 before the window).
        recent = before.copy()
        if window_days <= n_days:
            recent[:, window_days:] -= before[:, : n_days + 1 - window_days]
        self.recent_counts, self.total_counts = recent, before
        self.recent_bucket = _share_buckets(recent)
        self.total_bucket = _share_buckets(before)
        self.n_days = n_days
        self.end = (self.day0 + n_days) * DAY  # "now" when serving: the day after train

    def _day(self, times: np.ndarray) -> np.ndarray:
        day = np.asarray(times, dtype=np.int64) // DAY - self.day0
        return np.clip(day, 0, self.n_days)

    def counts(self, items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """items (n,) vocab indices, times (n,) unix seconds -> (recent, total) like counts."""
        day = self._day(times)
        recent, total = self.recent_counts[items, day], self.total_counts[items, day]
        return recent.astype(np.int64), total.astype(np.int64)

    def buckets(self, items: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(recent, total) share buckets (n,) int64 of the items at the given times."""
        day = self._day(times)
        recent, total = self.recent_bucket[items, day], self.total_bucket[items, day]
        return recent.astype(np.int64), total.astype(np.int64)


def _share_buckets(counts: np.ndarray, block_bytes: int = 64 << 20) -> np.ndarray:
    """share_bucket(counts / column sums) as int8, (n, m) like `counts`, computed over blocks
    of columns so the float64 shares never exist for the whole table at once."""
    out = np.empty(counts.shape, dtype=np.int8)
    totals = np.maximum(counts.sum(axis=0), 1)
    step = max(1, block_bytes // (8 * max(counts.shape[0], 1)))
    for start in range(0, counts.shape[1], step):
        block = slice(start, start + step)
        out[:, block] = share_bucket(counts[:, block] / totals[block])
    return out


def gather_ranges(values: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenation of values[begin[i]:end[i]] over i, without a Python loop; (sum len,)."""
    lengths = end - begin
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    starts = np.cumsum(lengths) - lengths
    index = np.arange(total) - np.repeat(starts - begin, lengths)
    return values[index]


def serving_time(train: pd.DataFrame) -> int:
    """The serving moment of models fitted on `train`: the start of the day after its last
    liked rating (unix seconds), where every causal item table ends (`ItemPopularity.end`)."""
    day = liked(train)[TIME].to_numpy().astype(np.int64) // DAY
    return int((day.max() + 1) * DAY)


def item_to_item_scores(weights: np.ndarray, liked: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """sum over each request's liked items h of weights[h, i], for the pairs' items.

    weights (n_items, n_items), dense or CSR; liked (B, n_items) the requests' liked
    history; items (n,) catalogue positions of pairs whose rows are given by the caller.
    Returns (scores (B, m) float64 over the m distinct items, inverse (n,) column of each
    pair's item). Only the (liked item, pair item) block of the weights is read: for one
    request's 200 candidates that is ~100 x 200 numbers instead of a pass over the whole
    matrix; the history is cast to the weights' dtype, since scipy would otherwise upcast
    the whole matrix on every call.
    """
    liked = liked.astype(weights.dtype)
    columns, inverse = np.unique(items, return_inverse=True)
    if sp.issparse(weights):  # the sparse item x item model of large catalogues (scale.py)
        # A sparse product, densified only at (B, m): the (history x columns) block of a
        # 26k-item model can itself be a few GB when a batch's histories cover the catalogue.
        product = liked @ weights[:, columns]
        return np.asarray(product.toarray(), dtype=np.float64), inverse
    liked = liked.tocsc()
    history = np.flatnonzero(np.diff(liked.indptr))  # items some request liked
    block = weights[np.ix_(history, columns)]
    return np.asarray(liked[:, history] @ block, dtype=np.float64), inverse


def check_decay_days(decay_days: float, key: str = "decay_days") -> None:
    """A ConfigError naming `key` unless `decay_days` (`History.recency_liked`) is a finite
    number of days >= 0."""
    if not (decay_days >= 0 and np.isfinite(decay_days)):
        raise ConfigError(f"{key} must be a finite number of days >= 0, got {decay_days}")


def liked_pair_scores(
    weights: np.ndarray,
    requests: Requests,
    rows: np.ndarray,
    items: np.ndarray,
    decay_days: float = 0.0,
) -> np.ndarray:
    """The item-to-item score (n,) float64 of pairs (rows (n,) into `requests`, items (n,)):
    the sum over the request's liked items h of weights[h, item], each weighted by its
    recency (`History.recency_liked`; decay_days = 0: 1 each)."""
    liked = requests.history.recency_liked(decay_days)
    scores, inverse = item_to_item_scores(weights, liked, items)
    return scores[rows, inverse]
