"""The recall stage's serving kernel: every channel for one request, then the merge.

Built once from the fitted stage (`RecallStage.serving_kernel`):
- two-tower: the catalogue's item vectors (n_items, d) float32, contiguous, and the user
  tower as numpy layers; the user's vector is one small MLP, the search goes through the
  run's own index (so the list is the batch path's): exact search, a product, when the run's
  index is exact (the default up to 100,000 items) or it has none;
- EASE / RP3beta: their weight matrices; a request's score row is the sum of its liked rows,
  each weighted by its recency (`kernel.liked_sum`, scipy's CSR kernel: the batch path's
  product, bit for bit);
- trending: the shares and their order, computed once (the same for every user);
- any other channel: its own batch call on a one-row `Requests` (correct, not fast).

Each channel answers with its top k and can score any catalogue position, so the merged
list's every candidate gets every channel's score, as `RecallStage.__call__` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from recfunnel.data.schema import LIKE_THRESHOLD
from recfunnel.kernel import (
    Dense,
    Row,
    UserRequest,
    dense_layers,
    run_layers,
    summable,
    top_unknown,
)
from recfunnel.nn import N_HISTORY_BUCKETS
from recfunnel.recall.channel import Channel
from recfunnel.recall.index import ExactIndex
from recfunnel.recall.item_to_item import EASEChannel, RP3betaChannel
from recfunnel.recall.merge import merge_lists
from recfunnel.recall.trending import TrendingChannel
from recfunnel.recall.two_tower.channel import TwoTowerChannel
from recfunnel.types import Candidates, Embeddings, Pairs

if TYPE_CHECKING:
    from recfunnel.recall.stage import RecallStage


class ChannelScores(Protocol):
    """One channel's answer for one request."""

    def top(self, k: int) -> np.ndarray:
        """Its k best unknown positions (k,), -1 padding."""

    def at(self, items: np.ndarray) -> np.ndarray:
        """Its float64 score of positions (n,)."""


class _Row:
    """A channel that scores the whole catalogue: one (n_items,) float64 row."""

    def __init__(self, row: np.ndarray, known: np.ndarray) -> None:
        self.row, self.known = row, known

    def top(self, k: int) -> np.ndarray:
        return top_unknown(self.row, self.known, k)

    def at(self, items: np.ndarray) -> np.ndarray:
        return self.row[items]


class _Ordered(_Row):
    """A row that is the same for every user, with its best-first order precomputed."""

    def __init__(self, row: np.ndarray, order: np.ndarray, known: np.ndarray) -> None:
        super().__init__(row, known)
        self.order = order

    def top(self, k: int) -> np.ndarray:
        out = np.full(k, -1, dtype=np.int64)
        left = self.order[~self.known[self.order]][:k]
        out[: len(left)] = left
        return out


class _TwoTowerScores:
    """The user's vector, searched through the channel's index, scored by <u, v> / T."""

    def __init__(self, kernel: TwoTowerKernel, user: np.ndarray, request: UserRequest) -> None:
        self.kernel, self.user, self.request = kernel, user, request

    def top(self, k: int) -> np.ndarray:
        kernel = self.kernel
        index = kernel.channel.index
        if index is None or not index.built or isinstance(index, ExactIndex):
            # Exact search without the index's sparse exclusion: one (1, d) @ (d, n) product
            # of the same float32 vectors, ties to the smaller position (= movie id), as the
            # exact index orders them.
            vectors = kernel.items if index is None or not index.built else index.embeddings_
            # float32 as computed: the order of exactly these values is the same in float64.
            scores = (self.user[None, :] @ vectors.T)[0]
            return top_unknown(scores, self.request.known, k)
        # An ANN index (HNSW, IVF: `--index.backend=hnsw`, or a catalogue larger than
        # index.exact_max_items) is searched as the batch path searches it, so the list is
        # the batch path's approximate one, not the exact top k the product above gives.
        # `search_one` skips `search`'s validation and sparse exclusion matrices.
        if kernel.same_order:  # build positions = catalogue positions: the mask as it is
            ids = index.search_one(self.user, k, self.request.known)
        else:
            ids, _ = index.search(
                self.user[None, :], k, exclude=[kernel.item_ids[self.request.items]]
            )
            ids = ids[0]
        return np.where(ids >= 0, np.searchsorted(kernel.item_ids, ids), -1)

    def at(self, items: np.ndarray) -> np.ndarray:
        # The batch path's einsum over (n, d) rows, so the logits match it bit for bit.
        users = np.broadcast_to(self.user, (len(items), len(self.user)))
        dots = np.einsum("nd,nd->n", users, self.kernel.items[items])
        return dots.astype(np.float64) / self.kernel.temperature


class TwoTowerKernel:
    """The two-tower channel for one request: numpy user tower, precomputed item vectors."""

    def __init__(self, channel: TwoTowerChannel) -> None:
        channel.check_fitted()
        self.channel = channel
        model = channel.model_
        self.items = np.ascontiguousarray(channel.item_embeddings(), dtype=np.float32)
        self.item_ids = channel.item_ids_
        index = channel.index
        # Whether the index's build order is the catalogue's (it is when the channel built
        # it): then a request's `known` mask is its exclusion mask, with no id lookups.
        self.same_order = bool(
            index is not None and index.built and np.array_equal(index.item_ids_, self.item_ids)
        )
        self.temperature = float(model.temperature)
        self.column_vocab = channel._column_vocab
        self.normalize = bool(model.normalize)
        self.item_table = model.item_id.weight.detach().numpy().astype(np.float32)
        self.tables = {
            name: getattr(model, name).weight.detach().numpy().astype(np.float32)
            for name in ("gender", "age", "occupation", "zip", "history_length")
        }
        self.user_table = (
            model.user_id.weight.detach().numpy().astype(np.float32)
            if model.user_id is not None
            else None
        )
        self.mlp: list[Dense] = dense_layers(model.user_mlp)
        self.config = channel.config

    def user_vector(self, request: UserRequest) -> np.ndarray:
        """(d,) float32: `TwoTowerChannel.user_batch` + `TwoTower.user_vectors` for one user."""
        cfg = self.config
        keep = (
            request.ratings >= LIKE_THRESHOLD
            if cfg.history == "liked"
            else np.ones(len(request.items), bool)
        )
        cols, times = request.items[keep], request.timestamps[keep]
        cols = cols[np.lexsort((cols, times))][-cfg.max_history :] if len(cols) else cols
        history = self.column_vocab[cols]
        n = len(history)
        pooled = self.item_table[history].sum(0) * np.float32(1 / np.sqrt(max(n, 1)))
        features = self.channel.space_.user_features_one(request.user_id)
        bucket = min(n.bit_length(), N_HISTORY_BUCKETS - 1)  # 1 + floor(log2 n), 0 for none
        parts = [
            pooled.astype(np.float32),
            self.tables["gender"][features["gender"][0]],
            self.tables["age"][features["age"][0]],
            self.tables["occupation"][features["occupation"][0]],
            self.tables["zip"][features["zip"][0]],
            self.tables["history_length"][bucket],
        ]
        if self.user_table is not None:
            parts.insert(0, self.user_table[features["user"][0]])
        x = run_layers(self.mlp, np.concatenate(parts)[None, :])[0]
        if self.normalize:
            x = x / max(float(np.linalg.norm(x)), 1e-12)
        return x.astype(np.float32)

    def __call__(self, request: UserRequest) -> _TwoTowerScores:
        return _TwoTowerScores(self, self.user_vector(request), request)


class _BatchChannelScores:
    """Any other channel: its own batch methods on the one-row request."""

    def __init__(self, channel: Channel, request: UserRequest) -> None:
        self.channel, self.request = channel, request

    def top(self, k: int) -> np.ndarray:
        return self.channel.retrieve(self.request.requests, k).items[0]

    def at(self, items: np.ndarray) -> np.ndarray:
        pairs = Pairs(np.zeros(len(items), dtype=np.int64), items)
        scored = self.channel.score_pairs(self.request.requests, pairs)
        return np.asarray(scored.scores[self.channel.name], dtype=np.float64)


def _channel_kernel(channel: Channel) -> Any:
    """request -> ChannelScores for one channel."""
    if isinstance(channel, TwoTowerChannel):
        return TwoTowerKernel(channel)
    # Dense weights only: the sparse ones of a large catalogue (`recfunnel.scale`) keep the
    # batch call, whose sparse product is already per-row.
    if isinstance(channel, EASEChannel | RP3betaChannel) and isinstance(
        channel.weights_, np.ndarray
    ):
        # EASE's matrix is the item-to-item score's too (one sum); RP3beta's is mostly zeros.
        weights, decay = summable(channel.weights_), channel.config.decay_days
        return lambda request: _Row(request.liked_sum_of(weights, decay), request.known)
    if isinstance(channel, TrendingChannel):
        shares = np.asarray(channel.shares_, dtype=np.float64)
        order = np.argsort(-shares, kind="stable")  # ties: the smaller position first
        return lambda request: _Ordered(shares, order, request.known)
    return lambda request: _BatchChannelScores(channel, request)


def _rrf_one(
    tops: dict[str, np.ndarray],
    k: int,
    rrf_k: int,
    n_items: int,
    weights: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`merge_lists(how="rrf")` for one request, on the channels' top lists (k_c,) (-1
    pads) of a catalogue of `n_items`, channel c weighted by weights[c] (None: 1 each): the
    same fused sums (added in the same order: from 0.0, channel by channel, as
    `np.bincount` adds them there), the same items (fused > 0) and the same order (fused
    score desc, position asc), without the batch bookkeeping. Returns the merged positions
    (k,) (-1 pads) and each channel's 1-based rank of them, (n_channels, k) int64 (0: not
    proposed by that channel). Dense (n_items,) sums instead of `np.unique` over the
    proposals: the catalogue's ascending positions are the sorted unique items."""
    fused = np.zeros(n_items)
    # rank_of[c, i]: channel c's rank of item i (a channel proposes an item once).
    rank_of = np.zeros((len(tops), n_items), dtype=np.int64)
    for c, row in enumerate(tops.values()):
        real = np.flatnonzero(row >= 0)
        item, rank = row[real], real + 1
        fused[item] += (1.0 if weights is None else weights[c]) / (rrf_k + rank)
        rank_of[c, item] = rank
    proposed = np.flatnonzero(fused > 0)  # proposed by a channel of weight > 0
    order = np.lexsort((proposed, -fused[proposed]))[:k]
    merged = np.full(k, -1, dtype=np.int64)
    merged[: len(order)] = proposed[order]
    channel_ranks = np.zeros((len(tops), k), dtype=np.int64)
    channel_ranks[:, : len(order)] = rank_of[:, merged[: len(order)]]
    return merged, channel_ranks


class RecallKernel:
    """`RecallStage.__call__` for one request (see the module docstring)."""

    def __init__(self, stage: RecallStage) -> None:
        stage.check_fitted()
        self.stage = stage
        self.channels = {name: _channel_kernel(c) for name, c in stage.channels.items()}
        self.features = stage.feature_names  # fixed once fitted (a refit drops the kernel)

    def __call__(
        self, request: UserRequest, candidates: Candidates | None = None, *, k: int | None = None
    ) -> Candidates:
        return self.row(request, k=k).candidates()

    def row(self, request: UserRequest, row: Row | None = None, *, k: int | None = None) -> Row:
        """The merged list (k,) of the request with every channel's score and rank of every
        candidate, as `RecallStage.__call__` gives it; the incoming `row` is not read."""
        k = k or Channel.default_k
        cfg, stage = self.stage.config, self.stage
        answers: dict[str, Any] = {name: kernel(request) for name, kernel in self.channels.items()}
        tops = {name: answer.top(k) for name, answer in answers.items()}
        if cfg.merge == "rrf" and len(tops) > 1:
            items, ranks = _rrf_one(tops, k, cfg.rrf_k, request.n_items, stage.weights_)
            channels = dict(zip(tops, ranks, strict=True))
        else:  # round robin, quotas or one channel: the batch merge on one-row lists
            merged = merge_lists(
                {name: self._one_list(name, top, answers[name]) for name, top in tops.items()},
                k,
                how=cfg.merge,
                rrf_k=cfg.rrf_k,
                quotas=cfg.quotas,
                weights=stage.weights_,
            )
            items = merged.items[0]
            channels = {name: r[0] for name, r in merged.channels.items()}
        valid = items >= 0
        full = bool(valid.all())  # the usual case: no padding, so no NaN-filled copies
        real = items if full else items[valid]
        scores = {}
        for name, answer in answers.items():  # every channel's score of every candidate
            if full:
                scores[name] = answer.at(real)
            else:
                values = np.full(len(items), np.nan)
                values[valid] = answer.at(real)
                scores[name] = values
        scores[stage.name] = scores[cfg.score_by]
        features = self.features
        for name in stage.channels:
            if f"recall.{name}" in features:
                scores[f"recall.{name}"] = scores[name]
            if f"recall.{name}.rrf" in features:
                rank = channels[name]
                rrf = np.where(rank > 0, 1.0 / (cfg.rrf_k + rank), 0.0)
                scores[f"recall.{name}.rrf"] = rrf if full else np.where(valid, rrf, np.nan)
        embeddings = None
        two_tower = next((a for a in answers.values() if isinstance(a, _TwoTowerScores)), None)
        if two_tower is not None:
            embeddings = Embeddings(two_tower.user[None, :], two_tower.kernel.items)
        return Row(items, scores, channels, embeddings)

    @staticmethod
    def _one_list(name: str, top: np.ndarray, answer: Any) -> Candidates:
        """One channel's list as the one-row `Candidates` that `merge_lists` reads."""
        items = top[None, :]
        valid = items >= 0
        scores = np.full(items.shape, np.nan)
        scores[valid] = answer.at(items[valid])
        ranks = np.where(valid, np.arange(1, items.shape[1] + 1)[None, :], 0)
        return Candidates(items, {name: scores}, {name: ranks})
