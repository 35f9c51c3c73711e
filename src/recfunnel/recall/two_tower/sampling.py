"""Training examples for the two-tower model, built once from train ratings with numpy.

Each example is a (user, target item) event with the user's history *before* that event
(strictly earlier timestamps, the last `max_history` of them). That is what the model sees
when it serves: everything known up to now, never the future. Training on a user's whole
history would put the target inside its own input, a leak the model learns to exploit and
then cannot use at serving time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recfunnel.data.schema import ITEM, LIKE_THRESHOLD, RATING, TIME, USER
from recfunnel.features import FeatureSpace, gather_ranges


@dataclass(frozen=True)
class UserBatch:
    """The user-tower inputs of B users: five (B,) int64 features, history (H,), offsets (B,)."""

    user: torch.Tensor
    gender: torch.Tensor
    age: torch.Tensor
    occupation: torch.Tensor
    zip: torch.Tensor
    history: torch.Tensor
    offsets: torch.Tensor

    def as_args(self) -> tuple[torch.Tensor, ...]:
        return (
            self.user,
            self.gender,
            self.age,
            self.occupation,
            self.zip,
            self.history,
            self.offsets,
        )

    def rows(self, part: slice) -> UserBatch:
        """Users `part` (a contiguous slice) of the batch, their history with them."""
        n = len(self.offsets)
        begin, end = part.indices(n)[:2]
        first = int(self.offsets[begin]) if begin < n else len(self.history)
        last = int(self.offsets[end]) if end < n else len(self.history)
        return UserBatch(
            user=self.user[part],
            gender=self.gender[part],
            age=self.age[part],
            occupation=self.occupation[part],
            zip=self.zip[part],
            history=self.history[first:last],
            offsets=self.offsets[part] - first,
        )


def user_batch(
    features: dict[str, np.ndarray], rows: np.ndarray, history: np.ndarray, lengths: np.ndarray
) -> UserBatch:
    """Assemble a UserBatch from per-user feature arrays (indexed by `rows`) and the batch's
    concatenated history item indices, user b owning the next lengths[b] of them."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return UserBatch(
        user=torch.from_numpy(features["user"][rows]),
        gender=torch.from_numpy(features["gender"][rows]),
        age=torch.from_numpy(features["age"][rows]),
        occupation=torch.from_numpy(features["occupation"][rows]),
        zip=torch.from_numpy(features["zip"][rows]),
        history=torch.from_numpy(np.ascontiguousarray(history, dtype=np.int64)),
        offsets=torch.from_numpy(offsets),
    )


def sample_other_history(
    history: np.ndarray,
    begin: np.ndarray,
    end: np.ndarray,
    target: np.ndarray,
    max_len: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """For example b, up to max_len items of history[begin[b]:end[b]] other than target[b]:
    all of them when they fit, else an evenly spaced sample from a random start (each item is
    equally likely). Returns (concatenated items, lengths (B,))."""
    n = end - begin
    take = np.minimum(n, max_len)
    start = (rng.random(len(n)) * np.maximum(n, 1)).astype(np.int64)
    seg = np.repeat(np.arange(len(n)), take)
    j = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    pos = begin[seg] + (start[seg] + (j * n[seg]) // np.maximum(take[seg], 1)) % np.maximum(
        n[seg], 1
    )
    items = history[pos]
    keep = items != target[seg]
    return items[keep], np.bincount(seg[keep], minlength=len(n))


@dataclass(frozen=True)
class RecallBatch:
    """One mini-batch: users (B), target items (B,), labels (B,) and, for BPR/BCE, random
    negative items (B, n) or, for softmax, shared ones (R,)."""

    users: UserBatch
    items: torch.Tensor
    labels: torch.Tensor
    times: np.ndarray  # (B,) unix seconds of the events, for causal item features
    negatives: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, part: slice) -> RecallBatch:
        """Examples `part` (a contiguous slice): a process's shard under torchrun. Shared
        negatives (R,) stay whole; per-example ones (B, n) are sliced with their rows."""
        negatives = self.negatives
        if negatives is not None and negatives.ndim == 2:
            negatives = negatives[part]
        return RecallBatch(
            self.users.rows(part), self.items[part], self.labels[part], self.times[part], negatives
        )


class RecallExamples:
    """All training events of the train ratings, in arrays, and a seeded batch generator.

    history_kind: which ratings form the history, "liked" (rating >= 4) or "rated".
    history_mode: "causal" (the user's history strictly before the event, the last
        max_history of it) or "others" (a sample of max_history of the user's other train
        ratings of that kind, before or after: a set, like EASE's row, never the target).
    with_dislikes: also emit disliked ratings as label-0 examples (for the BCE objective).
    """

    def __init__(
        self,
        train: pd.DataFrame,
        space: FeatureSpace,
        *,
        history_kind: str,
        max_history: int,
        with_dislikes: bool,
        history_mode: str = "causal",
    ) -> None:
        self.history_mode = history_mode
        self.max_history = max_history
        ordered = train.sort_values([USER, TIME, ITEM], kind="stable")
        users = ordered[USER].to_numpy()
        times = ordered[TIME].to_numpy()
        liked = (ordered[RATING] >= LIKE_THRESHOLD).to_numpy()
        in_history = liked if history_kind == "liked" else np.ones(len(ordered), dtype=bool)

        self.user_ids = np.unique(users)
        self.user_features = space.user_features(self.user_ids)
        self.history = space.items.index(ordered[ITEM].to_numpy()[in_history])
        # History events of a user before time t: one sorted key per event, (user, time),
        # so a searchsorted finds for every example where its strictly-earlier history ends.
        span = np.int64(times.max() - times.min() + 2)
        key = (users.astype(np.int64) * span) + (times - times.min())
        hist_key = key[in_history]
        first_of_user = np.searchsorted(hist_key, users.astype(np.int64) * span, side="left")

        keep = liked | with_dislikes
        self.rows = np.searchsorted(self.user_ids, users[keep])
        self.items = space.items.index(ordered[ITEM].to_numpy()[keep])
        self.labels = liked[keep].astype(np.float32)
        self.times = times[keep].astype(np.int64)
        if history_mode == "causal":
            self.hist_end = np.searchsorted(hist_key, key[keep], side="left")
            self.hist_begin = np.maximum(first_of_user[keep], self.hist_end - max_history)
        else:  # the user's whole history range; sampled per batch
            self.hist_begin = first_of_user[keep]
            self.hist_end = np.searchsorted(hist_key, (users[keep].astype(np.int64) + 1) * span)

        # Probability that a liked item is any one in-batch negative (for the logQ correction).
        counts = np.bincount(self.items[self.labels == 1], minlength=len(space.items))
        self.item_prob = counts / counts.sum()
        self.n_items = len(space.items)

    def __len__(self) -> int:
        return len(self.items)

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self, batch_size: int, rng: np.random.Generator, negatives: int, shared: bool
    ) -> Iterator[RecallBatch]:
        """Shuffled batches; `negatives` uniform items per example, or `shared` per batch."""
        order = rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if negatives <= 0:
                neg = None
            elif shared:
                neg = torch.from_numpy(rng.integers(1, self.n_items, negatives))
            else:
                neg = torch.from_numpy(rng.integers(1, self.n_items, (len(idx), negatives)))
            begin, end = self.hist_begin[idx], self.hist_end[idx]
            if self.history_mode == "causal":
                history, lengths = gather_ranges(self.history, begin, end), end - begin
            else:
                history, lengths = sample_other_history(
                    self.history, begin, end, self.items[idx], self.max_history, rng
                )
            yield RecallBatch(
                users=user_batch(self.user_features, self.rows[idx], history, lengths),
                items=torch.from_numpy(self.items[idx]),
                labels=torch.from_numpy(self.labels[idx]),
                times=self.times[idx],
                negatives=neg,
            )
