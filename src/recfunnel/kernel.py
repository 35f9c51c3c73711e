"""The serving fast path's contract: one request, numpy kernels, item-side work done once.

    kernel = component.kernel()                       # built once from the fitted state
    request = UserRequest.build(user_id, items, ratings, times, n_items, floor=funnel.now)
    cands = kernel(request, cands, **options)          # Candidates (1, N) -> (1, M)

`Funnel.run` serves batches: each stage builds sparse histories, pandas-free but general
feature tables and torch batches, which for one user costs more than the arithmetic
(about 14 ms a call). A kernel is the same stage for ONE request: the stage's item-side
tensors (item vectors, weight rows, the first layers' per-item projections) are computed
when the kernel is built, and a call reads one `UserRequest`, a dense history built once
per request and shared by every stage. Kernels chain through the usual `Candidates` value
(one row), so the answer is built exactly as for the batch path, and `Funnel.serve` can fall
back to a component's batch call (`BatchKernel`) where a component has no kernel of its own.
The lists equal the batch path's (tests/test_fastpath.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from torch import nn

from recfunnel.data.schema import LIKE_THRESHOLD
from recfunnel.types import Candidates, History, Requests


@dataclass(frozen=True)
class UserRequest:
    """One user asking now, with their history as dense arrays (built once per request).

    user_id: raw id (0 for a visitor); now: unix seconds; items (h,) int64 catalogue
    positions of the rated movies, ascending; ratings (h,) float64 and timestamps (h,) int64
    of those; known (n_items,) bool, the rated positions (never recommended again); liked
    (l,) int64 ascending positions rated >= 4.
    """

    user_id: int
    now: int
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    known: np.ndarray
    liked: np.ndarray

    @classmethod
    def build(
        cls,
        user_id: int,
        items: np.ndarray,
        ratings: np.ndarray,
        timestamps: np.ndarray,
        n_items: int,
        floor: int,
    ) -> UserRequest:
        """A request made just after the user's last rating and never before `floor`, like
        `Requests.after_history`: the whole history is visible. `items` need not be sorted."""
        items = np.asarray(items, dtype=np.int64)
        order = np.argsort(items, kind="stable")
        items = items[order]
        ratings = np.asarray(ratings, dtype=np.float64)[order]
        timestamps = np.asarray(timestamps, dtype=np.int64)[order]
        known = np.zeros(n_items, dtype=bool)
        known[items] = True
        now = max(int(timestamps.max()) if len(timestamps) else 0, int(floor))
        liked = items[ratings >= LIKE_THRESHOLD]
        return cls(int(user_id), now, items, ratings, timestamps, known, liked)

    @property
    def n_items(self) -> int:
        return len(self.known)

    @cached_property
    def requests(self) -> Requests:
        """The same request as a one-row batch value, for components without a kernel."""
        indptr = np.array([0, len(self.items)])
        shape = (1, self.n_items)
        history = History(
            sp.csr_matrix((self.ratings, self.items, indptr), shape=shape),
            sp.csr_matrix((self.timestamps, self.items, indptr), shape=shape),
        )
        return Requests(np.array([self.user_id]), history, np.array([self.now]))


class Kernel(Protocol):
    """A component's fast path: one request's new candidate list from the incoming one."""

    def __call__(
        self, request: UserRequest, candidates: Candidates, **options: Any
    ) -> Candidates: ...


class BatchKernel:
    """The fallback kernel: the component's own batch call on a one-row `Requests`."""

    def __init__(self, component: Any) -> None:
        self.component = component

    def __call__(self, request: UserRequest, candidates: Candidates, **options: Any) -> Candidates:
        return self.component(request.requests, candidates, **options)


def liked_sum(weights: np.ndarray, liked: np.ndarray) -> np.ndarray:
    """sum over the liked positions h of weights[h] -> (n_items,) float64.

    The rows are added one after another in ascending h, in the weights' dtype: the order
    and precision of scipy's sparse (1, n) @ dense product that the batch path uses, so the
    scores are bit-identical to it (a different summation order could flip exact ties)."""
    if not len(liked):
        return np.zeros(weights.shape[1])
    # A reduction over axis 0 of a C-contiguous block adds whole rows in order (numpy's
    # pairwise summation applies only along the contiguous axis): one call, not ~100.
    return np.add.reduce(weights[liked], axis=0).astype(np.float64)


class WeightsKernel:
    """Adds scores[name] = sum over the liked items h of weights[h, item] (the item-to-item
    score), as float32 like the batch path; the list stays as it is."""

    def __init__(self, name: str, weights: np.ndarray) -> None:
        self.name, self.weights = name, weights

    def __call__(self, request: UserRequest, candidates: Candidates, **_: Any) -> Candidates:
        row = liked_sum(self.weights, request.liked)
        values = np.full(candidates.items.shape, np.nan)
        valid = candidates.valid
        values[valid] = row[candidates.items[valid]].astype(np.float32)
        return candidates.with_scores(self.name, values)


@dataclass(frozen=True)
class Dense:
    """One linear layer as numpy: y = x @ weight + bias, then ReLU if `relu`.
    weight (in, out) float32, C-contiguous; bias (out,) float32."""

    weight: np.ndarray
    bias: np.ndarray
    relu: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight
        y += self.bias
        return np.maximum(y, 0, out=y) if self.relu else y


def dense_layers(sequential: nn.Sequential) -> list[Dense]:
    """The Linear / ReLU / Dropout layers of an eval-mode `nn.mlp` as numpy `Dense` layers
    (dropout is the identity at inference); any other module is an error, not a guess."""
    layers: list[Dense] = []
    for module in sequential:
        if isinstance(module, nn.Linear):
            weight = module.weight.detach().numpy().T.astype(np.float32)
            bias = (
                module.bias.detach().numpy().astype(np.float32)
                if module.bias is not None
                else np.zeros(module.out_features, np.float32)
            )
            layers.append(Dense(np.ascontiguousarray(weight), bias, relu=False))
        elif isinstance(module, nn.ReLU):
            last = layers[-1]
            layers[-1] = Dense(last.weight, last.bias, relu=True)
        elif not isinstance(module, nn.Dropout):
            raise TypeError(f"dense_layers: no numpy form for {type(module).__name__}")
    return layers


def run_layers(layers: list[Dense], x: np.ndarray) -> np.ndarray:
    for layer in layers:
        x = layer(x)
    return x


def top_unknown(scores: np.ndarray, known: np.ndarray, k: int) -> np.ndarray:
    """Positions (k,) of the k best unknown items of one score row (n_items,), best first,
    ties to the smaller position; -1 pads when fewer are left. The same list as
    `evaluation.protocol.top_k` (a stable sort of -score), from a partition instead of a
    full sort."""
    masked = np.where(known, -np.inf, scores)
    n_left = int(len(scores) - known.sum())
    take = min(k, n_left)
    out = np.full(k, -1, dtype=np.int64)
    if take <= 0:
        return out
    if take < len(masked):
        cut = np.partition(masked, len(masked) - take)[len(masked) - take]
        above = np.flatnonzero(masked > cut)
        tied = np.flatnonzero(masked == cut)[: take - len(above)]  # ascending: smaller first
        chosen = np.concatenate([above, tied])
    else:
        chosen = np.arange(len(masked))
    order = np.lexsort((chosen, -masked[chosen]))
    out[:take] = chosen[order][:take]
    return out


__all__ = [
    "BatchKernel",
    "Dense",
    "Kernel",
    "UserRequest",
    "WeightsKernel",
    "dense_layers",
    "liked_sum",
    "run_layers",
    "top_unknown",
]
