"""The value types that flow through the funnel, and the id spaces they use.

    Requests     B users asking at a moment: ids, input history, "now"
    Candidates   B candidate lists; every stage returns a new, narrower one (never edits one)
    Pairs        n flat (request row, item) pairs: what models score and train on
    Embeddings   the recall vectors of a batch's users and of the catalogue
    History      a batch's past ratings over the catalogue's columns

Id spaces (the one thing to get right when reading this code):
- **raw ids**: MovieLens' `user_id` / `movie_id` (users.dat, movies.dat). Requests carry raw
  user ids; a recommendation names raw movie ids.
- **catalogue positions**: columns 0..n_items-1 of the protocol's catalogue (every movie with
  a rating, ascending by raw id; `evaluation.protocol.catalogue`). Candidates, Pairs and
  History all speak in positions, so ascending position = ascending movie id, which is the
  protocol's tie rule. -1 pads a short list.
- **vocabulary slots**: a model's own embedding rows (`features.Vocab`), fitted on train; slot
  0 is "unknown". Only a stage's internals convert positions to slots.

Causality is built into `Requests`: a history entry dated after the request's `now` is
dropped when the request is made, so no feature or score can read the future of a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import scipy.sparse as sp

from recfunnel.data.schema import LIKE_THRESHOLD


@dataclass(frozen=True)
class History:
    """What a scorer may read about a batch of users: their past ratings over the catalogue.

    ratings (n_users, n_items) CSR of rating values; timestamps (n_users, n_items) CSR of the
    matching unix times, same sparsity pattern, for models that read the order of events.
    """

    ratings: sp.csr_matrix
    timestamps: sp.csr_matrix

    def __len__(self) -> int:
        return self.ratings.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> History:
        return History(self.ratings[rows], self.timestamps[rows])

    def liked(self) -> sp.csr_matrix:
        """Binary float64 CSR (n_users, n_items) of the liked (rating >= 4) items."""
        out = (self.ratings >= LIKE_THRESHOLD).astype(np.float64)
        out.eliminate_zeros()
        return out

    def recency_liked(self, decay_days: float) -> sp.csr_matrix:
        """The liked items as float64 CSR (n_users, n_items), each weighted by
        `recency_weights` (a liked movie rated `decay_days` before the row's latest rating
        weighs 1/e); decay_days = 0: `liked()`, binary."""
        liked = self.liked()
        if not decay_days:
            return liked
        times = self.timestamps.tocsr()
        last = np.asarray(times.max(axis=1).todense(), dtype=np.float64).ravel()
        dated = times.multiply(liked).tocsr()  # the liked entries' timestamps
        dated.sort_indices()
        rows = np.repeat(np.arange(dated.shape[0]), np.diff(dated.indptr))
        weights = recency_weights(dated.data.astype(np.float64), last[rows], decay_days)
        return sp.csr_matrix((weights, dated.indices, dated.indptr), shape=dated.shape)

    def as_of(self, now: np.ndarray) -> History:
        """The entries of row b dated at or before now[b] (this history if none is later)."""
        now = np.asarray(now)
        times = self.timestamps.tocsr()
        if not times.nnz or times.data.max() <= now.min():  # the common case: nothing later
            return self
        rows = np.repeat(np.arange(times.shape[0]), np.diff(times.indptr))
        late = times.data > now[rows]
        if not late.any():
            return self
        keep = sp.csr_matrix(((~late).astype(np.float64), times.indices, times.indptr), times.shape)
        ratings, times = self.ratings.tocsr().multiply(keep).tocsr(), times.multiply(keep).tocsr()
        ratings.eliminate_zeros()
        times.eliminate_zeros()
        return History(ratings, times)

    @staticmethod
    def stack(parts: list[History]) -> History:
        """The rows of `parts` in order (same catalogue columns)."""
        return History(
            sp.vstack([p.ratings for p in parts]).tocsr(),
            sp.vstack([p.timestamps for p in parts]).tocsr(),
        )


def recency_weights(times: np.ndarray, last: np.ndarray, decay_days: float) -> np.ndarray:
    """exp(-(last - t) / decay_days in days) (n,) float64 of ratings dated `times` (n,) in a
    history whose latest rating is `last` (n,) or a scalar: 1 for the latest, 1/e at
    `decay_days` before it. Measured from the user's own last rating, not from "now", so a
    user back after months keeps the same weights. One expression for the batch path
    (`History.recency_liked`) and the serving kernel, so both give the same numbers."""
    return np.exp((np.asarray(times, dtype=np.float64) - last) / (86400.0 * decay_days))


@dataclass(frozen=True)
class Requests:
    """B users asking at once.

    user_ids (B,) raw ids; history: their ratings over the catalogue's columns (input, and the
    items that must not be recommended again); now (B,) unix seconds, the request moment.
    History dated after `now` is dropped on construction (see the module docstring).
    """

    user_ids: np.ndarray
    history: History
    now: np.ndarray

    def __post_init__(self) -> None:
        now = np.asarray(self.now, dtype=np.int64)
        if now.shape != (len(self.user_ids),) or len(self.history) != len(self.user_ids):
            raise ValueError("Requests: user_ids, history and now must have B rows each")
        object.__setattr__(self, "user_ids", np.asarray(self.user_ids, dtype=np.int64))
        object.__setattr__(self, "now", now)
        object.__setattr__(self, "history", self.history.as_of(now))

    def __len__(self) -> int:
        return len(self.user_ids)

    def __getitem__(self, rows: slice | np.ndarray) -> Requests:
        return Requests(self.user_ids[rows], self.history[rows], self.now[rows])

    def concat(self, other: Requests) -> Requests:
        """These requests followed by `other`'s (same catalogue columns)."""
        history = History.stack([self.history, other.history])
        return Requests(np.r_[self.user_ids, other.user_ids], history, np.r_[self.now, other.now])

    @classmethod
    def after_history(cls, user_ids: np.ndarray, history: History, floor: int) -> Requests:
        """Requests made just after each user's last known rating, and never before `floor`
        (the end of the data that item statistics were computed from): how serving and
        evaluation ask, with the whole known history visible."""
        times = history.timestamps.tocsr()
        last = np.zeros(len(user_ids), dtype=np.int64)
        rated = np.diff(times.indptr) > 0
        if rated.any():  # each row's max: one reduceat over the rows that have entries
            last[rated] = np.maximum.reduceat(times.data, times.indptr[:-1][rated])
        return cls(user_ids, history, np.maximum(last, int(floor)))


@dataclass(frozen=True)
class Embeddings:
    """Recall vectors that later stages read: users (B, d) float32, one row per request, and
    items (n_items, d) float32 over catalogue positions."""

    users: np.ndarray
    items: np.ndarray

    @staticmethod
    def stack(parts: list[Embeddings]) -> Embeddings:
        return Embeddings(np.vstack([p.users for p in parts]), parts[0].items)


def _frozen(mapping: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """A read-only view of `mapping` whose arrays are read-only too."""
    return MappingProxyType({name: _read_only(a) for name, a in mapping.items()})


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of `array` (the caller's array stays writable)."""
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        return array  # already frozen: a value handed on from an earlier stage
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class Candidates:
    """Candidate lists of B users, best first. Immutable: a stage returns a new value.

    items (B, N) catalogue positions, -1 padding a short list. scores[name] (B, N) float, the
    score stage `name` gave each item (NaN on padding). channels[name] (B, N) int, the 1-based
    rank at which recall channel `name` proposed the item, 0 if it did not. embeddings: the
    recall vectors of the B users and the catalogue, for stages that read them. The column
    order is the current ranking.
    """

    items: np.ndarray
    scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    channels: Mapping[str, np.ndarray] = field(default_factory=dict)
    embeddings: Embeddings | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _read_only(self.items))
        object.__setattr__(self, "scores", _frozen(self.scores))
        object.__setattr__(self, "channels", _frozen(self.channels))

    @classmethod
    def empty(cls, n: int) -> Candidates:
        """B = n empty lists: the input of the recall stage."""
        return cls(np.full((n, 0), -1, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def valid(self) -> np.ndarray:
        """(B, N) bool: real candidates rather than padding."""
        return self.items >= 0

    def pairs(self) -> Pairs:
        """The real candidates as flat pairs, row-major, with their scores and embeddings."""
        valid = self.valid
        rows, cols = np.nonzero(valid)
        return Pairs(
            rows.astype(np.int64),
            self.items[rows, cols],
            {name: s[valid] for name, s in self.scores.items()},
            embeddings=self.embeddings,
        )

    def unflatten(self, values: np.ndarray) -> np.ndarray:
        """(n,) values in `pairs()` order -> (B, N) float64 with NaN on padding."""
        out = np.full(self.items.shape, np.nan)
        out[self.valid] = values
        return out

    def with_scores(self, name: str, values: np.ndarray) -> Candidates:
        """A copy with scores[name] = values, given (B, N) or (n,) in `pairs()` order."""
        values = np.asarray(values)
        if values.shape != self.items.shape:
            values = self.unflatten(values)
        return Candidates(self.items, {**self.scores, name: values}, self.channels, self.embeddings)

    def reorder(self, order: np.ndarray) -> Candidates:
        """Keep columns `order` (B, M) of each row, in that order; -1 in `order` pads."""
        pad = order < 0
        padded = bool(pad.any())
        index = (np.arange(len(order))[:, None], np.where(pad, 0, order) if padded else order)

        def take(a: np.ndarray, fill: float) -> np.ndarray:
            picked = a[index]  # one fancy index, reused for every array
            return np.where(pad, fill, picked) if padded else picked

        return Candidates(
            take(self.items, -1),
            {name: take(s, np.nan) for name, s in self.scores.items()},
            {name: take(r, 0) for name, r in self.channels.items()},
            self.embeddings,
        )

    def top(self, stage: str, k: int) -> Candidates:
        """The k best of each row by `stage`'s score (ties: the earlier column first)."""
        return self.top_by(self.scores[stage], k)

    def top_by(self, key: np.ndarray, k: int) -> Candidates:
        """The k best of each row by `key` (B, N), e.g. a blend of scores (ties: the earlier
        column first; padding last whatever its key)."""
        score = np.where(self.valid, key, -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]
        order = np.where(np.take_along_axis(self.valid, order, axis=1), order, -1)
        return self.reorder(order)

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        """The rows of `parts` stacked in order (all of one width, with the same scores)."""
        first = parts[0]
        embeddings = None
        if first.embeddings is not None:
            embeddings = Embeddings.stack([p.embeddings for p in parts])  # type: ignore[misc]
        return Candidates(
            np.concatenate([p.items for p in parts]),
            {n: np.concatenate([p.scores[n] for p in parts]) for n in first.scores},
            {n: np.concatenate([p.channels[n] for p in parts]) for n in first.channels},
            embeddings,
        )


@dataclass(frozen=True)
class Pairs:
    """n (request row, item) pairs and what earlier stages know of them.

    rows (n,) int64 rows of the Requests they belong to; items (n,) int64 catalogue
    positions; scores[name] (n,) each earlier stage's score; embeddings: the requests' and
    catalogue's recall vectors. Labelled pairs (training examples) also carry labels (n,)
    float32 (1 = liked), rated (n,) bool (the user rated the item at all) and candidate (n,)
    bool (recall proposed it).
    """

    rows: np.ndarray
    items: np.ndarray
    scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    embeddings: Embeddings | None = None
    labels: np.ndarray | None = None
    rated: np.ndarray | None = None
    candidate: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", _frozen(self.scores))

    def __len__(self) -> int:
        return len(self.rows)

    def with_scores(self, name: str, values: np.ndarray) -> Pairs:
        return self._replace(scores={**self.scores, name: np.asarray(values)})

    def with_embeddings(self, embeddings: Embeddings | None) -> Pairs:
        return self._replace(embeddings=embeddings)

    def subset(self, keep: np.ndarray) -> Pairs:
        """The pairs selected by `keep` (bool or index array); same requests."""
        return Pairs(
            self.rows[keep],
            self.items[keep],
            {name: s[keep] for name, s in self.scores.items()},
            self.embeddings,
            *(None if a is None else a[keep] for a in (self.labels, self.rated, self.candidate)),
        )

    def concat(self, other: Pairs) -> Pairs:
        """These pairs followed by `other`'s (rows already in one request numbering), with
        the scores both carry; the embeddings stay this value's (set the stacked ones with
        `with_embeddings`)."""

        def cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else np.concatenate([a, b])

        return Pairs(
            np.concatenate([self.rows, other.rows]),
            np.concatenate([self.items, other.items]),
            {
                n: np.concatenate([s, other.scores[n]])
                for n, s in self.scores.items()
                if n in other.scores
            },
            self.embeddings,
            cat(self.labels, other.labels),
            cat(self.rated, other.rated),
            cat(self.candidate, other.candidate),
        )

    def _replace(self, **changes: object) -> Pairs:
        fields = {
            "rows": self.rows,
            "items": self.items,
            "scores": self.scores,
            "embeddings": self.embeddings,
            "labels": self.labels,
            "rated": self.rated,
            "candidate": self.candidate,
        }
        return Pairs(**{**fields, **changes})  # type: ignore[arg-type]


def channel_features(pairs: Pairs) -> tuple[str, ...]:
    """The recall channel features the pairs carry (scores named "recall.<channel>..."), in
    their order: what a later stage reads beside the recall score."""
    return tuple(name for name in pairs.scores if name.startswith("recall."))


# Dense per-request work (a (B, n_items) float64 score matrix and the temporaries of its top-k)
# is done for at most this many bytes' worth of requests at a time: on ML-20M's 26k movies
# 30,000 replayed requests would otherwise need ~6 GB per matrix, several at once.
BLOCK_BYTES = 1 << 30


def request_blocks(n_requests: int, n_items: int, bytes_per_cell: int = 32) -> list[slice]:
    """Consecutive row blocks covering `n_requests`, each small enough that a (rows, n_items)
    matrix of `bytes_per_cell` bytes a cell (about four float64 copies) fits BLOCK_BYTES.
    ML-1M's 3,706 movies give blocks of 9,054 requests: one block, as without blocking."""
    rows = max(1, BLOCK_BYTES // (bytes_per_cell * max(n_items, 1)))
    return [slice(s, min(s + rows, n_requests)) for s in range(0, n_requests, rows)] or [
        slice(0, 0)
    ]


def pair_values(
    requests: Requests,
    pairs: Pairs,
    values: Callable[[Requests, np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """values(block_requests, rows, items) (n,) float64 for every pair, called once per block
    of requests (`request_blocks`) with the pairs of that block, rows renumbered from 0."""
    blocks = request_blocks(len(requests), requests.history.ratings.shape[1])
    if len(blocks) == 1:
        return values(requests, pairs.rows, pairs.items)
    out = np.full(len(pairs.rows), np.nan)
    for block in blocks:
        sel = np.flatnonzero((pairs.rows >= block.start) & (pairs.rows < block.stop))
        if len(sel):
            out[sel] = values(requests[block], pairs.rows[sel] - block.start, pairs.items[sel])
    return out
