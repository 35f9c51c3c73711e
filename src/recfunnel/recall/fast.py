"""The recall stage's serving kernel: every channel for one request, then the merge.

Built once from the fitted stage (`RecallStage.serving_kernel`):
- two-tower: the catalogue's item vectors (n_items, d) float32, contiguous, and the user
  tower as numpy layers; the user's vector is one small MLP, the search goes through the
  run's own index (so the list is the batch path's; exact search when the run has none);
- EASE / RP3beta: their weight matrices; a request's score row is the sum of its liked rows;
- trending: the shares and their order, computed once (the same for every user);
- any other channel: its own batch call on a one-row `Requests` (correct, not fast).

Each channel answers with its top k and can score any catalogue position, so the merged
list's every candidate gets every channel's score, as `RecallStage.__call__` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from recfunnel.data.schema import LIKE_THRESHOLD
from recfunnel.kernel import Dense, UserRequest, dense_layers, liked_sum, run_layers, top_unknown
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
            scores = (self.user[None, :] @ vectors.T).astype(np.float64)[0]
            return top_unknown(scores, self.request.known, k)
        ids, _ = index.search(self.user[None, :], k, exclude=[kernel.item_ids[self.request.items]])
        return np.where(ids[0] >= 0, np.searchsorted(kernel.item_ids, ids[0]), -1)

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
        features = self.channel.space_.user_features(np.array([request.user_id]))
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
        weights = channel.weights_
        return lambda request: _Row(liked_sum(weights, request.liked), request.known)
    if isinstance(channel, TrendingChannel):
        shares = np.asarray(channel.shares_, dtype=np.float64)
        order = np.argsort(-shares, kind="stable")  # ties: the smaller position first
        return lambda request: _Ordered(shares, order, request.known)
    return lambda request: _BatchChannelScores(channel, request)


def _rrf_one(lists: dict[str, Candidates], k: int, rrf_k: int) -> Candidates:
    """`merge_lists(how="rrf")` for one request: the same fused sums (added in the same
    order: channel by channel, best first) and the same order (fused score desc, position
    asc), without the batch bookkeeping. Scores are filled in by the caller."""
    items, ranks = [], []
    for part in lists.values():
        row = part.items[0]
        real = np.flatnonzero(row >= 0)
        items.append(row[real])
        ranks.append(real + 1)
    item, rank = np.concatenate(items), np.concatenate(ranks)
    unique, inverse = np.unique(item, return_inverse=True)
    fused = np.bincount(inverse, weights=1.0 / (rrf_k + rank))
    order = np.lexsort((unique, -fused))[:k]
    out = np.full((1, k), -1, dtype=np.int64)
    out[0, : len(order)] = unique[order]
    channels = {}
    for name, part in lists.items():
        row = part.items[0]
        # rank of each merged item in this channel's list (0: not proposed)
        place = np.zeros(int(max(unique.max(initial=0), 0)) + 1, dtype=np.int64)
        real = row >= 0
        place[row[real]] = np.flatnonzero(real) + 1
        merged_rank = np.zeros((1, k), dtype=np.int64)
        valid = out[0] >= 0
        merged_rank[0, valid] = place[out[0, valid]]
        channels[name] = merged_rank
    return Candidates(out, {}, channels)


class RecallKernel:
    """`RecallStage.__call__` for one request (see the module docstring)."""

    def __init__(self, stage: RecallStage) -> None:
        stage.check_fitted()
        self.stage = stage
        self.channels = {name: _channel_kernel(c) for name, c in stage.channels.items()}

    def __call__(
        self, request: UserRequest, candidates: Candidates | None = None, *, k: int | None = None
    ) -> Candidates:
        k = k or Channel.default_k
        cfg, stage = self.stage.config, self.stage
        answers: dict[str, Any] = {name: kernel(request) for name, kernel in self.channels.items()}
        lists = {}
        for name, answer in answers.items():
            items = answer.top(k)[None, :]
            valid = items >= 0
            scores = np.full(items.shape, np.nan)
            scores[valid] = answer.at(items[valid])
            ranks = np.where(valid, np.arange(1, k + 1)[None, :], 0)
            lists[name] = Candidates(items, {name: scores}, {name: ranks})
        if cfg.merge == "rrf" and len(lists) > 1:
            merged = _rrf_one(lists, k, cfg.rrf_k)
        else:
            merged = merge_lists(lists, k, how=cfg.merge, rrf_k=cfg.rrf_k, quotas=cfg.quotas)
        valid = merged.valid
        scores = {}
        for name, answer in answers.items():  # every channel's score of every candidate
            values = np.full(merged.items.shape, np.nan)
            values[valid] = answer.at(merged.items[valid])
            scores[name] = values
        scores[stage.name] = scores[cfg.score_by]
        features = stage.feature_names
        for name in stage.channels:
            if f"recall.{name}" in features:
                scores[f"recall.{name}"] = scores[name]
            if f"recall.{name}.rrf" in features:
                rank = merged.channels[name]
                rrf = np.where(rank > 0, 1.0 / (cfg.rrf_k + rank), 0.0)
                scores[f"recall.{name}.rrf"] = np.where(valid, rrf, np.nan)
        embeddings = None
        two_tower = next((a for a in answers.values() if isinstance(a, _TwoTowerScores)), None)
        if two_tower is not None:
            embeddings = Embeddings(two_tower.user[None, :], two_tower.kernel.items)
        return Candidates(merged.items, scores, merged.channels, embeddings)
