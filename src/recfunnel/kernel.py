"""The serving fast path's contract: one request, numpy kernels, item-side work done once.

    kernel = component.kernel()                       # built once from the fitted state
    request = UserRequest.build(user_id, items, ratings, times, n_items, floor=funnel.now)
    row = kernel.row(request, row, **options)          # Row (N,) -> (M,): plain arrays
    cands = kernel(request, cands, **options)          # the same on Candidates (1, N) -> (1, M)

`Funnel.run` serves batches: each stage builds sparse histories, pandas-free but general
feature tables and torch batches, which for one user costs more than the arithmetic
(about 14 ms a call). A kernel is the same stage for ONE request: the stage's item-side
tensors (item vectors, weight rows, the first layers' per-item projections) are computed
when the kernel is built, and a call reads one `UserRequest`, a dense history built once
per request and shared by every stage.

Between stages a request's list travels as a `Row`: the fields of a one-row `Candidates`
as plain 1-D arrays. A frozen `Candidates` validates and makes read-only views of every
array it holds, a few microseconds each; chained through five kernels that was ~180 views
a request, a fifth of the call. `funnel.FusedKernel` chains the kernels' `row` methods
and `Funnel.serve` builds the `Candidates` once at the end (`recommend_for_user` reads
the Rows and builds none). A component without a numpy kernel falls back to its batch
call (`BatchKernel`) on a one-row `Requests`, converted at its boundary.
The lists equal the batch path's (tests/test_fastpath.py).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from torch import nn

from recfunnel.data.schema import LIKE_THRESHOLD
from recfunnel.types import Candidates, Embeddings, History, Requests, recency_weights

try:  # scipy's CSR x dense kernel (what `csr_matrix @ ndarray` calls): see `liked_sum`
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # a scipy that moved it: the numpy reduction, the same sums
    _csr_matvecs = None


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
    # (id(weights), decay) -> (weights, their liked sum): see `liked_sum_of`.
    _sums: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )

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

    def liked_sum_of(self, weights: np.ndarray | PaddedRows, decay_days: float = 0.0) -> np.ndarray:
        """`liked_sum(weights, liked, recency weights)`, computed once per request, weight
        matrix and decay: the recall EASE channel and the item-to-item score read the same
        matrix (`shared`) with the same decay."""
        key = (id(weights), decay_days)
        hit = self._sums.get(key)
        if hit is None or hit[0] is not weights:  # the array is kept, so its id stays its own
            coefficients = None
            if decay_days and len(self.liked):  # (no liked row: nothing to weigh, no latest)
                liked = self.ratings >= LIKE_THRESHOLD  # items ascending, as self.liked
                last = float(self.timestamps.max())
                coefficients = recency_weights(self.timestamps[liked], last, decay_days)
            hit = self._sums[key] = (weights, liked_sum(weights, self.liked, coefficients))
        return hit[1]

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


@dataclass
class Row:
    """One request's candidate list as plain 1-D arrays: what the fused fast path
    (`funnel.FusedKernel`) hands from stage to stage instead of a one-row `Candidates`.

    items (N,) int64 catalogue positions, -1 padding; scores[name] (N,) float64 (NaN on
    padding); channels[name] (N,) int64 1-based channel ranks (0: not proposed); embeddings
    as in `Candidates` (users (1, d)). The same fields as a `Candidates` row, without its
    read-only views and checks: those cost a few microseconds per array, and a request
    used to make ~180 of them. A stage never writes into a Row's arrays; it makes a new Row
    (`with_score`, `take`) or a new dict. `candidates()` gives the frozen value, once.
    """

    items: np.ndarray
    scores: dict[str, np.ndarray]
    channels: dict[str, np.ndarray]
    embeddings: Embeddings | None = None

    @classmethod
    def of(cls, candidates: Candidates) -> Row:
        """Row 0 of a one-row `Candidates`."""
        return cls(
            candidates.items[0],
            {name: s[0] for name, s in candidates.scores.items()},
            {name: r[0] for name, r in candidates.channels.items()},
            candidates.embeddings,
        )

    def candidates(self) -> Candidates:
        """The same list as a one-row `Candidates` (B = 1)."""
        return Candidates(
            self.items[None, :],
            {name: s[None, :] for name, s in self.scores.items()},
            {name: r[None, :] for name, r in self.channels.items()},
            self.embeddings,
        )

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: real candidates rather than padding."""
        return self.items >= 0

    def with_score(self, name: str, values: np.ndarray, valid: np.ndarray) -> Row:
        """A Row with scores[name] (N,) float64: `values` (n,) on the `valid` slots (the
        Row's own `valid`, passed in to save recomputing it), NaN on the padding."""
        if len(values) == len(self.items):  # no padding: `values` fills every slot
            full = np.asarray(values, dtype=np.float64)
        else:
            full = np.full(len(self.items), np.nan)
            full[valid] = values
        return Row(self.items, {**self.scores, name: full}, self.channels, self.embeddings)

    def take(self, order: np.ndarray) -> Row:
        """`Candidates.reorder` for one row: columns `order` (M,), -1 in `order` pads."""
        pad = order < 0
        if not pad.any():
            return Row(
                self.items[order],
                _each_once(self.scores, lambda s: s[order]),
                _each_once(self.channels, lambda r: r[order]),
                self.embeddings,
            )
        safe = np.where(pad, 0, order)
        return Row(
            np.where(pad, -1, self.items[safe]),
            _each_once(self.scores, lambda s: np.where(pad, np.nan, s[safe])),
            _each_once(self.channels, lambda r: np.where(pad, 0, r[safe])),
            self.embeddings,
        )

    def top(self, name: str, k: int) -> Row:
        """`Candidates.top` for one row: the k best by scores[name], ties to the earlier
        column, padding last (as -1)."""
        return self.top_by(self.scores[name], k)

    def top_by(self, key: np.ndarray, k: int) -> Row:
        """`Candidates.top_by` for one row: the k best by `key` (N,)."""
        valid = self.valid
        score = np.where(valid, key, -np.inf)
        order = np.argsort(-score, kind="stable")[:k]
        return self.take(np.where(valid[order], order, -1))


def _each_once(arrays: dict[str, np.ndarray], fn: Any) -> dict[str, np.ndarray]:
    """{name: fn(array)}, calling fn once per distinct array: a Row's names often share one
    (recall's own score is a channel's, a channel feature is the channel's score), and a
    stage never writes into a Row's arrays, so the results may be shared the same way."""
    done: dict[int, np.ndarray] = {}
    out = {}
    for name, array in arrays.items():
        key = id(array)
        if key not in done:
            done[key] = fn(array)
        out[name] = done[key]
    return out


class Kernel(Protocol):
    """A component's fast path: one request's new candidate list from the incoming one."""

    def __call__(
        self, request: UserRequest, candidates: Candidates, **options: Any
    ) -> Candidates: ...


class RowKernel(Kernel, Protocol):
    """A kernel that also works on plain `Row`s, so `funnel.FusedKernel` can chain it
    without building a `Candidates` value between stages."""

    def row(self, request: UserRequest, row: Row, **options: Any) -> Row: ...


class BatchKernel:
    """The fallback kernel: the component's own batch call on a one-row `Requests`."""

    def __init__(self, component: Any) -> None:
        self.component = component

    def __call__(self, request: UserRequest, candidates: Candidates, **options: Any) -> Candidates:
        return self.component(request.requests, candidates, **options)


class PaddedRows:
    """A mostly-zero weight matrix (n, m) as its nonzeros, rows padded to one width w:
    columns (n, w) int32 and values (n, w) (0 at column 0 in the padding).

    RP3beta keeps ~200 neighbours per item (~5 % of ML-1M's 3,706 columns): summing a
    user's liked rows from this form reads ~10 x fewer bytes than the dense rows (0.05
    against 0.13 ms at 100 liked rows, 0.6 against 1.5 ms at 900, cache cold), and it
    adds the same numbers in the same order (`liked_sum`)."""

    def __init__(self, weights: np.ndarray) -> None:
        nonzero = weights != 0
        counts = nonzero.sum(axis=1)
        self.shape = weights.shape
        self.dtype = weights.dtype
        width = int(counts.max()) if len(counts) else 0
        self.columns = np.zeros((weights.shape[0], width), dtype=np.int32)
        self.values = np.zeros((weights.shape[0], width), dtype=weights.dtype)
        rows, cols = np.nonzero(nonzero)  # row-major: each row's columns ascending
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.columns[rows, slot] = cols
        self.values[rows, slot] = weights[rows, cols]

    @classmethod
    def worth_it(cls, weights: np.ndarray) -> bool:
        """Whether the padded rows are much narrower than the dense ones (w <= m / 8)."""
        if weights.ndim != 2 or not weights.shape[1]:
            return False
        width = int(np.count_nonzero(weights, axis=1).max()) if len(weights) else 0
        return width <= weights.shape[1] // 8


def liked_sum(
    weights: np.ndarray | PaddedRows, liked: np.ndarray, coefficients: np.ndarray | None = None
) -> np.ndarray:
    """sum over the liked positions h of c_h weights[h] -> (n_items,) float64, with c_h the
    `coefficients` (l,) (None: 1 each), rounded to the weights' dtype as the batch path
    casts its history.

    The rows are added one after another in ascending h, in the weights' dtype: the order
    and precision of scipy's sparse (1, n) @ dense product that the batch path uses, so the
    scores are bit-identical to it (a different summation order could flip exact ties)."""
    if not len(liked):
        return np.zeros(weights.shape[1])
    scale = None if coefficients is None else np.asarray(coefficients).astype(weights.dtype)
    if isinstance(weights, PaddedRows):
        # np.add.at adds its elements one at a time, in order: row h's nonzeros before
        # row h + 1's, as the dense sum adds its rows. The dense sum also adds the zeros
        # this form leaves out (and the padding adds 0 to column 0): x + 0 is x.
        out = np.zeros(weights.shape[1], dtype=weights.dtype)
        values = weights.values[liked]
        if scale is not None:  # c_h x w, rounded once, as the product's loop computes it
            values = scale[:, None] * values
        np.add.at(out, weights.columns[liked].ravel(), values.ravel())
        return out.astype(np.float64)
    if _csr_matvecs is not None and weights.flags.c_contiguous:
        # That product's own C loop (y += c_h * weights[h] for each h), called directly: one
        # pass over the liked rows, without the (l, n) gathered copy a numpy reduction
        # needs (1.5 x faster at 100 likes, 2.5 x at 600) or a csr_matrix per request.
        out = np.zeros(weights.shape[1], dtype=weights.dtype)
        rows = np.ascontiguousarray(liked, dtype=np.int64)
        indptr = np.array([0, len(rows)], dtype=np.int64)
        data = np.ones(len(rows), dtype=weights.dtype) if scale is None else scale
        _csr_matvecs(1, weights.shape[0], weights.shape[1], indptr, rows, data, weights, out)
        return out.astype(np.float64)
    # A reduction over axis 0 of a C-contiguous block adds whole rows in order (numpy's
    # pairwise summation applies only along the contiguous axis): one call, not ~100.
    rows = weights[liked] if scale is None else scale[:, None] * weights[liked]
    return np.add.reduce(rows, axis=0).astype(np.float64)


_SHARED: list[weakref.ref] = []  # weight matrices handed to kernels so far


# id(weights) -> (weights, its padded rows, or None when the dense rows are kept)
_PADDED: dict[int, tuple[weakref.ref, PaddedRows | None]] = {}


def summable(weights: np.ndarray) -> np.ndarray | PaddedRows:
    """What a kernel sums liked rows of (`liked_sum`): the `shared` matrix, or its
    `PaddedRows` when it is mostly zeros; decided and built once per matrix (the default
    funnel's EASE matrix is asked for twice, and counting its nonzeros takes ~15 ms)."""
    weights = shared(weights)
    for key in [k for k, (ref, _) in _PADDED.items() if ref() is None]:
        del _PADDED[key]
    hit = _PADDED.get(id(weights))
    if hit is None or hit[0]() is not weights:
        padded = PaddedRows(weights) if PaddedRows.worth_it(weights) else None
        hit = _PADDED[id(weights)] = (weakref.ref(weights), padded)
    return weights if hit[1] is None else hit[1]


def shared(weights: np.ndarray) -> np.ndarray:
    """An earlier kernel's weight matrix equal to `weights` (same shape, dtype and values),
    else `weights` itself, remembered. The default funnel fits the same EASE matrix twice,
    for the recall channel and for the item-to-item score (two components, two copies);
    kernels built on the one array let a request sum its liked rows once
    (`UserRequest.liked_sum_of`). Called when a kernel is built: comparing two ML-1M
    matrices takes ~30 ms, once."""
    _SHARED[:] = [ref for ref in _SHARED if ref() is not None]
    for ref in _SHARED:
        other = ref()
        if other is weights:
            return weights
        if (
            other is not None
            and other.shape == weights.shape
            and other.dtype == weights.dtype
            and np.array_equal(other, weights)
        ):
            return other
    _SHARED.append(weakref.ref(weights))
    return weights


class WeightsKernel:
    """Adds scores[name] = sum over the liked items h of weights[h, item] (the item-to-item
    score), as float32 like the batch path; the list stays as it is."""

    def __init__(self, name: str, weights: np.ndarray, decay_days: float = 0.0) -> None:
        self.name, self.weights, self.decay_days = name, summable(weights), decay_days

    def __call__(self, request: UserRequest, candidates: Candidates, **_: Any) -> Candidates:
        return self.row(request, Row.of(candidates)).candidates()

    def row(self, request: UserRequest, row: Row, **_: Any) -> Row:
        summed = request.liked_sum_of(self.weights, self.decay_days)
        valid = row.valid
        return row.with_score(self.name, summed[row.items[valid]].astype(np.float32), valid)


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
    n_left = len(scores) - np.count_nonzero(known)
    take = min(k, n_left)
    out = np.full(k, -1, dtype=np.int64)
    if take <= 0:
        return out
    if take < len(masked):
        cut = np.partition(masked, len(masked) - take)[len(masked) - take]
        # Everything above the cut and every tie at it; the sort below puts the ties in
        # ascending position, so the first `take` keep the smaller tied positions.
        chosen = np.flatnonzero(masked >= cut)
    else:
        chosen = np.arange(len(masked))
    order = np.lexsort((chosen, -masked[chosen]))[:take]
    out[:take] = chosen[order]
    return out


__all__ = [
    "BatchKernel",
    "Dense",
    "Kernel",
    "PaddedRows",
    "Row",
    "RowKernel",
    "UserRequest",
    "WeightsKernel",
    "dense_layers",
    "liked_sum",
    "run_layers",
    "shared",
    "summable",
    "top_unknown",
]
