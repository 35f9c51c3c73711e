"""Inputs of the rank model, computed as of each request's moment from train ratings only.

Per request (user): demographics, the last `max_sequence` liked items (the behaviour sequence
DIN attends over), the history length, the user's like rate and genre profile. Per pair:
the item's id, genres, release-year bucket, its like shares over the last days and overall,
its age in the catalogue and its like rate, all *as of the request's "now"* (or the end of
train, whichever is earlier), plus how well its genres match the user's profile.
Popularity, age and like rate are read from tables of train ratings by day, so a slice example
replayed on 20 November sees only ratings before that day, and a test request sees train as of
its end: nothing from valid or test feeds a statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfunnel.data.dataset import MovieLens
from recfunnel.data.schema import ITEM, LIKE_THRESHOLD, TIME
from recfunnel.data.split import liked
from recfunnel.features import DAY, FeatureSpace, ItemPopularity
from recfunnel.types import Requests

N_AGE_BUCKETS = 12  # log2 buckets of an item's days in the catalogue: 0 = not yet rated
DENSE = ("recall", "prerank", "cf", "rating", "affinity", "user_like_rate", "item_like_rate")
# The dense inputs that are earlier components' scores: model name -> Candidates.scores key.
SCORE_OF = {
    "recall": "recall",
    "prerank": "prerank",
    "cf": "item_to_item",
    "rating": "item_to_item.rating",
}


@dataclass(frozen=True)
class RequestFeatures:
    """Per-request inputs, B rows: user categorical features (B,) each, sequence (B, L) vocab
    indices of the last liked items, most recent first, 0-padded; lengths (B,) full history
    lengths; like_rate (B,); profile (B, 18) mean genre vector of the liked history."""

    user: dict[str, np.ndarray]
    sequence: np.ndarray
    lengths: np.ndarray
    like_rate: np.ndarray
    profile: np.ndarray
    now: np.ndarray


class RankFeatureSpace:
    """Vocabularies and causal item statistics for the rank model, fitted on train."""

    def __init__(
        self,
        ml: MovieLens,
        train: pd.DataFrame,
        item_ids: np.ndarray,
        *,
        window_days: int = 14,
        max_sequence: int = 50,
    ) -> None:
        self.space = FeatureSpace.fit(ml, train)
        self.max_sequence = max_sequence
        train_likes = liked(train)
        self.likes = ItemPopularity(train_likes, self.space.items, window_days)
        self.ratings = ItemPopularity(train, self.space.items, window_days)
        n_vocab = len(self.space.items)
        first = train.groupby(ITEM)[TIME].min()
        self.first_seen = np.full(n_vocab, np.iinfo(np.int64).max, dtype=np.int64)
        self.first_seen[self.space.items.index(first.index.to_numpy())] = first.to_numpy()
        catalogue = self.space.item_features(item_ids)
        self.column_vocab = catalogue["item"]  # catalogue column -> vocab slot
        self.column_genres = catalogue["genres"]  # (n_items, 18) float32
        self.column_year = catalogue["year"]
        self.mean_like_rate = float(len(train_likes) / len(train))

    def requests(self, requests: Requests) -> RequestFeatures:
        """Per-request features from the requests' own history (their input, not a label)."""
        ratings = requests.history.ratings.tocsr()
        times = requests.history.timestamps.tocsr()
        n = len(requests)
        sequence = np.zeros((n, self.max_sequence), dtype=np.int64)
        profile = np.zeros((n, self.column_genres.shape[1]), dtype=np.float32)
        lengths = np.diff(ratings.indptr)
        n_liked = np.zeros(n, dtype=np.int64)
        for b in range(n):  # B is at most a few thousand; each row is a short sort
            lo, hi = ratings.indptr[b], ratings.indptr[b + 1]
            cols, vals, ts = ratings.indices[lo:hi], ratings.data[lo:hi], times.data[lo:hi]
            n_liked[b] = self._history_row(cols, vals, ts, sequence[b], profile[b])
        return self._request_features(
            requests.user_ids, sequence, lengths, n_liked, profile, requests.now
        )

    def one_request(
        self, user_id: int, cols: np.ndarray, vals: np.ndarray, ts: np.ndarray, now: int
    ) -> RequestFeatures:
        """`requests` for one request given as arrays: rated catalogue positions (h,)
        ascending, their ratings and times (the serving fast path; the same row code and
        the same like-rate expression, on Python scalars: a handful of (1,)-array ufuncs
        cost more than the arithmetic)."""
        sequence = np.zeros((1, self.max_sequence), dtype=np.int64)
        profile = np.zeros((1, self.column_genres.shape[1]), dtype=np.float32)
        n_liked = self._history_row(cols, vals, ts, sequence[0], profile[0])
        return RequestFeatures(
            user=self.space.user_features_one(int(user_id)),
            sequence=sequence,
            lengths=np.array([len(cols)], dtype=np.int64),
            like_rate=np.array([self._like_rate(n_liked, len(cols))], dtype=np.float32),
            profile=profile,
            now=np.array([now], dtype=np.int64),
        )

    def _like_rate(
        self, n_liked: np.ndarray | int, lengths: np.ndarray | int
    ) -> np.ndarray | float:
        """Smoothed towards the global like rate, so a 2-rating user is not at 0 or 1: the
        float64 (n_liked + 5 m) / (lengths + 5), for (B,) int arrays or Python ints alike
        (the same IEEE operations either way)."""
        return (n_liked + 5 * self.mean_like_rate) / (lengths + 5)

    def _history_row(
        self,
        cols: np.ndarray,
        vals: np.ndarray,
        ts: np.ndarray,
        sequence: np.ndarray,
        profile: np.ndarray,
    ) -> int:
        """Fill one request's sequence (L,) and genre profile (18,) from its ratings (cols
        ascending); returns its number of liked items."""
        like = vals >= LIKE_THRESHOLD
        cols, ts = cols[like], ts[like]
        n_liked, keep = len(cols), self.max_sequence
        if n_liked:
            profile[:] = self.column_genres[cols].mean(0)
            if n_liked > keep:
                # Only the `keep` newest are read: every one of them is at or after the
                # keep-th latest time, so sorting those (ties included) gives the same
                # first `keep` as sorting the whole history, in O(h) instead of O(h log h).
                latest = np.partition(ts, n_liked - keep)[n_liked - keep]
                recent = ts >= latest
                cols, ts = cols[recent], ts[recent]
            recent = cols[np.lexsort((cols, -ts))][:keep]  # newest first, ties by position
            sequence[: len(recent)] = self.column_vocab[recent]
        return n_liked

    def _request_features(
        self,
        user_ids: np.ndarray,
        sequence: np.ndarray,
        lengths: np.ndarray,
        n_liked: np.ndarray,
        profile: np.ndarray,
        now: np.ndarray,
        user: dict[str, np.ndarray] | None = None,
    ) -> RequestFeatures:
        """`user`: the users' `user_features` when the caller has them already."""
        like_rate = self._like_rate(n_liked, lengths)
        return RequestFeatures(
            user=self.space.user_features(user_ids) if user is None else user,
            sequence=sequence,
            lengths=lengths.astype(np.int64),
            like_rate=like_rate.astype(np.float32),
            profile=profile,
            now=np.asarray(now, dtype=np.int64),
        )

    def catalogue_at(self, now: int) -> dict[str, np.ndarray]:
        """The item features of `pairs` for every catalogue position (n_items,) at one
        moment `now` (clipped to the end of train as there): "item", "year", "recent",
        "total", "age", "item_like_rate" and "genre_norm" (n_items,) float32-able norms of
        the genre rows. Each is computed element by element, so a gather of these rows is
        what `pairs` gives for those positions (the serving fast path reads them once for
        the serving moment). The per-request "affinity" is left to the caller."""
        vocab = self.column_vocab
        at = np.full(len(vocab), min(int(now), self.likes.end), dtype=np.int64)
        return {
            "item": vocab,
            "year": self.column_year,
            **self._item_statistics(vocab, at),
            "genre_norm": np.linalg.norm(self.column_genres, axis=1),
        }

    def _item_statistics(self, vocab: np.ndarray, at: np.ndarray) -> dict[str, np.ndarray]:
        """The time-dependent item features (n,) of vocab indices `vocab` at times `at`
        (already clipped to the end of train): like-share buckets, age bucket, like rate."""
        recent, total = self.likes.buckets(vocab, at)
        _, likes = self.likes.counts(vocab, at)
        _, rated = self.ratings.counts(vocab, at)
        age_days = (at - self.first_seen[vocab]) // DAY
        seen = self.first_seen[vocab] < at
        age = np.where(seen, 1 + np.floor(np.log2(1 + np.maximum(age_days, 0))).astype(np.int64), 0)
        return {
            "recent": recent,
            "total": total,
            "age": np.clip(age, 0, N_AGE_BUCKETS - 1),
            "item_like_rate": ((likes + 10 * self.mean_like_rate) / (rated + 10)).astype(
                np.float32
            ),
        }

    def pairs(
        self, req: RequestFeatures, rows: np.ndarray, positions: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Item and cross features of pairs (n,): request rows, catalogue positions."""
        vocab = self.column_vocab[positions]
        # Statistics stop at the end of train: a request made later (a test user's) reads
        # them as of that end, where the tables stop, never extrapolated.
        now = np.minimum(req.now[rows], self.likes.end)
        genres = self.column_genres[positions]
        norm = np.linalg.norm(req.profile[rows], axis=1) * np.linalg.norm(genres, axis=1)
        affinity = (req.profile[rows] * genres).sum(1) / np.maximum(norm, 1e-9)
        return {
            "item": vocab,
            "genres": genres,
            "year": self.column_year[positions],
            **self._item_statistics(vocab, now),
            "affinity": affinity.astype(np.float32),
        }
