"""Training data for the stages after recall, without stacking leakage.

Pre-rank and rank read the recall model's logit as a feature. If the recall model had been
trained on the pairs they learn from, its logits there would be too good (it has seen those
likes), and the later stages would learn to over-trust a signal that is weaker at serving
time. So the recall model never sees the pairs the later stages train on:

    train ratings, by time:  [ ---------- early (80 %) ---------- | -- slice (20 %) -- ]
                               recall model trains here             pre-rank and rank here

In the slice we replay requests the way test users make them. A test user comes back months
after their last known rating, so by default (`replay = "return"`) a request is replayed when
a user first rates in the slice after a pause of at least `min_gap_days`: their history is
everything before that moment, "now" is that moment, and their ratings from then on are the
targets. The recall model (trained on early only) proposes its candidates for the request; the
candidates are labelled with what the user did next. Every recall logit of a slice example is
therefore out of sample. The item-to-item score the later stages read is fitted on the early
part too. The rank stage's `prerank_logit` input is produced by cross-fitting instead: the
pre-rank model is trained on K-1 folds of slice requests and scores the held-out fold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.config import param
from recfunnel.data.schema import ITEM, LIKE_THRESHOLD, RATING, TIME, USER
from recfunnel.data.split import Split
from recfunnel.errors import ConfigError
from recfunnel.features import DAY, gather_ranges
from recfunnel.types import Candidates, Embeddings, History, Pairs, Requests


@dataclass(frozen=True)
class StackingConfig:
    """How the pre-rank and rank stages get leakage-free training data."""

    slice_fraction: float = param(
        0.2, "latest share of train held out from the recall model; later stages train on it"
    )
    replay: Literal["return", "split", "both"] = param(
        "return",
        "which requests to replay: return (users coming back to rate after a pause of "
        "min_gap_days, like test users do), split (every slice user, the first "
        "history_fraction of their slice ratings as history) or both (return requests, and "
        "a split request for each slice user who never returns)",
    )
    min_gap_days: float = param(1.0, "return: the pause before the replayed request, in days")
    history_fraction: float = param(
        0.5, "split: of a slice user's slice ratings, the earliest share joins their history"
    )
    unrated_negatives: int = param(
        200, "unrated recall candidates kept per slice user as negatives (0: rated pairs only)"
    )
    rated_pairs: bool = param(
        True, "also train on the targets' rated pairs that recall missed (label rating >= 4)"
    )
    folds: int = param(2, "cross-fitting folds for the rank stage's prerank_logit input")
    cuts: int = param(
        2,
        "cut points in time that replay requests for the rank stage: 1, the slice only; n "
        "adds n - 1 earlier slices of the same size, each replayed through recall and "
        "item-to-item fitted again on the ratings before it (pre-rank learns on the latest "
        "slice only, as it reads that fit's vectors)",
        saved_without=1,  # runs saved before the field had one cut
    )
    like_pairs: bool = param(
        True,
        "also give the rank stage's P(liked | rated) head the later rated pairs of the slice "
        "users who were not replayed (split by history_fraction)",
    )

    user_fraction: float = param(
        1.0,
        "share of the slice users the later stages learn from (a random subset, seeded by "
        "prerank.seed; the rest are dropped before any replay): the learning-curve knob",
    )

    refit: bool = param(
        True,
        "serve with the recall channels and the item-to-item score refitted on all of train "
        "(channels whose vectors the later stages read keep their early fit)",
    )

    def validate(self) -> None:
        if not 0 < self.slice_fraction < 1 or not 0 <= self.history_fraction < 1:
            raise ConfigError(
                "stacking.slice_fraction must be in (0, 1) and history_fraction in [0, 1)"
            )
        if not 0 < self.user_fraction <= 1:
            raise ConfigError("stacking.user_fraction must be in (0, 1]")
        if self.min_gap_days < 0:
            raise ConfigError("stacking.min_gap_days must be >= 0")
        if self.unrated_negatives < 0 or self.folds < 2:
            raise ConfigError("stacking.unrated_negatives must be >= 0 and folds >= 2")
        if self.cuts < 1 or self.cuts * self.slice_fraction >= 1:
            raise ConfigError(
                "stacking.cuts must be >= 1 and leave train before the earliest cut "
                f"(cuts x slice_fraction < 1), got {self.cuts} x {self.slice_fraction}"
            )
        if self.unrated_negatives == 0 and not self.rated_pairs:
            raise ConfigError("stacking needs unrated_negatives > 0 or rated_pairs = true")


def sample_slice_users(
    late: pd.DataFrame, fraction: float, rng: np.random.Generator
) -> pd.DataFrame:
    """The slice's ratings of a random `fraction` of its users (all of them at 1.0), so the
    later stages can be trained on fewer requests: how accuracy grows with the number of
    requests is measured by `bench/learning_curve.py`."""
    if fraction >= 1:
        return late
    users = np.unique(late[USER].to_numpy())
    chosen = rng.choice(users, size=max(1, round(fraction * len(users))), replace=False)
    return late[late[USER].isin(chosen)].reset_index(drop=True)


def time_slice(split: Split, fraction: float) -> tuple[Split, pd.DataFrame]:
    """(the split with train cut to its early part, the slice): the last `fraction` of train
    rows by time (train is time-sorted) form the slice; a timestamp is never cut in two."""
    train = split.train
    cut = int(train[TIME].iloc[int((1 - fraction) * len(train))])
    early = train[train[TIME] < cut].reset_index(drop=True)
    late = train[train[TIME] >= cut].reset_index(drop=True)
    if early.empty or late.empty:
        raise ConfigError(f"stacking.slice_fraction={fraction} leaves an empty part of train")
    return Split(early, split.valid, split.test, split.kind), late


@dataclass(frozen=True)
class SliceRequests:
    """Replayed requests of the slice users and what they did next.

    targets (B, n_items) CSR of the target ratings' values over catalogue columns.
    """

    requests: Requests
    targets: sp.csr_matrix


def slice_requests(
    early: pd.DataFrame,
    late: pd.DataFrame,
    item_ids: np.ndarray,
    config: StackingConfig,
) -> SliceRequests:
    """Replayed requests of slice users (see the module docstring and `StackingConfig.replay`).

    Each user's ratings are ordered by time. "return": a request happens at the user's first
    slice rating that follows a pause of at least `min_gap_days`; everything before it is
    history, everything from it on is a target. Users who never pause are not replayed. Test
    users are returning users (their test ratings come months after their last known one),
    which "return" imitates. "split": one request per slice user, the first
    `history_fraction` of their slice ratings joining the history. "both": the return
    requests, then a split request of every slice user who has none.
    """
    if config.replay == "both":
        back = slice_requests(early, late, item_ids, replace(config, replay="return"))
        rest = slice_requests(early, late, item_ids, replace(config, replay="split"))
        keep = np.flatnonzero(~np.isin(rest.requests.user_ids, back.requests.user_ids))
        return SliceRequests(
            back.requests.concat(rest.requests[keep]),
            sp.vstack([back.targets, rest.targets[keep]]).tocsr(),
        )
    late = late.sort_values([USER, TIME, ITEM], kind="stable").reset_index(drop=True)
    users, first, counts = np.unique(late[USER].to_numpy(), return_index=True, return_counts=True)
    position = np.arange(len(late)) - np.repeat(first, counts)
    times = late[TIME].to_numpy()
    if config.replay == "split":
        owner = np.arange(len(users))
        start = np.floor(config.history_fraction * counts).astype(np.int64)
    else:
        # The previous rating of each slice rating, looking into the early part for the first.
        last_early = early.groupby(USER)[TIME].max().reindex(users).to_numpy()
        previous = np.r_[0, times[:-1]].astype(np.float64)
        previous[first] = last_early  # NaN for users new in the slice: no pause to return from
        pause = np.flatnonzero((times - previous) >= config.min_gap_days * DAY)
        owner = np.searchsorted(first, pause, side="right") - 1  # user of each return
        # Only the first return of each user: replaying every return (688 requests instead of
        # 510 on ML-1M) scored lower on test and no better on valid.
        owner, first_return = np.unique(owner, return_index=True)
        start = position[pause[first_return]]
    if not len(owner):
        raise ConfigError("no slice request to replay; lower stacking.min_gap_days")

    # Request r of user u: history = u's early ratings + late[first_u : first_u + start_r],
    # targets = late[first_u + start_r : first_u + count_u].
    early = early.sort_values([USER, TIME, ITEM], kind="stable").reset_index(drop=True)
    e_users, e_first, e_counts = np.unique(
        early[USER].to_numpy(), return_index=True, return_counts=True
    )
    e_pos = np.searchsorted(e_users, users[owner])
    e_found = (e_pos < len(e_users)) & (
        e_users[np.minimum(e_pos, len(e_users) - 1)] == users[owner]
    )
    e_begin = np.where(e_found, e_first[np.minimum(e_pos, len(e_users) - 1)], 0)
    e_end = e_begin + np.where(e_found, e_counts[np.minimum(e_pos, len(e_users) - 1)], 0)
    split_at = first[owner] + start
    parts = {
        "history": [
            (early, e_begin, e_end),
            (late, first[owner], split_at),
        ],
        "targets": [(late, split_at, first[owner] + counts[owner])],
    }
    columns = pd.Index(item_ids)
    n = len(owner)

    def matrix(kind: str, value: str) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for frame, begin, end in parts[kind]:
            index = gather_ranges(np.arange(len(frame)), begin, end)
            rows.append(np.repeat(np.arange(n), end - begin))
            cols.append(columns.get_indexer(frame[ITEM].to_numpy()[index]))
            vals.append(frame[value].to_numpy()[index].astype(np.float64))
        row, col, val = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        keep = col >= 0
        return sp.csr_matrix((val[keep], (row[keep], col[keep])), shape=(n, len(item_ids)))

    return SliceRequests(
        requests=Requests(
            user_ids=users[owner],
            history=History(matrix("history", RATING), matrix("history", TIME)),
            now=times[split_at].astype(np.int64),
        ),
        targets=matrix("targets", RATING),
    )


def build_examples(
    cands: Candidates,
    targets: sp.csr_matrix,
    missed: Callable[[Pairs], Pairs],
    *,
    unrated_negatives: int,
    rated_pairs: bool,
    rng: np.random.Generator,
) -> Pairs:
    """Labelled pairs from recall candidates and target ratings (B users, catalogue columns).

    A candidate the user went on to like is a positive, one they rated lower a negative, and
    up to `unrated_negatives` of the never-rated candidates per user (drawn at random) are
    negatives: what the stage must learn to push down at serving time. With `rated_pairs`,
    target ratings that recall missed are added too (label rating >= 4), scored by
    `missed(pairs) -> pairs` (the recall stage's `score_pairs`). The pairs keep the
    candidates' scores and embeddings.
    """
    pairs = cands.pairs()
    rows, items = pairs.rows, pairs.items
    rating = np.asarray(targets[rows, items]).ravel()
    rated = rating > 0
    keep = rated.copy()
    if unrated_negatives > 0:
        # Random order within each user, then keep the first `unrated_negatives` unrated ones.
        noise = rng.random(len(rows))
        order = np.lexsort((noise, ~rated, rows))
        unrated_sorted = ~rated[order]
        rank = _rank_within(rows[order], unrated_sorted)
        chosen = np.zeros(len(rows), dtype=bool)
        chosen[order] = unrated_sorted & (rank < unrated_negatives)
        keep |= chosen
    out = _labelled(pairs.subset(keep), rating[keep], candidate=True)
    if not rated_pairs:
        return out
    proposed = sp.csr_matrix(
        (np.ones(len(rows)), (rows, items)), shape=targets.shape, dtype=np.float64
    )
    missed_ratings = sp.csr_matrix(targets - targets.multiply(proposed > 0))
    missed_ratings.eliminate_zeros()
    # COO, not fancy indexing: when recall proposed every target (a topk_recall near the
    # catalogue size), indexing with empty arrays gave a matrix object, not an empty array.
    missed_coo = missed_ratings.tocoo()
    m_rows, m_items, m_rating = missed_coo.row, missed_coo.col, missed_coo.data
    # The candidates' embeddings are the requests' own: the missed pairs are scored with them.
    extra = missed(
        Pairs(m_rows.astype(np.int64), m_items.astype(np.int64), embeddings=pairs.embeddings)
    )
    return out.concat(_labelled(extra, m_rating, candidate=False))


def _labelled(pairs: Pairs, rating: np.ndarray, *, candidate: bool) -> Pairs:
    """`pairs` with labels (rating >= 4), rated (rating > 0) and candidate flags."""
    n = len(pairs)
    return Pairs(
        pairs.rows,
        pairs.items,
        pairs.scores,
        pairs.embeddings,
        labels=(rating >= LIKE_THRESHOLD).astype(np.float32),
        rated=rating > 0,
        candidate=np.full(n, candidate),
    )


def _rank_within(groups: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """For sorted `groups` (n,), the 0-based count of earlier flagged entries in the group."""
    csum = np.cumsum(flag) - flag
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    base = np.repeat(csum[starts], np.diff(np.r_[starts, len(groups)]))
    return csum - base


def add_like_pairs(
    replay: SliceRequests,
    examples: Pairs,
    score: Callable[[Requests, Pairs], Pairs],
    early: pd.DataFrame,
    late: pd.DataFrame,
    item_ids: np.ndarray,
    config: StackingConfig,
) -> tuple[SliceRequests, Pairs]:
    """More rated pairs for the rank stage's P(liked | rated) head: the slice users who were
    not replayed, each split in two by `history_fraction`, their later ratings as pairs.

    They are not candidates (pre-rank and the watch head never see them); recall never saw
    them either, so the scores `score(requests, pairs)` (the recall stage's) gives them are
    out of sample too. Returns the requests and examples with the new ones appended (their
    rows follow the old), the embeddings stacked in the same order."""
    extra = slice_requests(early, late, item_ids, replace(config, replay="split"))
    keep = np.flatnonzero(~np.isin(extra.requests.user_ids, replay.requests.user_ids))
    if not len(keep):  # every slice user was replayed already (e.g. replay = "both")
        return replay, examples
    extra = SliceRequests(extra.requests[keep], extra.targets[keep])
    rows, items = extra.targets.nonzero()
    rating = np.asarray(extra.targets[rows, items]).ravel()
    scored = score(extra.requests, Pairs(rows.astype(np.int64), items.astype(np.int64)))
    added = _labelled(
        Pairs(
            scored.rows + len(replay.requests),
            scored.items,
            {n: s for n, s in scored.scores.items() if n in examples.scores},
        ),
        rating,
        candidate=False,
    )
    merged = SliceRequests(
        replay.requests.concat(extra.requests),
        sp.vstack([replay.targets, extra.targets]).tocsr(),
    )
    assert examples.embeddings is not None and scored.embeddings is not None
    embeddings = Embeddings.stack([examples.embeddings, scored.embeddings])
    return merged, examples.concat(added).with_embeddings(embeddings)


__all__ = [
    "SliceRequests",
    "StackingConfig",
    "add_like_pairs",
    "build_examples",
    "sample_slice_users",
    "slice_requests",
    "time_slice",
]
