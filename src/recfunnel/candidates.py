"""The two value types that flow through the funnel.

`Requests` is a batch of users asking for recommendations at some moment: who they are, what
they have rated (their input history) and when "now" is, so that every time-dependent feature
is computed as of that moment and never from the future. `Candidates` is a batch of candidate
lists: each stage takes one, scores it and hands on a shorter one (recall 200 -> pre-rank
100 -> rank -> re-rank 20), keeping every earlier stage's score and position for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recfunnel.evaluate import History


@dataclass(frozen=True)
class Requests:
    """B users asking at once.

    user_ids (B,) raw ids; history: their ratings over the catalogue's columns (input, and the
    items that must not be recommended again); now (B,) unix seconds, the request moment.
    """

    user_ids: np.ndarray
    history: History
    now: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    def __getitem__(self, rows: slice | np.ndarray) -> Requests:
        return Requests(self.user_ids[rows], self.history[rows], self.now[rows])

    def concat(self, other: Requests) -> Requests:
        """These requests followed by `other`'s (same catalogue columns)."""
        history = History(
            sp.vstack([self.history.ratings, other.history.ratings]).tocsr(),
            sp.vstack([self.history.timestamps, other.history.timestamps]).tocsr(),
        )
        return Requests(np.r_[self.user_ids, other.user_ids], history, np.r_[self.now, other.now])


@dataclass
class Candidates:
    """Candidate lists of B users, best first.

    items (B, N) catalogue positions, -1 padding a short list; scores[stage] (B, N) float, the
    score each stage gave the item (NaN on padding). The column order is the current ranking.
    """

    items: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        """(B, N) bool: real candidates rather than padding."""
        return self.items >= 0

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The real (row, catalogue position) pairs, row-major: two (n,) int64 arrays."""
        rows, cols = np.nonzero(self.valid)
        return rows.astype(np.int64), self.items[rows, cols]

    def unflatten(self, values: np.ndarray) -> np.ndarray:
        """(n,) values in `pairs()` order -> (B, N) float64 with NaN on padding."""
        out = np.full(self.items.shape, np.nan)
        out[self.valid] = values
        return out

    def reorder(self, order: np.ndarray) -> Candidates:
        """Keep columns `order` (B, M) of each row, in that order; -1 in `order` pads."""
        pad = order < 0
        safe = np.where(pad, 0, order)
        items = np.where(pad, -1, np.take_along_axis(self.items, safe, axis=1))
        scores = {
            name: np.where(pad, np.nan, np.take_along_axis(s, safe, axis=1))
            for name, s in self.scores.items()
        }
        return Candidates(items, scores)

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        """The rows of `parts` stacked in order (all of one width, with the same scores)."""
        items = np.concatenate([p.items for p in parts])
        names = parts[0].scores.keys()
        return Candidates(items, {n: np.concatenate([p.scores[n] for p in parts]) for n in names})

    def top(self, stage: str, k: int) -> Candidates:
        """The k best of each row by `stage`'s score (ties: the earlier column first)."""
        score = np.where(self.valid, self.scores[stage], -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]
        order = np.where(np.take_along_axis(self.valid, order, axis=1), order, -1)
        return self.reorder(order)
